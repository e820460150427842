"""Socket publishers: many subscribers on a Unix stream socket or TCP, one JSON event per line, none of them ever
slowing the pipeline or each other. Addresses (parsing, binding, the socket file) live in runtime.addresses.

Design: one selector thread per listening socket does all the socket work; the pipeline's publish() only appends
the line to each subscriber's bounded deque (under one short lock) and wakes that thread (one byte on a socketpair,
coalesced: at most one pending). Chosen over a sender thread per subscriber because:
- a subscriber that goes away is seen at once even when no event flows (its socket turns readable: EOF or RST),
  where a sender thread waiting on its queue would learn it only at its next send;
- nothing ever blocks: sends are non-blocking and a partial write resumes when the socket is writable, so close()
  is prompt by construction (a short grace for subscribers that keep up, then every socket is closed), even with
  stalled subscribers;
- the thread count stays one whatever the number of subscribers: nothing to start, join or leak as they churn.
The cost is handling partial writes by hand (an offset into the chunk in flight).

A subscriber's backlog is bounded: its deque (`queue` events), the chunk in flight (<= CHUNK_BYTES) and a small
kernel send buffer (SNDBUF). When the deque is full the oldest event is dropped and counted; the next line the
subscriber gets is then a `dropped` notice with the count (and `seq` shows the gap). The first line it gets is
`hello` (runtime.events), once the daemon has told the publisher what it publishes (set_hello).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from runtime.addresses import Address, Listener, listen
from runtime.errors import printable, say
from runtime.events import dropped_notice, encode
from runtime.publishers import Publisher

CHUNK_BYTES = 64 * 1024  # at most this much is taken from a deque into one send
SNDBUF = 32 * 1024  # kernel send buffer per subscriber (Linux doubles it): most of the backlog stays countable
CLOSE_GRACE_S = 0.25  # at close, subscribers that keep up get this long to take what is queued for them


class _Subscriber:
    __slots__ = ("dropped_total", "hello_due", "out", "pending_drops", "queue", "sock", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.queue: deque[bytes] = deque()
        self.pending_drops = 0  # dropped since the last notice
        self.dropped_total = 0
        self.out = memoryview(b"")  # the chunk in flight
        self.hello_due = True
        self.writing = False  # registered for EVENT_WRITE


class SocketPublisher(Publisher):
    """Publishes to every subscriber of one listening socket (see the module docstring)."""

    def __init__(self, address: Address, queue: int | None = None) -> None:
        self.address = address
        self.queue_len = queue or address.queue
        self.listener: Listener = listen(address)  # a UserError here leaves nothing behind
        self._lock = threading.Lock()
        self._subs: list[_Subscriber] = []
        self._quiet_until = 0.0  # no "cannot accept" warning before this (monotonic s): once a minute
        self._dropped_gone = 0  # dropped for subscribers that have left
        self._hello: Callable[[], dict] | None = None
        self._closed = False
        self._wake_pending = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener.sock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=f"publish {address.spec}", daemon=True)
        self._thread.start()

    # --- the pipeline's side: never blocks -------------------------------------------------------------------
    def publish(self, line: bytes) -> None:
        with self._lock:
            if self._closed or not self._subs:
                return
            for sub in self._subs:
                if len(sub.queue) >= self.queue_len:
                    sub.queue.popleft()
                    sub.pending_drops += 1
                    sub.dropped_total += 1
                sub.queue.append(line)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._wake()

    def set_hello(self, make: Callable[[], dict]) -> None:
        self._hello = make
        self._wake()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def stats(self) -> dict:
        """For stats events (runtime.outputs): subscribers now, events dropped for slow ones since the start."""
        with self._lock:
            return {
                "subscribers": len(self._subs),
                "dropped_total": self._dropped_gone + sum(s.dropped_total for s in self._subs),
            }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        self._thread.join(timeout=2 * CLOSE_GRACE_S + 1.0)  # the loop itself never blocks: this is a safety net

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (the loop has ended)
            self._wake_w.send(b"\0")

    # --- the selector thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._closed:
                for key, mask in self._sel.select():
                    self._handle(key, mask)
                self._pump()
            self._sel.unregister(self.listener.sock)
            self.listener.close()  # no new subscribers; the socket file goes now, not after the grace
            deadline = time.monotonic() + CLOSE_GRACE_S
            while any(s.out or s.queue for s in self._subs) and (left := deadline - time.monotonic()) > 0:
                for key, mask in self._sel.select(left):
                    self._handle(key, mask)
                self._pump()
        except Exception as e:  # a bug here must not pass silently: the subscribers would just hang
            say(
                f"emotiond: {printable(self.address.spec)}: publisher failed: {type(e).__name__}: {printable(e)}",
                "error",
            )
        finally:
            self.listener.close()
            for sub in list(self._subs):
                self._drop(sub)
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _handle(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.data == "listen":
            self._accept()
        elif key.data == "wake":
            # Drain first, then clear: a publish() in between finds the flag set and sends no byte, but its line
            # is queued and the _pump() after this sends it. The other order could lose a wake-up for good.
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
            with self._lock:
                self._wake_pending = False
        elif mask & selectors.EVENT_READ:  # a subscriber said something (ignored) or left
            try:
                alive = bool(key.data.sock.recv(4096))
            except BlockingIOError:
                alive = True
            except OSError:
                alive = False
            if not alive:
                self._drop(key.data)
        # EVENT_WRITE needs nothing here: _pump sends to every subscriber with something pending

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:  # out of fds: the waiting connection stays queued; try again on the next wake-up
                if time.monotonic() >= self._quiet_until:  # once a minute, not at every retry
                    self._quiet_until = time.monotonic() + 60
                    say(
                        f"emotiond: {printable(self.address.spec)}: cannot accept a subscriber: "
                        f"{printable(e.strerror)}", "warning",
                    )  # fmt: skip
                time.sleep(0.05)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            sub = _Subscriber(sock)
            with self._lock:
                self._subs.append(sub)
            self._sel.register(sock, selectors.EVENT_READ, sub)

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub not in self._subs:
                return
            self._subs.remove(sub)
            self._dropped_gone += sub.dropped_total
        self._sel.unregister(sub.sock)
        sub.sock.close()

    def _pump(self) -> None:
        for sub in list(self._subs):
            self._send(sub)

    def _next_chunk(self, sub: _Subscriber) -> bytes:
        if sub.hello_due:
            sub.hello_due = False
            if self._hello is not None:
                return encode({**self._hello(), "queue": self.queue_len})
        parts, size = [], 0
        with self._lock:
            if sub.pending_drops:
                parts.append(encode(dropped_notice(sub.pending_drops, sub.dropped_total)))
                sub.pending_drops = 0
            while sub.queue and size < CHUNK_BYTES:
                parts.append(sub.queue.popleft())
                size += len(parts[-1])
        return b"".join(parts)

    def _send(self, sub: _Subscriber) -> None:
        if sub.hello_due and self._hello is None and not sub.queue:
            return  # not greeted yet and nothing to send: wait for the hello
        while True:
            if not sub.out:
                sub.out = memoryview(self._next_chunk(sub))
                if not sub.out:
                    break
            try:
                sent = sub.sock.send(sub.out, socket.MSG_NOSIGNAL)
            except BlockingIOError:
                break
            except OSError:  # reset, broken pipe: gone
                self._drop(sub)
                return
            sub.out = sub.out[sent:]
        writing = bool(sub.out)
        if writing != sub.writing:
            sub.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self._sel.modify(sub.sock, events, sub)
