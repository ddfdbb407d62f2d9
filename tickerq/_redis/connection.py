"""Connection pools and clients built from the Redis options.

The container owns one ``RedisConnections``: the application client on a
bounded ``BlockingConnectionPool`` (redis-py's Sentinel pool when a service name
is given) with redis-py's own retry and backoff, plus two clients on pools of
their own without retries: ``fail_fast`` for the cache, which must give up within
one timeout, and ``watchdog`` for lease renewal, which application traffic must
not starve. A client passed in by the user is used and never closed.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from tickerq._redis.connection_string import ConnectionSettings, Endpoint
from tickerq._redis.translate import authentication_failed
from tickerq.errors import ConfigurationError, ConnectionFailedError
from tickerq.options import RedisOptions

__all__ = ["ClientSource", "DerivedClients", "RedisConnections", "derive_pool", "open_connections"]

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


def _find_master(settings: ConnectionSettings, kwargs: dict[str, Any]) -> Endpoint | None:
    """Of several endpoints, the first that reports itself master (None if none does)."""
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
    log.warning("none of %s reports itself master", settings.describe())
    return None


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


class ClientSource(Protocol):
    """Hands out clients on retry-free pools of their own, and takes them back.

    Services that need a pool of their own (elections, later the scheduler)
    get it here, so that its owner can repoint it after a master failover and
    close it at shutdown.
    """

    def derive_client(self, size: int, timeout: float) -> redis.Redis:
        """A client on a new pool of ``size`` connections that gives up a call after ``timeout`` s."""
        ...

    def release_client(self, client: redis.Redis) -> None:
        """Disconnect a client from :meth:`derive_client`; its pool is no longer followed."""
        ...


class DerivedClients:
    """A :class:`ClientSource` for a bare client: pools copied from its pool, closed on release."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def derive_client(self, size: int, timeout: float) -> redis.Redis:
        """See :meth:`ClientSource.derive_client`."""
        pool = derive_pool(self._client.connection_pool, size, timeout, socket_timeout=timeout)
        return redis.Redis(connection_pool=pool)

    def release_client(self, client: redis.Redis) -> None:
        """See :meth:`ClientSource.release_client`."""
        client.connection_pool.disconnect()


class RedisConnections:
    """The clients tickerq uses, and which of their pools it must close.

    Use :func:`open_connections` to build one. Besides the application
    ``client`` it holds clients on retry-free pools of their own: ``fail_fast``
    (the cache, and the start-up check), ``watchdog`` (lease renewal) and
    ``heartbeat`` (one connection, interrupted by :meth:`interrupt_heartbeat`
    so that stopping never waits on a frozen server). It is a context manager
    (the container's Resource): entering checks that Redis answers, exiting
    runs the close hooks (threads that use the pools stop first) and
    disconnects the pools tickerq created.

    Args:
        client: The application client.
        owns_client_pool: Whether ``client``'s pool is ours to disconnect.
        description: The endpoint(s), password masked, for messages.
        abort_on_connect_fail: Whether :meth:`check` raises when Redis is down.
        connect_retry: Retries of the start-up check on refused connections.
        max_connections: Size of the ``fail_fast`` pool.
        pool_timeout: How long a caller waits for a pooled connection.
        find_master: With several endpoints, finds the current master (None
            when none reports itself master); enables :meth:`rediscover`.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        owns_client_pool: bool,
        description: str,
        abort_on_connect_fail: bool,
        connect_retry: int = 0,
        max_connections: int = 50,
        pool_timeout: float = 5.0,
        find_master: Callable[[], Endpoint | None] | None = None,
    ) -> None:
        self.client = client
        template = client.connection_pool
        derived = [
            derive_pool(template, max_connections, pool_timeout),
            derive_pool(template, _WATCHDOG_POOL_SIZE, pool_timeout),
            derive_pool(template, 1, pool_timeout),
        ]
        self.fail_fast, self.watchdog, self.heartbeat = (redis.Redis(connection_pool=p) for p in derived)
        self._owned_pools = ([template] if owns_client_pool else []) + derived
        self._pools_lock = threading.Lock()  # derive_client/release_client come from other threads
        self.description = description
        self.abort_on_connect_fail = abort_on_connect_fail
        self._connect_retry = connect_retry
        self._find_master = find_master
        self._close_hooks: list[Callable[[], None]] = []
        self._pool_timeout = pool_timeout
        self.reachable = False
        self.closed = False

    def derive_client(self, size: int, timeout: float | None = None) -> redis.Redis:
        """A client on a new retry-free pool that follows a failover and closes with the others.

        For a background service: its owner may ``connection_pool.disconnect()`` it to
        wake a thread blocked on a frozen server, and gives it back with
        :meth:`release_client` (or leaves it to :meth:`close`).

        Args:
            size: The pool's maximum number of connections.
            timeout: Connect and reply timeout of one call, in seconds (also the wait
                for a free connection); None: the main client's timeouts.
        """
        wait = self._pool_timeout if timeout is None else timeout
        pool = derive_pool(self.client.connection_pool, size, wait, socket_timeout=timeout)
        with self._pools_lock:
            self._owned_pools.append(pool)
        return redis.Redis(connection_pool=pool)

    def release_client(self, client: redis.Redis) -> None:
        """Disconnect a client from :meth:`derive_client` and stop following its pool."""
        pool = client.connection_pool
        with self._pools_lock:
            if pool in self._owned_pools:
                self._owned_pools.remove(pool)
        pool.disconnect()

    def _pools(self) -> list[redis.ConnectionPool]:
        with self._pools_lock:
            return list(self._owned_pools)

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before the pools close (for threads that use them)."""
        self._close_hooks.append(hook)

    def check(self) -> bool:
        """PING Redis; refused connections are retried ``connect_retry`` times.

        A timeout is not retried (a frozen server would not answer a retry
        either), and without ``abort_on_connect_fail`` nothing is retried: the
        heartbeat keeps trying in the background. So the check costs at most
        one ``sync_timeout`` plus the short backoffs.

        Returns:
            True when Redis answered.

        Raises:
            AuthenticationFailedError: Redis refused the credentials (or wants a
                password that was not given) and ``abort_on_connect_fail`` is set.
            ConnectionFailedError: Redis did not answer and
                ``abort_on_connect_fail`` is set; names the endpoint and reason.
        """
        attempts = 1 + (self._connect_retry if self.abort_on_connect_fail else 0)
        for attempt in range(attempts):
            try:
                self.fail_fast.ping()
            except redis.AuthenticationError as exc:
                # Not an outage: no retry, and no hint about abort_on_connect_fail.
                refused = authentication_failed(exc, f"Redis at {self.description}")
                if self.abort_on_connect_fail:
                    raise refused from exc
                log.warning("%s; the node starts anyway and keeps trying in the background", refused)
                return False
            except redis.RedisError as exc:
                error = exc
                retryable = isinstance(exc, redis.ConnectionError)
                if not retryable or attempt + 1 == attempts:
                    break
                time.sleep(min(0.5, 0.05 * 2**attempt))
            else:
                self.reachable = True
                return True
        reason = f"{type(error).__name__}: {error}"
        if self.abort_on_connect_fail:
            raise ConnectionFailedError(
                f"cannot connect to Redis at {self.description}: {reason} "
                "(set abort_on_connect_fail=False to start anyway and connect when Redis is up)"
            ) from error
        log.warning(
            "Redis at %s is not reachable yet (%s); retrying in the background", self.description, reason
        )
        return False

    def rediscover(self) -> bool:
        """With several endpoints, find the master again and repoint every pool to it.

        Called by the heartbeat when Redis calls fail, so a node follows a
        failover by itself. Does nothing for one endpoint, Sentinel (which
        follows failovers itself) or a client given by the user.

        Returns:
            True when the master moved and the pools were repointed.
        """
        if self._find_master is None or self.closed:
            return False
        endpoint = self._find_master()
        current = self.client.connection_pool.connection_kwargs
        if (
            endpoint is None
            or endpoint.host is None
            or (current.get("host"), current.get("port"))
            == (
                endpoint.host,
                endpoint.port,
            )
        ):
            return False
        log.warning("the Redis master moved to %s; reconnecting there", endpoint)
        for pool in self._pools():
            pool.connection_kwargs.update(host=endpoint.host, port=endpoint.port)
            pool.disconnect()
            pool.reset()  # drop the Connection objects: they keep their own host and port
        return True

    def interrupt_heartbeat(self) -> None:
        """Close the heartbeat's connection, waking a thread blocked on a frozen server."""
        self.heartbeat.connection_pool.disconnect()

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
        for pool in self._pools():
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
    common: dict[str, Any] = {
        "abort_on_connect_fail": options.abort_on_connect_fail,
        "connect_retry": options.connect_retry,
        "max_connections": options.max_connections,
        "pool_timeout": options.pool_timeout.total_seconds(),
    }
    if options.client is not None:
        return RedisConnections(
            client=options.client,
            owns_client_pool=False,
            description=f"the given client ({options.client.connection_pool!r})",
            **common,
        )
    settings = options.connection_settings
    assert settings is not None  # checked by TickerQOptions.frozen_copy
    kwargs = _connection_kwargs(settings, options)
    retries = options.connect_retry if settings.connect_retry is None else settings.connect_retry
    common["connect_retry"] = retries
    if settings.abort_connect is not None:
        common["abort_on_connect_fail"] = settings.abort_connect
    pool: redis.ConnectionPool
    find_master: Callable[[], Endpoint | None] | None = None
    if settings.service_name is not None:
        # Sentinels are TCP endpoints (the parser refuses unix sockets with serviceName).
        sentinels: list[tuple[str, int]] = [(e.host, e.port) for e in settings.endpoints if e.host]
        # redis-py < 8.2 leaves Sentinel's constructor untyped.
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            sentinels,
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
        endpoint = _find_master(settings, kwargs) or settings.endpoints[0]
        if len(settings.endpoints) > 1:
            find_master = functools.partial(_find_master, settings, kwargs)
        pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            max_connections=options.max_connections,
            timeout=options.pool_timeout.total_seconds(),
            retry=_retry(retries),
            **{**kwargs, **_endpoint_kwargs(endpoint)},
        )
    return RedisConnections(
        client=redis.Redis(connection_pool=pool),
        owns_client_pool=True,
        description=settings.describe(),
        find_master=find_master,
        **common,
    )
