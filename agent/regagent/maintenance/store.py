"""The maintenance window on disk: `maintenance.json` in the state directory.

Written only by `regagent maint` (start, stop), atomically and fsync'd, through the state
directory's rules (`regagent.statedir`: owner and mode checked, no symlink followed, size
capped); read by the daemon at every full cycle and at every scrape of its metrics, and by
`maint status`. So a window survives a restart of the daemon (or of the host) and the daemon
needs no signal to see a new one: the file is the one place the window lives.
"""

from __future__ import annotations

import os
from typing import Optional

from regagent.errors import RegagentError
from regagent.maintenance.window import Window, WindowError, parse_window, window_json
from regagent.statedir import Corrupt, StateDir, StateFile, Untrusted, Warnings

FILE_NAME = "maintenance.json"
MAX_BYTES = 4096  # a record is a few hundred bytes


class MaintenanceStateError(RegagentError):
    """The maintenance record cannot be read or written (state directory not trusted,
    unwritable, or the file is not one regagent wrote)."""


class MaintenanceStore:
    """The window recorded in one state directory."""

    def __init__(self, state_dir: str, warnings: Optional[Warnings] = None) -> None:
        self.directory = StateDir(state_dir, warnings)
        self.file = StateFile(self.directory, FILE_NAME, "maintenance_state", MAX_BYTES)

    @property
    def path(self) -> str:
        return self.file.path

    def read(self) -> Optional[Window]:
        """The recorded window, or None (absent, or a problem, which is said once): what the
        daemon uses, which must go on whatever the file holds."""
        text = self.file.read()
        if text is None:
            return None
        try:
            return parse_window(text)
        except WindowError as exc:
            self.file.corrupt(str(exc))
            return None

    def load(self) -> Optional[Window]:
        """The recorded window, None when there is none; raises MaintenanceStateError with
        what is wrong (for a command, which reports it)."""
        try:
            data = self.directory.read(FILE_NAME, MAX_BYTES)
        except FileNotFoundError:
            return None
        except (Untrusted, Corrupt) as exc:
            raise MaintenanceStateError(f"maintenance record {self.path} {exc}") from None
        except OSError as exc:
            raise MaintenanceStateError(
                f"cannot read maintenance record {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            return parse_window(data.decode("utf-8"))
        except (UnicodeDecodeError, WindowError) as exc:
            raise MaintenanceStateError(
                f"maintenance record {self.path} {exc}; `regagent maint start` or "
                "`regagent maint stop` replaces it"
            ) from None

    def save(self, window: Window) -> None:
        """Replaces the record (atomic, fsync'd); raises MaintenanceStateError."""
        try:
            self.directory.write(FILE_NAME, window_json(window))
        except Untrusted as exc:
            raise MaintenanceStateError(f"cannot record the window: {exc}") from None
        except OSError as exc:
            raise MaintenanceStateError(
                f"cannot record the window in {self.directory.path}: {exc.strerror or exc}"
            ) from None

    def remove(self) -> None:
        """Removes a record that cannot be read (`maint stop` on a broken file)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise MaintenanceStateError(
                f"cannot remove maintenance record {self.path}: {exc.strerror or exc}"
            ) from None
