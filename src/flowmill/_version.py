"""flowmill's version, in a module of its own so that a worker can read it without
importing the package metadata machinery (`importlib.metadata`: ~2 MB and tens of ms at
start-up). pyproject.toml reads the version from here (`[tool.hatch.version]`)."""

__version__ = "0.1.0"
