"""How the lock manager talks to Redis: commands packed ahead of time, round trips bounded in time.

An uncontended ``acquire(); release()`` is two round trips, so what the client
does around them decides its cost. redis-py's generic path (``execute_command``:
the retry wrapper, encoding every argument in ``pack_command``, metrics) costs
more than the two scripts' server time. So each lock name's scripts are packed
once (:class:`LockCommands`: ``EVALSHA``, the SHA, the five keys and the
constant arguments) and a call only appends its few variable arguments, then
does one send and one read on a pooled connection of the application's client.

Bounds: every call, retries included, answers within one ``socket_timeout`` of
the client (``sync_timeout`` in the container), or sooner when the caller gives a
tighter deadline. A connection error (refused, reset, a stale pooled connection)
is retried as often as the client's ``Retry`` allows, within that bound; a
timeout is not retried: a frozen server would not answer a retry either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
import redis
from redis.exceptions import NoScriptError

from tickerq._redis.scripts import LuaScript
from tickerq._redis.translate import translate
from tickerq.locks.lease import LockKeys

__all__ = ["ACQUIRE", "RELEASE", "LockCalls", "LockCommands", "pack", "retries_of"]

ACQUIRE = LuaScript("lock_acquire", package="tickerq.locks")
RELEASE = LuaScript("lock_release", package="tickerq.locks")

_Arg = str | bytes | int | float


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _encode(value: _Arg, encoder: Any) -> bytes:
    return b"%d" % value if isinstance(value, int) else encoder.encode(value)


def pack(encoder: Any, *args: _Arg) -> bytes:
    """``args`` as one RESP request (what ``Connection.pack_command`` sends)."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(_encode(arg, encoder)) for arg in args)


def _head(
    encoder: Any, script: LuaScript, keys: LockKeys, constants: tuple[_Arg, ...], variable: int
) -> bytes:
    """The packed start of an EVALSHA of ``script`` followed by ``variable`` more arguments."""
    script_keys = keys.script_keys
    args: tuple[_Arg, ...] = ("EVALSHA", script.sha, len(script_keys), *script_keys, *constants)
    return b"*%d\r\n" % (len(args) + variable) + b"".join(_bulk(_encode(arg, encoder)) for arg in args)


@attrs.frozen
class LockCommands:
    """One lock name's keys and its acquire and release scripts, packed up to their variable arguments."""

    keys: LockKeys
    acquire_head: bytes
    release_head: bytes

    @classmethod
    def build(cls, encoder: Any, keys: LockKeys, liveness_ms: int, turn_ms: int) -> LockCommands:
        return cls(
            keys,
            _head(encoder, ACQUIRE, keys, (keys.wake_prefix, liveness_ms, turn_ms), 5),
            _head(encoder, RELEASE, keys, (keys.wake_prefix, turn_ms), 3),
        )

    def acquire(self, token: bytes, ttl_ms: int, queue: bool, floor: int, hold_back_ms: int) -> bytes:
        """``lock_acquire.lua``: take the lock for ``token`` (joining the line when ``queue``)."""
        return b"%b$%d\r\n%b\r\n%b%b%b%b" % (
            self.acquire_head, len(token), token, _bulk(b"%d" % ttl_ms),
            b"$1\r\n1\r\n" if queue else b"$0\r\n\r\n", _bulk(b"%d" % floor), _bulk(b"%d" % hold_back_ms),
        )  # fmt: skip

    def release(self, token: bytes, waiter: bytes, fence: int) -> bytes:
        """``lock_release.lua``: let go of the lock held with ``token`` and/or ``waiter``'s place in line."""
        return b"%b%b%b%b" % (self.release_head, _bulk(token), _bulk(waiter), _bulk(b"%d" % fence))


class LockCalls:
    """Runs packed lock commands on pooled connections of ``client``, each within a time bound.

    Args:
        client: Its pool is used (never closed here). redis-py retries a new
            connection's connect and handshake as often as the pool's ``Retry``
            says, each within one timeout, so for the bounds to hold its pool should
            not retry (the container gives the retry-free ``fail_fast`` pool).
        retries: How often a connection error is retried within a call's bound
            (default: as often as ``client``'s ``Retry`` says).
        closed: True once shutdown began: a failed call is then not retried (a retry
            would reconnect to a server that may be frozen, past the shutdown).
    """

    def __init__(
        self, client: redis.Redis, retries: int | None = None, closed: Callable[[], bool] = lambda: False
    ) -> None:
        self._closed = closed
        self._pool = client.connection_pool
        #: The client's reply timeout (sync_timeout), in seconds; None: unbounded.
        self.timeout: float | None = self._pool.connection_kwargs.get("socket_timeout")
        self._retries = retries_of(client) if retries is None else retries
        self.encoder: Any = client.get_encoder()  # redis-py leaves Encoder untyped

    def encode(self, value: str) -> bytes:
        return self.encoder.encode(value)  # type: ignore[no-any-return]

    def run(
        self, name: str, command: bytes, script: LuaScript | None = None, ends: float | None = None
    ) -> Any:
        """Send ``command`` (packed; an EVALSHA of ``script``) and return its reply.

        Args:
            name: The lock's name, for error messages.
            command: The packed request.
            script: The script an EVALSHA runs, loaded when the server lacks it.
            ends: A ``time.monotonic()`` deadline for the reply, tighter than the
                client's own one ``socket_timeout`` per call.

        Raises:
            RedisUnavailableError: Redis did not answer in time, or refused.
            KeyTypeError: A key of the lock holds a value tickerq did not write.
        """
        timeout = self.timeout
        started = time.monotonic()
        failures = 0
        limit = ends
        while True:
            try:
                return self._round_trip(command, script, limit)
            except redis.RedisError as exc:
                delay = min(0.5, 0.01 * 2**failures)
                call_ends = None if timeout is None else started + timeout
                retry = (
                    isinstance(exc, redis.ConnectionError)
                    and not isinstance(exc, redis.AuthenticationError)
                    and failures < self._retries
                    and not self._closed()
                    and (call_ends is None or time.monotonic() + delay < call_ends)
                    and (ends is None or time.monotonic() + delay < ends)
                )
                if not retry:
                    operation = "lock wait" if script is None else _OPERATIONS.get(script.name, "lock")
                    raise translate(exc, operation, name=name) from exc
            failures += 1
            time.sleep(delay)
            # A retry may read for what is left of the call's one timeout, no more.
            if call_ends is not None:
                limit = call_ends if ends is None else min(ends, call_ends)

    def _round_trip(self, command: bytes, script: LuaScript | None, ends: float | None) -> Any:
        pool = self._pool
        conn: Any = pool.get_connection()
        try:
            try:
                conn.send_packed_command((command,))
                return self._read(conn, ends)
            except NoScriptError:
                if script is None:
                    raise
                # A fresh or restarted server: load the body, then send the same request again.
                conn.send_packed_command((pack(self.encoder, "SCRIPT", "LOAD", script.source),))
                self._read(conn, ends)
                conn.send_packed_command((command,))
                return self._read(conn, ends)
        except redis.ResponseError:
            raise  # the error reply was read in full: the connection is in step
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: never read it as the next call's
            raise
        finally:
            pool.release(conn)

    def _read(self, conn: Any, ends: float | None) -> Any:
        if ends is not None:
            left = ends - time.monotonic()
            # The socket timeout bounds a read by itself unless the deadline comes sooner.
            if (self.timeout is None or left < self.timeout) and not conn.can_read(timeout=max(0.0, left)):
                raise redis.TimeoutError("no reply from Redis within the time allowed")
        return conn.read_response()


def retries_of(client: redis.Redis) -> int:
    """How often ``client`` retries a failed command (its ``Retry``; 0 without one)."""
    retry = client.get_retry()
    return retry.get_retries() if retry is not None else 0


#: The ``operation`` of errors from each script's calls (None: waiting in line).
_OPERATIONS = {"lock_acquire": "lock acquire", "lock_release": "lock release", "lock_renew": "lock extend"}
