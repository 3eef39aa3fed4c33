"""unpacked: keep a read-only file-system tree filled with unpacked container images."""

# A literal, not importlib.metadata: that import alone costs ~50 ms at every start-up.
__version__ = "0.1.0"

__all__ = ["__version__"]
