"""tickerq: multi-node job coordination on Redis for threaded Python apps."""

from tickerq._version import __version__
from tickerq.container import TickerQContainer, add_tickerq
from tickerq.context import RedisContext
from tickerq.election.election import LeaderElection
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
    TickerFailed,
    TickerFinished,
    TickerQueued,
    TickerStarted,
)
from tickerq.locks.lock import Lease, Lock, LockManager
from tickerq.nodes.heartbeat import HeartbeatService
from tickerq.nodes.registry import NodeHealthStatus
from tickerq.options import RedisOptions, SchedulerOptions, TickerQOptions
from tickerq.scheduler.function import (
    FunctionRegistry,
    TickerFunction,
    TickerFunctionContext,
    ticker_function,
)
from tickerq.scheduler.manager import CronTickerRecord, TickerManager, TickerRecord, TimeTicker
from tickerq.scheduler.model import TickerStatus

__all__ = [
    "AuthenticationFailedError",
    "ConfigurationError",
    "ConnectionFailedError",
    "CronTickerRecord",
    "EventHub",
    "FunctionRegistry",
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
    "TickerFailed",
    "TickerFinished",
    "TickerFunction",
    "TickerFunctionContext",
    "TickerManager",
    "TickerQContainer",
    "TickerQError",
    "TickerQOptions",
    "TickerQueued",
    "TickerRecord",
    "TickerStarted",
    "TickerStatus",
    "TimeTicker",
    "__version__",
    "add_tickerq",
    "ticker_function",
]
