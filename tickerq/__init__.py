"""tickerq: multi-node job coordination on Redis for threaded Python apps."""

from tickerq._version import __version__

__all__ = ["__version__"]
