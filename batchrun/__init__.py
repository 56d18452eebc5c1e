"""batchrun: run prompt sets through Anthropic's streaming APIs, into Parquet."""

from typing import Any

__all__ = ["__version__"]

__version__: str  # read from the installed metadata on first use (importlib.metadata is slow)


def __getattr__(name: str) -> Any:
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("batchrun")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0"
    globals()["__version__"] = value
    return value
