"""Map redis-py exceptions onto tickerq's hierarchy at the API boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tickerq.errors import KeyTypeError, RedisUnavailableError

__all__ = ["translate_errors"]

#: Our Lua scripts start type-error replies with this.
_OUR_WRONG_TYPE = "TICKERQ_WRONGTYPE "


@contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Re-raise redis-py errors from the block as tickerq errors.

    Args:
        operation: What was being done, for the message (e.g. ``"get_dead_nodes"``).

    Raises:
        RedisUnavailableError: Connection refused, lost or timed out.
        KeyTypeError: A key holds a Redis type or value tickerq did not write.
    """
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailableError(
            f"{operation}: Redis is unavailable ({type(exc).__name__}: {exc})"
        ) from exc
    except redis.ResponseError as exc:
        text = str(exc)
        if text.startswith("WRONGTYPE "):
            raise KeyTypeError(f"{operation}: a key holds the wrong Redis type ({text})") from exc
        marker = text.find(_OUR_WRONG_TYPE)
        if marker >= 0:
            raise KeyTypeError(f"{operation}: {text[marker + len(_OUR_WRONG_TYPE) :]}") from exc
        raise
