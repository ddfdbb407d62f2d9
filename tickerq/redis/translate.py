"""Map redis-py exceptions onto tickerq's hierarchy at the API boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tickerq.errors import AuthenticationFailedError, KeyTypeError, RedisUnavailableError

__all__ = ["authentication_failed", "translate_errors"]

#: Our Lua scripts start type-error replies with this.
_OUR_WRONG_TYPE = "TICKERQ_WRONGTYPE "

#: How the server says it wants a password that was not sent: RESP2's NOAUTH reply
#: ("Authentication required."), and RESP3's reply to an unauthenticated HELLO.
_PASSWORD_REQUIRED = ("NOAUTH", "Authentication required", "HELLO must be called")
#: How Redis 6+ refuses a password sent to a server that has none for the default user.
_NO_PASSWORD_SET = "without any password configured"  # noqa: S105 (a server reply, not a secret)


def authentication_failed(exc: redis.AuthenticationError, where: str) -> AuthenticationFailedError:
    """Say plainly what was wrong with the credentials (never the server's words, nor a password).

    Args:
        exc: redis-py's error; every credential failure is one.
        where: What was being done, or the endpoint, for the start of the message.
    """
    text = str(exc)
    required = any(marker in text for marker in _PASSWORD_REQUIRED)
    if required:
        reason = "the server requires a password and none was given"
    elif _NO_PASSWORD_SET in text:
        reason = "authentication failed: a password was given, but the server has none set for the user"
    else:
        reason = "authentication failed: wrong user name or password"
    return AuthenticationFailedError(f"{where}: {reason}", password_required=required)


@contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Re-raise redis-py errors from the block as tickerq errors.

    Args:
        operation: What was being done, for the message (e.g. ``"get_dead_nodes"``).

    Raises:
        AuthenticationFailedError: Redis refused the user name or password, or
            wants a password that was not given.
        RedisUnavailableError: Connection refused, lost or timed out.
        KeyTypeError: A key holds a Redis type or value tickerq did not write.
    """
    try:
        yield
    except redis.AuthenticationError as exc:
        raise authentication_failed(exc, operation) from exc
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
