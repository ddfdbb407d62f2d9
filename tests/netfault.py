"""A loopback TCP proxy that puts real network faults between a client and a server.

Tests point a client at :attr:`FaultProxy.port` instead of the server. Requests go
through at once; the replies the server sends back can be:

* delayed by ``reply_delay`` s each, in order, as over a far, slow link (a call's
  round trip takes ``reply_delay`` more);
* held back and delivered later (:meth:`FaultProxy.hold_replies`,
  :meth:`FaultProxy.pass_replies`);
* lost, with that connection cut (:meth:`FaultProxy.drop_next_reply`, or
  :meth:`FaultProxy.drop_reply_containing` for the reply to one particular call).

The server runs every request it receives: these are faults after the request went
through, which a paused or stopped server cannot produce.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

#: Bytes read from a socket at a time.
CHUNK = 65536


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_host:upstream_port`` that can delay, hold or lose
    replies; one connection upstream per client connection."""

    def __init__(self, upstream_host: str, upstream_port: int, *, reply_delay: float = 0.0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._reply_delay = reply_delay
        self._drop = threading.Event()
        self._drop_marker: bytes | None = None
        self.dropped = 0  #: how many replies were lost so far
        self._flowing = threading.Event()
        self._flowing.set()
        self._guard = threading.Lock()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._accepter = self._start(self._accept)

    @property
    def address(self) -> str:
        """``host:port`` to connect to instead of the upstream server."""
        return f"127.0.0.1:{self.port}"

    def drop_next_reply(self) -> None:
        """Lose the next reply the server sends through the proxy, and cut its connection."""
        self._drop.set()

    def drop_reply_containing(self, marker: bytes) -> None:
        """Lose the next reply whose bytes contain ``marker``, and cut its connection."""
        with self._guard:
            self._drop_marker = marker

    def _lose(self, data: bytes) -> bool:
        with self._guard:
            if self._drop.is_set():
                self._drop.clear()
            elif self._drop_marker is not None and self._drop_marker in data:
                self._drop_marker = None
            else:
                return False
            self.dropped += 1
            return True

    def hold_replies(self) -> None:
        """Keep the replies the server sends from now on until :meth:`pass_replies`."""
        self._flowing.clear()

    def pass_replies(self) -> None:
        """Deliver the replies held back, and the next ones at once (after ``reply_delay``)."""
        self._flowing.set()

    def close(self) -> None:
        """Stop accepting, cut every connection, and join the proxy's threads."""
        with self._guard:
            self._closed = True
            sockets = list(self._sockets)
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepter.join(5)  # no new connections, nor threads, after this
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> FaultProxy:
        """The proxy itself, closed on exit."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Close the proxy."""
        self.close()

    def _start(self, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name="test-fault-proxy", daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._guard:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            outbox: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
            self._start(self._forward_requests, client, upstream)
            self._start(self._receive_replies, upstream, client, outbox)
            self._start(self._deliver_replies, upstream, client, outbox)

    def _forward_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy the client's bytes upstream as they come; cut the connection when either end does."""
        with contextlib.suppress(OSError):
            while data := client.recv(CHUNK):
                upstream.sendall(data)
        self._cut(client, upstream)

    def _receive_replies(
        self, upstream: socket.socket, client: socket.socket, outbox: queue.SimpleQueue[tuple[float, bytes]]
    ) -> None:
        """Queue each chunk the server sends with the time it is due; an empty chunk ends the stream."""
        with contextlib.suppress(OSError):
            while data := upstream.recv(CHUNK):
                if self._lose(data):
                    break  # lost: what came before is delivered, then the connection is cut
                outbox.put((time.monotonic() + self._reply_delay, data))
        outbox.put((time.monotonic() + self._reply_delay, b""))

    def _deliver_replies(
        self, upstream: socket.socket, client: socket.socket, outbox: queue.SimpleQueue[tuple[float, bytes]]
    ) -> None:
        """Send the queued chunks to the client in order, each once due and flowing; then cut."""
        while True:
            due, data = outbox.get()
            self._flowing.wait()
            time.sleep(max(0.0, due - time.monotonic()))
            if not data:
                break
            try:
                client.sendall(data)
            except OSError:
                break
        self._cut(upstream, client)

    @staticmethod
    def _cut(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
