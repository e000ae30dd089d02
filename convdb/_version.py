"""The package's release version: the one source for pyproject.toml (dynamic) and ``convdb.__version__``."""

__version__ = "0.2.0"
