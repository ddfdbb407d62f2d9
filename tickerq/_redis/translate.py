"""The one translation of redis-py exceptions into tickerq's hierarchy.

Every module that talks to Redis re-raises through :func:`translate` (or the
:func:`translate_errors` block), so a caller only ever sees ``TickerQError``s,
with the operation, key and name as structured fields:

=========================================  ===========================
redis-py / server reply                    tickerq
=========================================  ===========================
wrong or missing password                  ``AuthenticationFailedError``
connection refused, lost, timed out        ``RedisUnavailableError``
``LOADING``, ``BUSY``, ``MASTERDOWN``,     ``RedisUnavailableError``
``TRYAGAIN``, ``CLUSTERDOWN``
``READONLY`` (a replica, mid-failover)     ``RedisReadOnlyError``
``WRONGTYPE``, our scripts' type replies,  ``KeyTypeError``
a counter that is not an integer
``OOM``, ``NOPERM``, anything else         ``RedisCommandError(code=...)``
=========================================  ===========================

``NOSCRIPT`` never gets here: :class:`~tickerq._redis.scripts.LuaScript` sends
the script body and retries once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tickerq.errors import (
    AuthenticationFailedError,
    KeyTypeError,
    RedisCommandError,
    RedisReadOnlyError,
    RedisUnavailableError,
    TickerQError,
)

__all__ = ["authentication_failed", "error_code", "is_wrong_type", "translate", "translate_errors"]

#: Our Lua scripts start type-error replies with this.
_OUR_WRONG_TYPE = "TICKERQ_WRONGTYPE "

#: Replies that mean "not now": the server is loading, busy or between masters.
_TRANSIENT = frozenset({"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"})

#: How the server says it wants a password that was not sent: RESP2's NOAUTH reply
#: ("Authentication required."), and RESP3's reply to an unauthenticated HELLO.
_PASSWORD_REQUIRED = ("NOAUTH", "Authentication required", "HELLO must be called")
#: How Redis 6+ refuses a password sent to a server that has none for the default user.
_NO_PASSWORD_SET = "without any password configured"  # noqa: S105 (a server reply, not a secret)


def authentication_failed(
    exc: redis.AuthenticationError, where: str, **fields: str | None
) -> AuthenticationFailedError:
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
    return AuthenticationFailedError(f"{where}: {reason}", password_required=required, **fields)


#: redis-py's classes for codes it strips from the message.
_CODES: tuple[tuple[type[redis.RedisError], str], ...] = (
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.NoPermissionError, "NOPERM"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
    (redis.exceptions.NoScriptError, "NOSCRIPT"),
)


#: Redis 6 wraps an error raised inside a script: ``ERR Error running script (...):
#: @user_script:82: -READONLY You can't write ...``; the code is the one after the dash.
_SCRIPT_ERROR = re.compile(r"Error running script .*?: -([A-Z]+) ")


def error_code(exc: redis.RedisError) -> str:
    """The Redis error code of a reply error (``"ERR"`` when there is none)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    wrapped = _SCRIPT_ERROR.search(str(exc))
    if wrapped is not None:
        return wrapped.group(1)
    status: object = getattr(exc, "status_code", None)  # redis-py >= 8.2
    if isinstance(status, str) and status:
        return status
    first = str(exc).split(" ", 1)[0]
    return first if first.isupper() and first.isalpha() else "ERR"


def is_wrong_type(exc: redis.RedisError) -> bool:
    """Whether ``exc`` says a key holds a value tickerq did not write (a data problem, not an outage)."""
    if not isinstance(exc, redis.ResponseError):
        return False
    text = str(exc)
    return "WRONGTYPE" in text or _OUR_WRONG_TYPE in text or _NOT_AN_INTEGER in text


#: How Redis refuses INCR on a counter that holds something else (also from inside a script).
_NOT_AN_INTEGER = "value is not an integer"


def translate(
    exc: redis.RedisError,
    operation: str,
    *,
    key: str | None = None,
    name: str | None = None,
    where: str | None = None,
) -> TickerQError:
    """The tickerq error for a redis-py error (to ``raise ... from exc``).

    Args:
        exc: What redis-py raised.
        operation: What was being done, for the message and the ``operation`` field.
        key: The Redis key involved, if one.
        name: The lock, election or cache key the caller named, if one (also in the message).
        where: How the message begins (default: the operation and the name).
    """
    fields: dict[str, str | None] = {"operation": operation, "key": key, "name": name}
    if where is None:
        where = operation if name is None else f"{operation} {name!r}"
    if isinstance(exc, redis.AuthenticationError):
        return authentication_failed(exc, where, **fields)
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return RedisUnavailableError(f"{where}: Redis is unavailable ({type(exc).__name__}: {exc})", **fields)
    text = str(exc)
    marker = text.find(_OUR_WRONG_TYPE)
    if marker >= 0:
        return KeyTypeError(f"{where}: {text[marker + len(_OUR_WRONG_TYPE) :]}", **fields)
    code = error_code(exc)
    if code == "WRONGTYPE" or "WRONGTYPE" in text:
        return KeyTypeError(f"{where}: a key holds the wrong Redis type ({text})", **fields)
    if _NOT_AN_INTEGER in text:
        return KeyTypeError(f"{where}: a key holds a value tickerq did not write ({text})", **fields)
    if code == "READONLY":
        return RedisReadOnlyError(
            f"{where}: Redis refused the write: the server is a read-only replica ({text})", **fields
        )
    if code in _TRANSIENT:
        return RedisUnavailableError(f"{where}: Redis cannot answer now ({code} {text})", **fields)
    return RedisCommandError(f"{where}: Redis refused the command ({code}: {text})", code=code, **fields)


@contextmanager
def translate_errors(
    operation: str, *, key: str | None = None, name: str | None = None, where: str | None = None
) -> Iterator[None]:
    """Re-raise redis-py errors from the block as tickerq errors (see :func:`translate`)."""
    try:
        yield
    except redis.RedisError as exc:
        raise translate(exc, operation, key=key, name=name, where=where) from exc
