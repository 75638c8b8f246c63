"""flowmill's version, in a module of its own so that a worker can read it without
importing the package metadata machinery (`importlib.metadata`: ~2 MB and tens of ms at
start-up). Keep it equal to pyproject.toml's `version` (a test checks the installed one)."""

__version__ = "0.1.0"
