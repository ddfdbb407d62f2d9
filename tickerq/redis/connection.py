"""Connection pools and clients built from the Redis options.

The container owns one ``RedisConnections``: the application client on a
bounded ``BlockingConnectionPool`` (redis-py's Sentinel pool when a service name
is given) with redis-py's own retry and backoff, plus two clients on pools of
their own without retries: ``fail_fast`` for the cache, which must give up within
one timeout, and ``watchdog`` for lease renewal, which application traffic must
not starve. A client passed in by the user is used and never closed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from tickerq.errors import ConfigurationError, ConnectionFailedError
from tickerq.options import RedisOptions
from tickerq.redis.config import ConnectionSettings, Endpoint, parse_configuration

__all__ = ["RedisConnections", "derive_pool", "open_connections"]

log = logging.getLogger(__name__)

_WATCHDOG_POOL_SIZE = 2


def _retry(retries: int) -> Retry:
    if retries == 0:
        return Retry(NoBackoff(), 0)
    return Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.01), retries)


def _connection_kwargs(settings: ConnectionSettings, options: RedisOptions) -> dict[str, Any]:
    """redis-py connection keywords shared by every pool (no endpoint, no retry)."""
    connect_timeout = settings.connect_timeout or options.connect_timeout
    sync_timeout = settings.sync_timeout or options.sync_timeout
    kwargs: dict[str, Any] = {
        "db": settings.database,
        "username": settings.username,
        "password": settings.password,
        "client_name": settings.client_name,
        "socket_connect_timeout": connect_timeout.total_seconds(),
        "socket_timeout": sync_timeout.total_seconds(),
    }
    if settings.keepalive is not None and settings.endpoints[0].unix_path is None:
        kwargs["socket_keepalive"] = True
        if hasattr(socket, "TCP_KEEPIDLE"):  # keepAlive=N: probe an idle connection after N s
            kwargs["socket_keepalive_options"] = {
                socket.TCP_KEEPIDLE: max(1, int(settings.keepalive.total_seconds()))
            }
    if settings.ssl:
        kwargs["connection_class"] = redis.SSLConnection
    return kwargs


def _endpoint_kwargs(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.unix_path is not None:
        return {"path": endpoint.unix_path, "connection_class": redis.UnixDomainSocketConnection}
    return {"host": endpoint.host, "port": endpoint.port}


def _find_master(settings: ConnectionSettings, kwargs: dict[str, Any]) -> Endpoint:
    """Of several endpoints, the first that reports itself master (else the first)."""
    if len(settings.endpoints) == 1:
        return settings.endpoints[0]
    for endpoint in settings.endpoints:
        try:
            with redis.Redis(**{**kwargs, **_endpoint_kwargs(endpoint), "retry": _retry(0)}) as probe:
                role = probe.execute_command("ROLE")
        except redis.RedisError as exc:
            log.info("Redis endpoint %s is not usable: %s", endpoint, exc)
            continue
        if role and role[0] in (b"master", "master"):
            return endpoint
    log.warning("none of %s reports itself master; using %s", settings.describe(), settings.endpoints[0])
    return settings.endpoints[0]


def derive_pool(
    template: redis.ConnectionPool, size: int, wait: float | None, socket_timeout: float | None = None
) -> redis.ConnectionPool:
    """A new pool that connects like ``template`` but with its own size and no retries.

    For threads that must not queue behind application traffic, or must give up
    within one timeout (cache, lock watchdog, elections).

    Args:
        template: The pool to copy the connection settings from (plain or Sentinel).
        size: The new pool's maximum number of connections.
        wait: How long a caller waits for a free connection (None: forever).
        socket_timeout: Overrides the connect and reply timeouts when given.
    """
    kwargs = {**template.connection_kwargs, "retry": _retry(0), "retry_on_error": []}
    if socket_timeout is not None:
        kwargs.update(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
    if isinstance(template, SentinelConnectionPool):
        return SentinelConnectionPool(  # type: ignore[no-untyped-call]
            template.service_name, template.sentinel_manager, max_connections=size, **kwargs
        )
    return redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
        connection_class=template.connection_class, max_connections=size, timeout=wait, **kwargs
    )


class RedisConnections:
    """The clients tickerq uses, and which of their pools it must close.

    Use :func:`open_connections` to build one. It is a context manager (the
    container's Resource): entering checks that Redis answers, exiting runs
    the close hooks (threads that use the pools stop first) and disconnects
    the pools tickerq created.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        fail_fast: redis.Redis,
        watchdog: redis.Redis,
        owned_pools: tuple[redis.ConnectionPool, ...],
        description: str,
        abort_on_connect_fail: bool,
    ) -> None:
        self.client = client
        self.fail_fast = fail_fast
        self.watchdog = watchdog
        self.description = description
        self.abort_on_connect_fail = abort_on_connect_fail
        self._owned_pools = owned_pools
        self._close_hooks: list[Callable[[], None]] = []
        self.closed = False

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before the pools close (for threads that use them)."""
        self._close_hooks.append(hook)

    def check(self) -> bool:
        """PING Redis through the application client (with its retries).

        Returns:
            True when Redis answered.

        Raises:
            ConnectionFailedError: Redis did not answer and
                ``abort_on_connect_fail`` is set; names the endpoint and reason.
        """
        try:
            self.client.ping()
        except redis.RedisError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if self.abort_on_connect_fail:
                raise ConnectionFailedError(
                    f"cannot connect to Redis at {self.description}: {reason} "
                    "(set abort_on_connect_fail=False to start anyway and connect when Redis is up)"
                ) from exc
            log.warning(
                "Redis at %s is not reachable yet (%s); retrying in the background", self.description, reason
            )
            return False
        return True

    def close(self) -> None:
        """Run the close hooks, then disconnect the pools tickerq created. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for hook in reversed(self._close_hooks):
            try:
                hook()
            except Exception:
                log.exception("close hook %r failed", hook)
        for pool in self._owned_pools:
            pool.disconnect()

    def __enter__(self) -> RedisConnections:
        self.check()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisConnections({self.description}, closed={self.closed})"


def open_connections(options: RedisOptions | None) -> RedisConnections:
    """Build the pools and clients for ``options`` (no I/O but master discovery).

    Raises:
        ConfigurationError: Redis was not added to the options.
    """
    if options is None:
        raise ConfigurationError(
            "Redis is not configured: call options.add_redis(...) in the add_tickerq callback"
        )
    if options.client is not None:
        user_pool = options.client.connection_pool
        wait = options.pool_timeout.total_seconds()
        fail_fast_pool = derive_pool(user_pool, options.max_connections, wait)
        watchdog_pool = derive_pool(user_pool, _WATCHDOG_POOL_SIZE, wait)
        return RedisConnections(
            client=options.client,
            fail_fast=redis.Redis(connection_pool=fail_fast_pool),
            watchdog=redis.Redis(connection_pool=watchdog_pool),
            owned_pools=(fail_fast_pool, watchdog_pool),
            description=f"the given client ({user_pool!r})",
            abort_on_connect_fail=options.abort_on_connect_fail,
        )
    assert options.configuration is not None  # checked by TickerQOptions.frozen_copy
    settings = parse_configuration(options.configuration)
    kwargs = _connection_kwargs(settings, options)
    retries = options.connect_retry if settings.connect_retry is None else settings.connect_retry
    abort = options.abort_on_connect_fail if settings.abort_connect is None else settings.abort_connect
    pool: redis.ConnectionPool
    if settings.service_name is not None:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [(e.host, e.port) for e in settings.endpoints],
            sentinel_kwargs={
                "socket_timeout": kwargs["socket_timeout"],
                "socket_connect_timeout": kwargs["socket_connect_timeout"],
            },
        )
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            settings.service_name,
            sentinel,
            max_connections=options.max_connections,
            retry=_retry(retries),
            **kwargs,
        )
    else:
        endpoint = _find_master(settings, kwargs)
        pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            max_connections=options.max_connections,
            timeout=options.pool_timeout.total_seconds(),
            retry=_retry(retries),
            **{**kwargs, **_endpoint_kwargs(endpoint)},
        )
    wait = options.pool_timeout.total_seconds()
    fail_fast_pool = derive_pool(pool, options.max_connections, wait)
    watchdog_pool = derive_pool(pool, _WATCHDOG_POOL_SIZE, wait)
    return RedisConnections(
        client=redis.Redis(connection_pool=pool),
        fail_fast=redis.Redis(connection_pool=fail_fast_pool),
        watchdog=redis.Redis(connection_pool=watchdog_pool),
        owned_pools=(pool, fail_fast_pool, watchdog_pool),
        description=settings.describe(),
        abort_on_connect_fail=abort,
    )
