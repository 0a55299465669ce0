"""A TCP proxy on 127.0.0.1 that delays every chunk, in each direction, by a fixed time.

The runner puts it between the API (and the baselines) and PostgreSQL so that a database round
trip costs what it costs across a network (`--db-latency-ms`): on loopback it costs tens of
microseconds, which flatters the N+1 and Python-loop anti-patterns. Each chunk read from one side
is queued with its due time (arrival + delay) and written to the other side when due, so the
delay adds latency without serialising anything: many chunks can be on their way at once, in
order, at whatever throughput the two ends manage (flow control pauses the reading side while
the writing side's buffer is full).

    python -m load.latency_proxy --target-port 5432 --delay-ms 0.5

prints `{"port": N}` once it listens on an ephemeral port of 127.0.0.1, a JSON line of
statistics on SIGUSR1 (how late chunks went out relative to their due time since the previous
one, a measure of the proxy's own precision), and a last one on SIGTERM or SIGINT, then exits.
It runs on a `select()`-based event loop: `epoll_wait` rounds timeouts up to whole milliseconds,
which would turn a 0.5 ms delay into about 1 ms; `select` waits to the microsecond (at most 1,024
descriptors, plenty for a few connection pools).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from typing import Any, cast

from hdrh.histogram import HdrHistogram

from load.client import LOOPBACK, require_loopback

_MAX_LATENESS_US = 60_000_000
READY_LIMIT_S = 10.0


@dataclass(frozen=True)
class ProxyStats:
    """What the proxy forwarded (since it started) and how late it forwarded it (since the
    previous snapshot): lateness is the time between a chunk's due time and its write."""

    connections: int
    chunks: int
    bytes: int
    max_queued: int  # most chunks waiting in one direction at once: > 1 means pipelined
    late_chunks: int  # chunks measured for lateness (since the previous snapshot)
    lateness_p50_us: float
    lateness_p99_us: float
    lateness_max_us: float


class _Direction:
    """Chunks from one end, queued with their due times, written to the other end in order."""

    def __init__(self, proxy: LatencyProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None: close the sink
        self.sink: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def push(self, data: bytes | None) -> None:
        self.queue.append((self.loop.time() + self.proxy.delay_s, data))
        if data is not None:
            self.proxy.note_queued(len(self.queue))
        self._arm()

    def attach(self, sink: asyncio.Transport) -> None:
        self.sink = sink
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue and self.sink is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        sink = self.sink
        assert sink is not None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            due, data = self.queue.popleft()
            if data is None:
                sink.close()  # after what is buffered
                self.queue.clear()
                return
            self.proxy.note_forwarded(len(data), now - due)
            if not sink.is_closing():
                sink.write(data)
        self._arm()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class _End(asyncio.Protocol):
    """One side of a proxied connection (the client's or the target's)."""

    def __init__(self, outgoing: _Direction, incoming: _Direction) -> None:
        self.outgoing = outgoing  # what this end sends, on its way to the peer
        self.incoming = incoming  # what the peer sends, written to this end
        self.transport: asyncio.Transport | None = None
        self.peer: _End | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.incoming.attach(self.transport)

    def data_received(self, data: bytes) -> None:
        self.outgoing.push(data)

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost queues the close for the peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.incoming.cancel()
        self.outgoing.push(None)

    # This end's write buffer is full: stop reading from the peer until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class LatencyProxy:
    """Listens on 127.0.0.1 (an ephemeral port) and forwards to `target_port` of 127.0.0.1,
    delaying every chunk in each direction by `delay_s`."""

    def __init__(self, target_port: int, delay_s: float, target_host: str = LOOPBACK) -> None:
        if delay_s < 0:
            raise ValueError("the delay cannot be negative")
        self.target_host = require_loopback(target_host)
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._chunks = 0
        self._bytes = 0
        self._max_queued = 0
        self._lateness = HdrHistogram(1, _MAX_LATENESS_US, 3)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> LatencyProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _accept(self) -> _End:
        upstream, downstream = _Direction(self), _Direction(self)
        client = _End(outgoing=upstream, incoming=downstream)
        self._connections += 1
        task = asyncio.get_running_loop().create_task(self._connect(client, upstream, downstream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def _connect(self, client: _End, upstream: _Direction, downstream: _Direction) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, target = await loop.create_connection(
                lambda: _End(outgoing=downstream, incoming=upstream),
                self.target_host,
                self.target_port,
            )
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.peer, target.peer = target, client

    def note_queued(self, length: int) -> None:
        self._max_queued = max(self._max_queued, length)

    def note_forwarded(self, size: int, late_s: float) -> None:
        self._chunks += 1
        self._bytes += size
        late_us = max(1, min(int(late_s * 1e6), _MAX_LATENESS_US))
        self._lateness.record_value(late_us)

    def stats(self, *, reset: bool = True) -> ProxyStats:
        """Counters since the start; lateness since the previous (resetting) snapshot."""
        hist = self._lateness
        counted = int(hist.get_total_count())
        found = ProxyStats(
            connections=self._connections,
            chunks=self._chunks,
            bytes=self._bytes,
            max_queued=self._max_queued,
            late_chunks=counted,
            lateness_p50_us=float(hist.get_value_at_percentile(50)) if counted else 0.0,
            lateness_p99_us=float(hist.get_value_at_percentile(99)) if counted else 0.0,
            lateness_max_us=float(hist.get_max_value()) if counted else 0.0,
        )
        if reset:
            hist.reset()
        return found


# --- as a process of its own (what the runner uses) --------------------------------------------


def precise_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire to the microsecond (see the module's docstring)."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def _say(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def _serve(target_port: int, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with LatencyProxy(target_port, delay_s) as proxy:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: _say(asdict(proxy.stats())))
        _say({"port": proxy.port})
        await stop.wait()
        _say(asdict(proxy.stats()))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m load.latency_proxy", description=__doc__)
    parser.add_argument("--target-port", type=int, required=True, help="on 127.0.0.1")
    parser.add_argument("--delay-ms", type=float, required=True, help="each direction")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=precise_event_loop) as runner:
        runner.run(_serve(args.target_port, args.delay_ms / 1000))


@dataclass
class ProxyProcess:
    """A running `python -m load.latency_proxy`; `stats()` asks it for a snapshot."""

    process: asyncio.subprocess.Process
    port: int
    delay_ms: float

    async def stats(self, limit_s: float = 5.0) -> ProxyStats:
        assert self.process.stdout is not None
        self.process.send_signal(signal.SIGUSR1)
        line = await asyncio.wait_for(self.process.stdout.readline(), limit_s)
        return ProxyStats(**json.loads(line))


@asynccontextmanager
async def proxy_process(target_port: int, delay_ms: float) -> AsyncIterator[ProxyProcess]:
    """The proxy in a process of its own (its work stays out of the load generator's CPU and
    event loop), stopped on the way out whatever happened."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "load.latency_proxy",
        "--target-port",
        str(target_port),
        "--delay-ms",
        repr(delay_ms),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches the runner, which stops the proxy itself
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), READY_LIMIT_S)
        if not line:
            raise RuntimeError("the latency proxy exited before listening")
        yield ProxyProcess(process, int(json.loads(line)["port"]), delay_ms)
    finally:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


if __name__ == "__main__":
    main()
