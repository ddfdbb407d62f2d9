"""tickerq: multi-node job coordination on Redis for threaded Python apps."""

from tickerq._version import __version__
from tickerq.container import TickerQContainer, add_tickerq
from tickerq.errors import (
    AuthenticationFailedError,
    ConfigurationError,
    ConnectionFailedError,
    InvalidKeyError,
    KeyTypeError,
    LockError,
    LockLostError,
    LockTimeoutError,
    RedisCommandError,
    RedisReadOnlyError,
    RedisUnavailableError,
    SerializationError,
    ShutdownError,
    TickerQError,
)
from tickerq.events import (
    EventHub,
    LeaderChanged,
    LeadershipAcquired,
    LeadershipLost,
    NodeHeartbeat,
    NodesDead,
    RedisConnectionLost,
    RedisConnectionRestored,
)
from tickerq.options import RedisOptions, SchedulerOptions, TickerQOptions
from tickerq.redis.context import RedisContext
from tickerq.redis.election import LeaderElection
from tickerq.redis.heartbeat import HeartbeatService
from tickerq.redis.lock import Lease, Lock, LockManager
from tickerq.redis.registry import NodeHealthStatus

__all__ = [
    "AuthenticationFailedError",
    "ConfigurationError",
    "ConnectionFailedError",
    "EventHub",
    "HeartbeatService",
    "InvalidKeyError",
    "KeyTypeError",
    "LeaderChanged",
    "LeaderElection",
    "LeadershipAcquired",
    "LeadershipLost",
    "Lease",
    "Lock",
    "LockError",
    "LockLostError",
    "LockManager",
    "LockTimeoutError",
    "NodeHealthStatus",
    "NodeHeartbeat",
    "NodesDead",
    "RedisCommandError",
    "RedisConnectionLost",
    "RedisConnectionRestored",
    "RedisContext",
    "RedisOptions",
    "RedisReadOnlyError",
    "RedisUnavailableError",
    "SchedulerOptions",
    "SerializationError",
    "ShutdownError",
    "TickerQContainer",
    "TickerQError",
    "TickerQOptions",
    "__version__",
    "add_tickerq",
]
