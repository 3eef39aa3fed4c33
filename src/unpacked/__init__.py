"""unpacked: keep a read-only file-system tree filled with unpacked container images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("unpacked")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
