"""batchrun: run prompt sets through Anthropic's streaming APIs, into Parquet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchrun")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
