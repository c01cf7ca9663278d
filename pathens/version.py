"""The package's version, read from the installed distribution's metadata, so that
pyproject.toml stays its one source. A leaf module: anything may import it."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathens")
except PackageNotFoundError:  # a source tree on sys.path that was never pip-installed
    __version__ = "0+unknown"
