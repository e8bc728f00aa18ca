import sys

from regagent.cli import main

sys.exit(main())
