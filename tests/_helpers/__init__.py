"""Helpers shared by several test modules (import as `from _helpers import ...`; the
`tests/` directory is on `sys.path` because `tests/conftest.py` lives there)."""
