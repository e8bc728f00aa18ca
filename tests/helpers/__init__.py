"""Test doubles and utilities shared by several test modules (`from helpers.fakes import ...`).

pytest puts `tests/` on the path (pyproject's `pythonpath`), so this package imports by its
own name; a test module imports from here, never from another test module.
"""
