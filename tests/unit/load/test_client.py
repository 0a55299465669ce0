"""Unit tests for the load generator (load.client) and the runner's pure helpers (load.bench):
the HTTP/1.1 response parser, percentile maths, and runs against a tiny asyncio server on
127.0.0.1 (Content-Length and chunked bodies, keep-alive reuse, error statuses, bounds)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from load.bench import redact
from load.client import (
    ConnectionClosed,
    LatencySummary,
    LoadPlan,
    LoadResult,
    ProtocolError,
    ResponseParser,
    build_request,
    cycle_requests,
    fetch,
    merge_results,
    percentile,
    require_loopback,
    run_calls,
    run_load,
)
from load.medians import median_run
from load.report import BEGIN_MARK, END_MARK, write_report
from load.runs import ScenarioRun
from load.servers import hit_rate, log_problems, parse_cache_counters
from tests.unit.load.loopback import serving

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"4\r\nWiki\r\n6;name=value\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\n\r\n"
)
CHUNKED_BODY = b"Wikipedia in \r\n\r\nchunks."


# --- the parser ---------------------------------------------------------------------------------


def test_content_length_response_fed_byte_by_byte() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello"
    parser = ResponseParser()
    done = []
    for index in range(len(raw)):
        done += parser.feed(raw[index : index + 1])
    assert len(done) == 1
    response = done[0]
    assert (response.status, response.reason, response.body) == (200, "OK", b"hello")
    assert response.headers["x-a"] == "1, 2"
    assert response.keep_alive
    assert parser.idle


def test_chunked_response_with_extensions_and_trailers() -> None:
    parser = ResponseParser()
    first, second = CHUNKED[:70], CHUNKED[70:]
    assert parser.feed(first) == []
    (response,) = parser.feed(second)
    assert response.body == CHUNKED_BODY
    assert parser.idle


def test_chunked_response_split_inside_the_crlf_after_a_chunk() -> None:
    parser = ResponseParser()
    cut = CHUNKED.index(b"Wiki") + 5  # between the chunk's CR and LF
    assert parser.feed(CHUNKED[:cut]) == []
    (response,) = parser.feed(CHUNKED[cut:])
    assert response.body == CHUNKED_BODY


def test_two_pipelined_responses_in_one_feed() -> None:
    raw = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
    first, second = ResponseParser().feed(raw)
    assert (first.status, first.body) == (204, b"")
    assert (second.status, second.reason, second.body) == (404, "Not Found", b"no")


def test_interim_100_continue_is_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"
    (response,) = ResponseParser().feed(raw)
    assert (response.status, response.body) == (201, b"{}")


def test_body_to_end_of_connection() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ") == []
    assert parser.feed(b"part two") == []
    response = parser.eof()
    assert response is not None
    assert response.body == b"part one, part two"
    assert not response.keep_alive


def test_connection_close_and_http_1_0_are_not_kept_alive() -> None:
    (closing,) = ResponseParser().feed(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    (old,) = ResponseParser().feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not closing.keep_alive
    assert not old.keep_alive


def test_eof_in_the_middle_of_a_response_is_an_error() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(ConnectionClosed):
        parser.eof()
    assert ResponseParser().eof() is None


@pytest.mark.parametrize(
    "raw",
    [
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
    ],
)
def test_malformed_responses_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(raw)


# --- requests and percentiles -------------------------------------------------------------------


def test_build_request_with_query_and_json_body() -> None:
    raw = build_request(
        "post",
        "/v1/things",
        port=8123,
        params={"specialty": "General Practice", "from": "2026-11-22"},
        headers={"Idempotency-Key": "k1"},
        json_body={"a": 1},
    )
    head, body = raw.split(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/things?specialty=General%20Practice&from=2026-11-22 HTTP/1.1"
    assert "Host: 127.0.0.1:8123" in lines
    assert "Content-Length: 7" in lines
    assert "Content-Type: application/json" in lines
    assert "Idempotency-Key: k1" in lines
    assert body == b'{"a":1}'
    assert build_request("GET", "/x", port=1).endswith(b"Host: 127.0.0.1:1\r\n\r\n")


def test_only_loopback_is_accepted() -> None:
    assert require_loopback("127.0.0.1") == "127.0.0.1"
    for host in ("127.0.0.2", "0.0.0.0", "10.0.0.1", "::1", ""):  # noqa: S104
        with pytest.raises(ValueError, match="only targets"):
            require_loopback(host)
        with pytest.raises(ValueError, match="only targets"):
            LoadPlan(port=80, host=host)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"duration_s": 0}, "positive"),
        ({"max_requests": 0}, "positive"),
        ({"warmup_s": 5.0, "duration_s": 5.0}, "warm-up"),
        ({"warmup_share": 1.0}, "warmup_share"),
    ],
)
def test_plans_must_be_bounded(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoadPlan(port=80, **changes)  # type: ignore[arg-type]


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2  # ceil(0.5 * 4) = 2nd value
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3
    assert percentile([], 50) == 0
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile(values, 101)


def test_latency_summary_from_nanoseconds() -> None:
    samples = [ms * 1_000_000 for ms in (5, 1, 3, 2, 4)]  # unsorted on purpose
    summary = LatencySummary.from_ns(samples)
    assert (summary.p50, summary.p95, summary.p99, summary.max) == (3.0, 5.0, 5.0, 5.0)
    assert summary.mean == pytest.approx(3.0)
    assert LatencySummary.from_ns([]) == LatencySummary(0.0, 0.0, 0.0, 0.0, 0.0)


def test_cycle_requests_round_robin() -> None:
    factory = cycle_requests([b"a", b"b", b"c"])
    assert [factory(n) for n in range(7)] == [b"a", b"b", b"c", b"a", b"b", b"c", b"a"]
    with pytest.raises(ValueError, match="at least one"):
        cycle_requests([])


# --- runs against a tiny server -----------------------------------------------------------------


@dataclass
class TinyServer:
    """An HTTP/1.1 server on 127.0.0.1 that counts connections and requests."""

    port: int = 0
    connections: int = 0
    requests: int = 0
    paths: list[str] = field(default_factory=list)
    connections_at_first_request: int | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if self.connections_at_first_request is None:
                    self.connections_at_first_request = self.connections
                self.requests += 1
                self.paths.append(path)
                writer.write(self.respond(path, body))
                await writer.drain()
                if path == "/close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def respond(path: str, body: bytes) -> bytes:
        if path == "/chunked":
            return CHUNKED
        if path.startswith("/status/"):
            code = int(path.removeprefix("/status/"))
            return f"HTTP/1.1 {code} Oops\r\nContent-Length: 4\r\n\r\noops".encode()
        if path == "/close":
            return b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye"
        if path == "/echo":
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


@pytest.fixture
async def tiny() -> AsyncIterator[TinyServer]:
    state = TinyServer()
    async with serving(state.handle) as port:
        state.port = port
        yield state


def get(tiny: TinyServer, path: str) -> bytes:
    return build_request("GET", path, port=tiny.port)


async def test_fetch_reads_both_body_framings(tiny: TinyServer) -> None:
    response = await fetch(tiny.port, get(tiny, "/length"))
    assert (response.status, response.body) == (200, b"hello")
    chunked = await fetch(tiny.port, get(tiny, "/chunked"))
    assert chunked.body == CHUNKED_BODY
    echoed = await fetch(tiny.port, build_request("POST", "/echo", port=tiny.port, json_body=[1]))
    assert echoed.body == b"[1]"


async def test_workers_reuse_their_keep_alive_connection(tiny: TinyServer) -> None:
    plan = LoadPlan(port=tiny.port, concurrency=4, duration_s=10, max_requests=200, warmup_s=0)
    result = await run_load(plan, cycle_requests([get(tiny, "/length"), get(tiny, "/chunked")]))
    assert tiny.requests == 200  # the budget, not the duration, ended the run
    assert tiny.connections == 4  # one connection per worker, reused
    assert (result.requests, result.ok, result.errors, result.warmup_requests) == (200, 200, 0, 0)
    assert result.throughput > 0
    assert 0 < result.latency.p50 <= result.latency.p95 <= result.latency.p99 <= result.latency.max
    assert result.mean_body_bytes == pytest.approx((5 + len(CHUNKED_BODY)) / 2)
    assert result.cpu_s >= 0
    assert result.error_summary() == "0"


async def test_error_statuses_are_counted_apart_from_successes(tiny: TinyServer) -> None:
    requests = [get(tiny, "/length"), get(tiny, "/status/503"), get(tiny, "/status/404")]
    plan = LoadPlan(port=tiny.port, concurrency=3, duration_s=10, max_requests=90, warmup_s=0)
    result = await run_load(plan, cycle_requests(requests))
    assert result.requests == 90
    assert result.ok == 30
    assert result.status_errors == {503: 30, 404: 30}
    assert result.transport_errors == {}
    assert result.error_summary() == "60 (HTTP 404 x30, HTTP 503 x30)"
    assert tiny.connections == 3  # error statuses keep the connection


async def test_connection_close_responses_reconnect(tiny: TinyServer) -> None:
    plan = LoadPlan(port=tiny.port, concurrency=2, duration_s=10, max_requests=20, warmup_s=0)
    result = await run_load(plan, cycle_requests([get(tiny, "/close")]))
    assert (result.ok, result.errors) == (20, 0)
    assert tiny.connections == 20


async def test_transport_errors_are_counted_and_the_duration_ends_the_run() -> None:
    port = unused_port()
    plan = LoadPlan(port=port, concurrency=2, duration_s=0.3, max_requests=10**9, warmup_s=0)
    began = time.monotonic()
    result = await run_load(plan, cycle_requests([build_request("GET", "/", port=port)]))
    assert time.monotonic() - began < 30  # the request budget alone would run for hours
    assert result.ok == 0
    assert result.throughput == 0
    assert result.status_errors == {}
    assert set(result.transport_errors) == {"ConnectionRefusedError"}
    assert result.errors == result.requests > 0


async def test_warm_up_is_excluded_and_the_duration_bounds_the_run(tiny: TinyServer) -> None:
    plan = LoadPlan(port=tiny.port, concurrency=2, duration_s=0.6, max_requests=10**9, warmup_s=0.2)
    began = time.monotonic()
    result = await run_load(plan, cycle_requests([get(tiny, "/length")]))
    assert time.monotonic() - began < 30  # the request budget alone would run for hours
    assert result.warmup_requests > 0
    assert result.requests > 0
    assert result.requests + result.warmup_requests == tiny.requests
    assert 0.3 < result.elapsed_s < 30  # measured after the warm-up, bounded by the duration


async def test_warm_up_also_ends_after_a_share_of_the_budget(tiny: TinyServer) -> None:
    plan = LoadPlan(port=tiny.port, concurrency=1, duration_s=30, max_requests=100, warmup_s=20)
    result = await run_load(plan, cycle_requests([get(tiny, "/length")]))
    assert (result.warmup_requests, result.requests) == (10, 90)


async def test_the_request_factory_sees_every_sequence_number(tiny: TinyServer) -> None:
    seen: list[int] = []

    def factory(number: int) -> bytes:
        seen.append(number)
        return get(tiny, f"/length?n={number}")

    plan = LoadPlan(port=tiny.port, concurrency=5, duration_s=10, max_requests=50, warmup_s=0)
    await run_load(plan, factory)
    assert sorted(seen) == list(range(50))
    assert sorted(tiny.paths) == sorted(f"/length?n={n}" for n in range(50))


async def test_expected_statuses_are_answers_not_errors(tiny: TinyServer) -> None:
    plan = LoadPlan(
        port=tiny.port,
        concurrency=2,
        duration_s=10,
        max_requests=40,
        warmup_s=0,
        expected_statuses=frozenset({409}),
    )
    requests = [get(tiny, "/length"), get(tiny, "/status/409"), get(tiny, "/status/500")]
    result = await run_load(plan, cycle_requests(requests))
    assert result.statuses == {200: 14, 409: 13, 500: 13}
    assert result.ok == 27  # the 409s count with the 200s ...
    assert result.status_errors == {500: 13}  # ... and anything else is still an error
    assert len(result.samples_ns) == 27


async def test_open_first_connects_every_worker_before_any_request(tiny: TinyServer) -> None:
    plan = LoadPlan(
        port=tiny.port, concurrency=12, duration_s=10, max_requests=12, warmup_s=0, open_first=True
    )
    result = await run_load(plan, cycle_requests([get(tiny, "/length")]))
    assert tiny.connections_at_first_request == 12
    assert (result.requests, result.ok) == (12, 12)


async def test_run_calls_counts_statuses_and_exceptions_within_the_budget() -> None:
    seen: list[int] = []

    async def call(number: int) -> int:
        seen.append(number)
        if number % 5 == 4:
            raise LookupError("boom")
        await asyncio.sleep(0)
        return 201 if number % 5 else 409

    plan = LoadPlan(port=0, concurrency=3, duration_s=10, max_requests=50, warmup_s=0)
    result = await run_calls(plan, call)
    assert sorted(seen) == list(range(50))  # every number once, never beyond the budget
    assert result.statuses == {201: 30, 409: 10}
    assert result.status_errors == {409: 10}
    assert result.transport_errors == {"LookupError": 10}
    assert result.ok == 30


def test_merge_results_pools_samples_and_adds_counts() -> None:
    def one(samples: list[int], statuses: dict[int, int]) -> LoadResult:
        return LoadResult(
            concurrency=4,
            requests=len(samples),
            ok=len(samples),
            elapsed_s=1.0,
            throughput=float(len(samples)),
            latency=LatencySummary.from_ns(samples),
            status_errors={},
            transport_errors={},
            warmup_requests=0,
            cpu_s=0.25,
            mean_body_bytes=10.0,
            statuses=statuses,
            samples_ns=tuple(samples),
        )

    merged = merge_results([one([1_000_000] * 3, {201: 1, 409: 2}), one([9_000_000], {201: 1})])
    assert (merged.requests, merged.ok, merged.elapsed_s) == (4, 4, 2.0)
    assert merged.throughput == 2.0
    assert merged.statuses == {201: 2, 409: 2}
    assert merged.latency.max == 9.0
    assert merged.latency.p50 == 1.0
    assert merged.cpu_s == 0.5
    with pytest.raises(ValueError, match="nothing"):
        merge_results([])


def unused_port() -> int:
    """A 127.0.0.1 port with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- the runner's helpers -----------------------------------------------------------------------

METRICS = """\
# HELP carebook_cache_requests_total Response-cache lookups by cache and result (hit, miss).
# TYPE carebook_cache_requests_total counter
carebook_cache_requests_total{cache="availability",result="hit"} 90.0
carebook_cache_requests_total{cache="availability",result="miss"} 10.0
carebook_cache_requests_total{cache="catalog",result="hit"} 5.0
# HELP carebook_cache_requests_created Response-cache lookups by cache and result (hit, miss).
carebook_cache_requests_created{cache="availability",result="hit"} 1.7e+09
"""


def test_cache_counters_and_hit_rate() -> None:
    after = parse_cache_counters(METRICS, "availability")
    assert after == {"hit": 90.0, "miss": 10.0}
    assert parse_cache_counters(METRICS, "catalog") == {"hit": 5.0}
    assert hit_rate({"hit": 10.0, "miss": 10.0}, after) == pytest.approx(80 / 80)
    assert hit_rate({}, after) == pytest.approx(0.9)
    assert hit_rate(after, after) is None


def test_redact_hides_passwords_only() -> None:
    assert redact("postgresql://u:secret@127.0.0.1/db") == "postgresql://u:***@127.0.0.1/db"
    assert redact("redis://127.0.0.1:6379/9") == "redis://127.0.0.1:6379/9"


def test_write_report_keeps_text_outside_the_markers(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "benchmarks.md"
    write_report(path, "first\n")
    assert path.read_text() == f"# Benchmarks\n\n{BEGIN_MARK}\nfirst\n{END_MARK}\n"
    path.write_text(path.read_text() + "\n## Analysis\n\nhand-written\n")
    write_report(path, "second\n")
    text = path.read_text()
    assert "first" not in text
    assert f"{BEGIN_MARK}\nsecond\n{END_MARK}\n" in text
    assert text.endswith("## Analysis\n\nhand-written\n")


def _run(throughput: float, p99: float, rate: float | None) -> ScenarioRun:
    result = LoadResult(
        concurrency=8,
        requests=int(throughput),
        ok=int(throughput),
        elapsed_s=1.0,
        throughput=throughput,
        latency=LatencySummary(1.0, 2.0, p99, p99, 1.0),
        status_errors={},
        transport_errors={"TimeoutError": 1},
        warmup_requests=0,
        cpu_s=0.5,
        mean_body_bytes=100.0,
    )
    return ScenarioRun("s", 1, result, 1.0, cache_hit_rate=rate)


def test_median_run_takes_column_medians_and_sums_errors() -> None:
    median = median_run([_run(100, 9, 0.9), _run(300, 1, None), _run(200, 5, 0.7)])
    assert median.result.throughput == 200
    assert median.result.latency.p99 == 5
    assert median.cache_hit_rate == pytest.approx(0.8)
    assert median.result.transport_errors == {"TimeoutError": 3}


def test_log_problems_counts_warnings_and_errors_by_message() -> None:
    text = "\n".join(
        [
            "INFO:     Started server process [1]",
            '{"level": "warning", "logger": "carebook.cache", "message": "redis call failed"}',
            '{"level": "warning", "logger": "carebook.cache", "message": "redis call failed"}',
            '{"level": "warning", "message": "redis call failed", "error": "ConnectionError"}',
            '{"level": "info", "logger": "carebook.access", "message": "request"}',
            '{"level": "error", "logger": "carebook.errors", "message": "unhandled error"}',
            "ERROR:    Exception in ASGI application",
            "{not json",
        ]
    )
    assert log_problems(text) == {
        "redis call failed": 2,
        "redis call failed (ConnectionError)": 1,
        "unhandled error": 1,
        "Exception in ASGI application": 1,
    }
