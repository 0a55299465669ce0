"""A small, low-overhead HTTP/1.1 load generator on asyncio (uvloop when installed).

Each of N workers owns one persistent keep-alive connection to 127.0.0.1 and sends pre-built
request bytes one at a time (no pipelining), timing every request with `perf_counter_ns`.
A run stops by itself at whichever comes first: its duration or its request budget. Requests
started during the warm-up are sent but left out of every statistic. The generator's own CPU
time (`getrusage`) is part of the result, so its overhead on a shared machine is visible.

`run_open_loop` is the open-loop (constant arrival rate) mode: requests are scheduled at fixed
1/rate intervals whatever the server does, and latency runs from the scheduled time, so a
saturated server's queueing shows in the percentiles instead of slowing the generator down
(coordinated omission). Its latencies go into an HDR histogram.

Only 127.0.0.1 is accepted as a target: this tool never sends traffic anywhere else.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, urlencode

from hdrh.histogram import HdrHistogram

LOOPBACK = "127.0.0.1"

RequestFactory = Callable[[int], bytes]
"""Returns the raw bytes of the request with the given sequence number (0, 1, 2, ...)."""


class ProtocolError(Exception):
    """The server's bytes are not a well-formed HTTP/1.1 response."""


class ConnectionClosed(Exception):
    """The server closed the connection before a response was complete."""


def cycle_requests(requests: Sequence[bytes]) -> RequestFactory:
    """A request factory that sends `requests` in order, over and over."""
    if not requests:
        raise ValueError("a scenario needs at least one request")
    count = len(requests)
    return lambda number: requests[number % count]


def require_loopback(host: str) -> str:
    """Return `host` when it is 127.0.0.1; refuse anything else."""
    if host != LOOPBACK:
        raise ValueError(f"the load generator only targets {LOOPBACK}, not {host!r}")
    return host


def build_request(
    method: str,
    path: str,
    *,
    port: int,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
) -> bytes:
    """The bytes of one HTTP/1.1 keep-alive request to 127.0.0.1:`port`."""
    if not path.startswith("/"):
        raise ValueError("path must start with '/'")
    target = f"{path}?{urlencode(params, quote_via=quote)}" if params else path
    lines = [f"{method.upper()} {target} HTTP/1.1", f"Host: {LOOPBACK}:{port}"]
    body = b""
    if json_body is not None:
        body = json.dumps(json_body, separators=(",", ":")).encode()
        lines.append("Content-Type: application/json")
    if body or method.upper() in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + body


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    keep_alive: bool


_HEAD_END = b"\r\n\r\n"
_LINE_END = b"\r\n"
_MAX_HEAD = 64 * 1024


class ResponseParser:
    """Incremental parser of HTTP/1.1 responses: Content-Length, chunked, or read-to-close.

    Feed it bytes as they arrive; `feed` returns the responses completed by them (more than one
    only if the server pipelines). `eof()` completes a read-to-close body. Responses to HEAD
    (a Content-Length without a body) are not supported: the runner never sends HEAD.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._state = "head"
        self._status = 0
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._remaining = 0
        self._keep_alive = True

    @property
    def idle(self) -> bool:
        """No response is partly received."""
        return self._state == "head" and not self._buffer

    def feed(self, data: bytes) -> list[Response]:
        self._buffer += data
        done: list[Response] = []
        while True:
            response = self._step()
            if response is None:
                return done
            done.append(response)

    def eof(self) -> Response | None:
        """The connection ended: the read-to-close body is complete, anything else is cut."""
        if self._state == "close":
            self._body += self._buffer
            self._buffer.clear()
            return self._finish()
        if self.idle:
            return None
        raise ConnectionClosed("connection closed in the middle of a response")

    def _step(self) -> Response | None:
        """Advance as far as the buffer allows; a response when one is complete."""
        buffer = self._buffer
        while True:
            if self._state == "head":
                end = buffer.find(_HEAD_END)
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        raise ProtocolError("response head too large")
                    return None
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                if self._start(head):
                    return self._finish()
            elif self._state == "length":
                if len(buffer) < self._remaining:
                    return None
                self._body += buffer[: self._remaining]
                del buffer[: self._remaining]
                return self._finish()
            elif self._state == "chunk-size":
                end = buffer.find(_LINE_END)
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        raise ProtocolError("chunk-size line too long")
                    return None
                size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
                del buffer[: end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_text!r}") from None
                if size < 0:
                    raise ProtocolError("negative chunk size")
                self._remaining = size
                self._state = "chunk-data" if size else "trailers"
            elif self._state == "chunk-data":
                if len(buffer) < self._remaining + 2:
                    return None
                if buffer[self._remaining : self._remaining + 2] != _LINE_END:
                    raise ProtocolError("chunk not followed by CRLF")
                self._body += buffer[: self._remaining]
                del buffer[: self._remaining + 2]
                self._state = "chunk-size"
            elif self._state == "trailers":
                end = buffer.find(_LINE_END)
                if end < 0:
                    return None
                del buffer[: end + 2]
                if end == 0:  # the empty line after the (optional) trailer fields
                    return self._finish()
            else:  # "close": the body runs to the end of the connection
                self._body += buffer
                buffer.clear()
                return None

    def _start(self, head: bytes) -> bool:
        """Parse the status line and headers; True when the response has no body."""
        lines = head.split(_LINE_END)
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        self._status = int(parts[1])
        self._reason = parts[2].decode("latin-1") if len(parts) == 3 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            key = name.strip().lower().decode("latin-1")
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self._headers = headers
        connection = headers.get("connection", "").lower()
        self._keep_alive = "close" not in connection and parts[0] != b"HTTP/1.0"
        if 100 <= self._status < 200:  # interim response (100 Continue): skip it
            self._reset()
            return False
        if self._status in (204, 304):
            return True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = "chunk-size"
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise ProtocolError(f"bad Content-Length {length!r}")
            self._remaining = int(length)
            self._state = "length"
        else:
            self._keep_alive = False
            self._state = "close"
        return False

    def _finish(self) -> Response:
        response = Response(
            self._status, self._reason, self._headers, bytes(self._body), self._keep_alive
        )
        self._reset()
        return response


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self) -> None:
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if responses and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(responses[0])

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost finishes the story

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        try:
            response = self.parser.eof()
        except ConnectionClosed as closed:
            self.waiter.set_exception(closed)
            return
        if response is not None:
            self.waiter.set_result(response)
        else:
            self.waiter.set_exception(exc or ConnectionClosed("connection closed by the server"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    async def request(self, raw: bytes, timeout_s: float) -> Response:
        if self.closed or self.transport is None:
            raise ConnectionClosed("connection is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self.waiter = waiter
        # A timer handle, not asyncio.wait_for: no extra task per request.
        timer = loop.call_later(timeout_s, self._time_out, waiter)
        self.transport.write(raw)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _time_out(self, waiter: asyncio.Future[Response]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("no response in time"))
            if self.transport is not None:
                self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Connection:
    """A persistent connection to 127.0.0.1:`port` for one request at a time."""

    def __init__(self, protocol: _Connection) -> None:
        self._protocol = protocol

    @classmethod
    async def open(cls, port: int, host: str = LOOPBACK) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Connection, require_loopback(host), port)
        return cls(protocol)

    @property
    def closed(self) -> bool:
        return self._protocol.closed

    async def request(self, raw: bytes, timeout_s: float = 10.0) -> Response:
        return await self._protocol.request(raw, timeout_s)

    def close(self) -> None:
        self._protocol.close()


async def fetch(port: int, raw: bytes, *, limit_s: float = 5.0) -> Response:
    """One request on a fresh connection (probes, metrics scrapes), within `limit_s`."""
    async with asyncio.timeout(limit_s):
        connection = await Connection.open(port)
    try:
        return await connection.request(raw, limit_s)
    finally:
        connection.close()


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence: the smallest value with at least q %
    of the values at or below it (0 for an empty sequence)."""
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def from_histogram(cls, histogram: HdrHistogram) -> LatencySummary:
        """From an HDR histogram of microseconds (see `latency_histogram`)."""
        if not histogram.get_total_count():
            return cls(0.0, 0.0, 0.0, 0.0, 0.0)

        def ms(percentile: float) -> float:
            return float(histogram.get_value_at_percentile(percentile)) / 1e3

        return cls(
            p50=ms(50),
            p95=ms(95),
            p99=ms(99),
            max=float(histogram.get_max_value()) / 1e3,
            mean=float(histogram.get_mean_value()) / 1e3,
        )

    @classmethod
    def from_ns(cls, samples: Sequence[int]) -> LatencySummary:
        ordered = sorted(samples)
        ms = [value / 1e6 for value in ordered]
        mean = sum(ms) / len(ms) if ms else 0.0
        return cls(
            p50=percentile(ms, 50),
            p95=percentile(ms, 95),
            p99=percentile(ms, 99),
            max=ms[-1] if ms else 0.0,
            mean=mean,
        )


@dataclass(frozen=True)
class LoadResult:
    """What one run measured, warm-up excluded.

    `requests` counts every request started after the warm-up that ended (a response or a
    transport error); `ok` the 2xx (and expected statuses) among them. Throughput and latencies
    are over those answers:
    non-2xx statuses and transport errors are counted separately and never hide in the figures.
    """

    concurrency: int
    requests: int
    ok: int
    elapsed_s: float
    throughput: float
    latency: LatencySummary
    status_errors: dict[int, int]
    transport_errors: dict[str, int]
    warmup_requests: int
    cpu_s: float
    mean_body_bytes: float
    statuses: dict[int, int] = field(default_factory=dict)  # every measured answer, by status
    samples_ns: tuple[int, ...] = field(default=(), repr=False)  # latencies counted

    @property
    def errors(self) -> int:
        return sum(self.status_errors.values()) + sum(self.transport_errors.values())

    def error_summary(self) -> str:
        """`0`, or e.g. `3 (HTTP 503 x2, ConnectionClosed x1)`."""
        if not self.errors:
            return "0"
        kinds = [f"HTTP {status} x{n}" for status, n in sorted(self.status_errors.items())]
        kinds += [f"{kind} x{n}" for kind, n in sorted(self.transport_errors.items())]
        return f"{self.errors} ({', '.join(kinds)})"


@dataclass
class _Tally:
    latencies_ns: list[int] = field(default_factory=list)
    requests: int = 0
    body_bytes: int = 0
    warmup: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    status_errors: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class LoadPlan:
    """How hard and how long: every run is bounded by `duration_s` and `max_requests`."""

    port: int
    concurrency: int = 64
    duration_s: float = 15.0
    max_requests: int = 1_000_000
    warmup_s: float = 2.0
    warmup_share: float = 0.1  # the warm-up also ends after this share of max_requests
    timeout_s: float = 10.0
    host: str = LOOPBACK
    # Non-2xx statuses that are the expected answer (409 for the losers of a contended slot):
    # counted with the 2xx in throughput and latency, not as errors.
    expected_statuses: frozenset[int] = frozenset()
    # Every worker opens its connection first, and all send their first request together
    # (a burst on one slot), instead of each starting as soon as it is connected.
    open_first: bool = False

    def __post_init__(self) -> None:
        require_loopback(self.host)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.duration_s <= 0 or self.max_requests < 1:
            raise ValueError("a run needs a positive duration and request budget")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError("the warm-up must be shorter than the run")
        if not 0 <= self.warmup_share < 1:
            raise ValueError("warmup_share must be in [0, 1)")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Run:
    """The bookkeeping every run shares: the bounds, the warm-up, the tally and the clock.

    The warm-up ends after `plan.warmup_s` or after `plan.warmup_share` of the request budget,
    whichever comes first, so a small budget still leaves requests to measure.
    """

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.tally = _Tally()
        self.issued = 0
        self.clock = time.perf_counter_ns
        self.began = self.clock()
        self.warmup_until = self.began + int(plan.warmup_s * 1e9)
        self.warmup_budget = int(plan.max_requests * plan.warmup_share) if plan.warmup_s > 0 else 0
        self.deadline = self.began + int(plan.duration_s * 1e9)
        self.measure_from: int | None = None
        self.last_done = 0

    def next_request(self) -> tuple[int, bool] | None:
        """The next sequence number and whether it is measured; None when the run is over."""
        now = self.clock()
        if self.issued >= self.plan.max_requests or now >= self.deadline:
            return None
        number = self.issued
        self.issued += 1
        if self.measure_from is None and (number >= self.warmup_budget or now >= self.warmup_until):
            self.measure_from = now
        return number, self.measure_from is not None

    def answered(self, measured: bool, status: int, body_bytes: int, start: int) -> None:
        end = self.clock()
        tally = self.tally
        if not measured:
            tally.warmup += 1
            return
        tally.requests += 1
        tally.statuses[status] += 1
        self.last_done = end
        if 200 <= status < 300 or status in self.plan.expected_statuses:
            tally.latencies_ns.append(end - start)
            tally.body_bytes += body_bytes
        else:
            tally.status_errors[status] += 1

    def failed(self, measured: bool, exc: BaseException) -> None:
        if measured:
            self.tally.requests += 1
            self.tally.transport_errors[type(exc).__name__] += 1
            self.last_done = self.clock()
        else:
            self.tally.warmup += 1

    def result(self, cpu_s: float) -> LoadResult:
        tally = self.tally
        measure_from = self.measure_from
        elapsed = max(self.last_done - measure_from, 1) / 1e9 if measure_from is not None else 0.0
        ok = len(tally.latencies_ns)
        return LoadResult(
            concurrency=self.plan.concurrency,
            requests=tally.requests,
            ok=ok,
            elapsed_s=elapsed,
            throughput=ok / elapsed if ok else 0.0,
            latency=LatencySummary.from_ns(tally.latencies_ns),
            status_errors=dict(tally.status_errors),
            transport_errors=dict(tally.transport_errors),
            warmup_requests=tally.warmup,
            cpu_s=cpu_s,
            mean_body_bytes=tally.body_bytes / ok if ok else 0.0,
            statuses=dict(tally.statuses),
            samples_ns=tuple(tally.latencies_ns),
        )


async def run_load(plan: LoadPlan, factory: RequestFactory) -> LoadResult:
    """Drive `plan.concurrency` workers until the duration or the request budget runs out."""
    run = _Run(plan)
    ready = asyncio.Event()
    opened = 0

    async def connect() -> Connection:
        return await asyncio.wait_for(Connection.open(plan.port, plan.host), plan.timeout_s)

    async def worker() -> None:
        nonlocal opened
        connection: Connection | None = None
        try:
            if plan.open_first:
                with suppress(OSError, TimeoutError):
                    connection = await connect()
                opened += 1
                if opened == plan.concurrency:
                    ready.set()
                await ready.wait()
            while (turn := run.next_request()) is not None:
                number, measured = turn
                raw = factory(number)
                start = run.clock()
                try:
                    if connection is None or connection.closed:
                        connection = await connect()
                    response = await connection.request(raw, plan.timeout_s)
                except (OSError, TimeoutError, ProtocolError, ConnectionClosed) as exc:
                    if connection is not None:
                        connection.close()
                        connection = None
                    run.failed(measured, exc)
                    await asyncio.sleep(0.01)  # a refused connection must not spin
                    continue
                run.answered(measured, response.status, len(response.body), start)
                if not response.keep_alive:
                    connection.close()
                    connection = None
        finally:
            if connection is not None:
                connection.close()

    cpu_before = _cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    return run.result(_cpu_seconds() - cpu_before)


Call = Callable[[int], Awaitable[int]]
"""An in-process operation with the given sequence number; returns an HTTP-like status."""


async def run_calls(plan: LoadPlan, call: Call) -> LoadResult:
    """`run_load` for in-process baselines (a query or a transaction through asyncpg): the same
    bounds, warm-up and statistics, `plan.concurrency` tasks instead of connections. An
    exception counts as a transport error of its type."""
    run = _Run(plan)

    async def worker() -> None:
        while (turn := run.next_request()) is not None:
            number, measured = turn
            start = run.clock()
            try:
                status = await asyncio.wait_for(call(number), plan.timeout_s)
            except Exception as exc:
                run.failed(measured, exc)
                continue
            run.answered(measured, status, 0, start)

    cpu_before = _cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    return run.result(_cpu_seconds() - cpu_before)


def merge_results(results: Sequence[LoadResult]) -> LoadResult:
    """One result of several runs in a row (the bursts of the contention scenario): counts
    add up, latencies are over all samples, throughput is answers over the summed time."""
    if not results:
        raise ValueError("nothing to merge")
    samples = tuple(s for r in results for s in r.samples_ns)
    ok = sum(r.ok for r in results)
    elapsed = sum(r.elapsed_s for r in results)

    def added(maps: Sequence[Mapping[Any, int]]) -> dict[Any, int]:
        total: Counter[Any] = Counter()
        for counts in maps:
            total.update(counts)
        return dict(total)

    return LoadResult(
        concurrency=max(r.concurrency for r in results),
        requests=sum(r.requests for r in results),
        ok=ok,
        elapsed_s=elapsed,
        throughput=ok / elapsed if ok and elapsed else 0.0,
        latency=LatencySummary.from_ns(samples),
        status_errors=added([r.status_errors for r in results]),
        transport_errors=added([r.transport_errors for r in results]),
        warmup_requests=sum(r.warmup_requests for r in results),
        cpu_s=sum(r.cpu_s for r in results),
        mean_body_bytes=sum(r.mean_body_bytes * r.ok for r in results) / ok if ok else 0.0,
        statuses=added([r.statuses for r in results]),
        samples_ns=samples,
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Carebook dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# --- open loop: a constant arrival rate ---------------------------------------------------------

HISTOGRAM_MAX_US = 3_600_000_000  # an hour: a stalled run still fits
HISTOGRAM_DIGITS = 3  # 0.1 % precision


def latency_histogram() -> HdrHistogram:
    """An HDR histogram of microseconds, 1 µs to an hour, three significant digits."""
    return HdrHistogram(1, HISTOGRAM_MAX_US, HISTOGRAM_DIGITS)


def _record_us(histogram: HdrHistogram, ns: int) -> None:
    histogram.record_value(max(1, min(ns // 1000, HISTOGRAM_MAX_US)))


@dataclass(frozen=True)
class OpenLoopPlan:
    """`rate` requests per second at fixed intervals, bounded by `duration_s` and
    `max_requests` like every run. `connections` are opened before the first send; when all are
    busy another is opened, up to `max_connections`; beyond that a request waits for one
    (counted: its wait is part of its latency). A request still waiting when the time is up is
    dropped (counted). The warm-up is the requests scheduled in the first `warmup_s` (or the
    first `warmup_share` of the budget, whichever is fewer): sent, not counted."""

    port: int
    rate: float
    duration_s: float = 15.0
    max_requests: int = 1_000_000
    warmup_s: float = 2.0
    warmup_share: float = 0.1
    connections: int = 64
    max_connections: int = 512
    timeout_s: float = 10.0
    late_ms: float = 5.0  # sent this much after its scheduled time: late
    host: str = LOOPBACK
    expected_statuses: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        require_loopback(self.host)
        if self.rate <= 0:
            raise ValueError("the rate must be positive")
        if self.duration_s <= 0 or self.max_requests < 1:
            raise ValueError("a run needs a positive duration and request budget")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError("the warm-up must be shorter than the run")
        if not 0 <= self.warmup_share < 1:
            raise ValueError("warmup_share must be in [0, 1)")
        if not 1 <= self.connections <= self.max_connections:
            raise ValueError("connections must be at least 1 and at most max_connections")

    @property
    def scheduled(self) -> int:
        """Requests scheduled in the whole run, warm-up included."""
        return min(self.max_requests, math.ceil(self.duration_s * self.rate))

    @property
    def warmup_requests(self) -> int:
        by_time = math.ceil(self.warmup_s * self.rate)
        by_budget = int(self.max_requests * self.warmup_share) if self.warmup_s > 0 else 0
        return min(by_time, by_budget, self.scheduled - 1)


@dataclass(frozen=True)
class OpenLoopResult:
    """An open-loop run. `result` counts the measured requests that were sent (its throughput
    is the achieved rate of answers; its latencies run from the scheduled time); `scheduled`
    = `result.requests` + `dropped`."""

    rate: float
    result: LoadResult
    scheduled: int  # measured requests scheduled (warm-up excluded)
    dropped: int  # scheduled, never sent: still waiting for a connection when time was up
    late: int  # sent more than `late_ms` after the scheduled time
    waited: int  # found every connection busy at `max_connections`
    initial_connections: int
    peak_connections: int  # connections open at once, at most
    send_lag: LatencySummary  # from the scheduled time to the write
    service: LatencySummary  # from the write to the response (what a closed loop sees)
    histogram: str = field(default="", repr=False)  # latencies (µs), HdrHistogram encoding

    @property
    def opened_extra(self) -> int:
        return self.peak_connections - self.initial_connections


class _OpenLoop:
    def __init__(self, plan: OpenLoopPlan, factory: RequestFactory) -> None:
        self.plan = plan
        self.factory = factory
        self.clock = time.perf_counter_ns
        self.total = plan.scheduled
        self.warm = plan.warmup_requests
        self.tally = _Tally()
        self.latency = latency_histogram()
        self.lag = latency_histogram()
        self.service = latency_histogram()
        self.backlog: deque[tuple[int, int]] = deque()  # (number, due) waiting for a connection
        self.idle: deque[asyncio.Future[tuple[int, int] | None]] = deque()
        self.workers: set[asyncio.Task[None]] = set()
        self.open = 0
        self.peak = 0
        self.ok = 0
        self.dropped = 0
        self.late = 0
        self.waited = 0
        self.began = 0
        self.deadline = 0
        self.dispatching = True
        self.last_done = 0

    async def connect(self) -> Connection:
        return await asyncio.wait_for(
            Connection.open(self.plan.port, self.plan.host), self.plan.timeout_s
        )

    def spawn(self, connection: Connection | None, first: tuple[int, int] | None) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        task = asyncio.get_running_loop().create_task(self.worker(connection, first))
        self.workers.add(task)
        task.add_done_callback(self.workers.discard)

    def dispatch(self, item: tuple[int, int]) -> None:
        while self.idle:
            waiter = self.idle.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        if self.open < self.plan.max_connections:
            self.spawn(None, item)
            return
        self.waited += item[0] >= self.warm
        self.backlog.append(item)

    async def next_item(self) -> tuple[int, int] | None:
        while self.backlog:
            item = self.backlog.popleft()
            if self.clock() < self.deadline:
                return item
            self.dropped += item[0] >= self.warm  # never sent: the run's time is up
        if not self.dispatching:
            return None
        waiter: asyncio.Future[tuple[int, int] | None] = asyncio.get_running_loop().create_future()
        self.idle.append(waiter)
        return await waiter

    async def worker(self, connection: Connection | None, first: tuple[int, int] | None) -> None:
        plan, tally = self.plan, self.tally
        item = first
        try:
            while True:
                if item is None:
                    item = await self.next_item()
                    if item is None:
                        return
                number, due = item
                item = None
                measured = number >= self.warm
                raw = self.factory(number)
                try:
                    if connection is None or connection.closed:
                        connection = await self.connect()
                    sent = self.clock()
                    response = await connection.request(raw, plan.timeout_s)
                except (OSError, TimeoutError, ProtocolError, ConnectionClosed) as exc:
                    if connection is not None:
                        connection.close()
                        connection = None
                    if measured:
                        tally.requests += 1
                        tally.transport_errors[type(exc).__name__] += 1
                        self.last_done = self.clock()
                    else:
                        tally.warmup += 1
                    continue
                end = self.clock()
                if not measured:
                    tally.warmup += 1
                else:
                    tally.requests += 1
                    tally.statuses[response.status] += 1
                    self.last_done = end
                    lag = sent - due
                    self.late += lag > plan.late_ms * 1e6
                    _record_us(self.lag, lag)
                    status = response.status
                    if 200 <= status < 300 or status in plan.expected_statuses:
                        self.ok += 1
                        tally.body_bytes += len(response.body)
                        _record_us(self.latency, end - due)
                        _record_us(self.service, end - sent)
                    else:
                        tally.status_errors[status] += 1
                if not response.keep_alive:
                    connection.close()
                    connection = None
        finally:
            self.open -= 1
            if connection is not None:
                connection.close()

    async def run(self) -> OpenLoopResult:
        plan = self.plan
        cpu_before = _cpu_seconds()
        opened = await asyncio.gather(
            *(self.connect() for _ in range(plan.connections)), return_exceptions=True
        )
        for connection in opened:
            self.spawn(connection if isinstance(connection, Connection) else None, None)
        await asyncio.sleep(0)  # the workers wait for their first request
        interval = 1e9 / plan.rate
        self.began = self.clock()
        self.deadline = self.began + int(plan.duration_s * 1e9)
        try:
            for number in range(self.total):
                due = self.began + round(number * interval)
                wait = due - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait / 1e9)
                self.dispatch((number, due))
        finally:
            self.dispatching = False
            while self.idle:
                waiter = self.idle.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        while self.workers:  # in flight: bounded by the timeout; backlog: sent or dropped
            await asyncio.gather(*self.workers, return_exceptions=True)
        return self.result(_cpu_seconds() - cpu_before)

    def result(self, cpu_s: float) -> OpenLoopResult:
        tally, plan, ok = self.tally, self.plan, self.ok
        start = self.began + round(self.warm * 1e9 / plan.rate)
        elapsed = max(self.last_done - start, 1) / 1e9 if tally.requests else 0.0
        result = LoadResult(
            concurrency=self.peak,
            requests=tally.requests,
            ok=ok,
            elapsed_s=elapsed,
            throughput=ok / elapsed if ok else 0.0,
            latency=LatencySummary.from_histogram(self.latency),
            status_errors=dict(tally.status_errors),
            transport_errors=dict(tally.transport_errors),
            warmup_requests=tally.warmup,
            cpu_s=cpu_s,
            mean_body_bytes=tally.body_bytes / ok if ok else 0.0,
            statuses=dict(tally.statuses),
        )
        encoded = self.latency.encode() if ok else b""
        return OpenLoopResult(
            rate=plan.rate,
            result=result,
            scheduled=self.total - self.warm,
            dropped=self.dropped,
            late=self.late,
            waited=self.waited,
            initial_connections=plan.connections,
            peak_connections=self.peak,
            send_lag=LatencySummary.from_histogram(self.lag),
            service=LatencySummary.from_histogram(self.service),
            histogram=encoded.decode() if isinstance(encoded, bytes) else str(encoded),
        )


async def run_open_loop(plan: OpenLoopPlan, factory: RequestFactory) -> OpenLoopResult:
    """Send request `n` at `n / plan.rate` seconds after the start, whatever the server does;
    latency from that scheduled time (see `OpenLoopPlan` for connections and drops)."""
    return await _OpenLoop(plan, factory).run()
