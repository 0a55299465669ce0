"""The open-loop mode of the load generator (`run_open_loop`): requests are scheduled at a fixed
rate whatever the server does, latency runs from the scheduled time, and every scheduled request
is accounted for (an answer, an error or a drop). Counts are checked exactly; times only from
below (a busy machine makes things slower, never faster)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hdrh.histogram import HdrHistogram

from load.client import OpenLoopPlan, OpenLoopResult, build_request, run_open_loop
from tests.unit.load.loopback import serving


@dataclass
class SlowServer:
    """HTTP/1.1 on 127.0.0.1 answering `GET /sleep/<ms>` after that many milliseconds and
    `GET /status/<code>` at once; counts requests and the most connections open at once."""

    port: int = 0
    requests: int = 0
    open: int = 0
    peak: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests += 1
                _, kind, value = path.split("/")
                status = 200
                if kind == "sleep":
                    await asyncio.sleep(int(value) / 1000)
                else:
                    status = int(value)
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    def get(self, path: str) -> bytes:
        return build_request("GET", path, port=self.port)


@pytest.fixture
async def slow() -> AsyncIterator[SlowServer]:
    state = SlowServer()
    async with serving(state.handle) as port:
        state.port = port
        yield state


def _accounted(run: OpenLoopResult) -> None:
    """Every measured scheduled request is an answer, an error or a drop."""
    result = run.result
    assert result.requests == result.ok + result.errors
    assert run.scheduled == result.requests + run.dropped
    assert sum(result.statuses.values()) + sum(result.transport_errors.values()) == (
        result.requests
    )


async def test_every_scheduled_request_is_sent_at_the_rate(slow: SlowServer) -> None:
    plan = OpenLoopPlan(port=slow.port, rate=200, duration_s=0.5, warmup_s=0.1, connections=8)
    assert (plan.scheduled, plan.warmup_requests) == (100, 20)
    request = slow.get("/sleep/0")
    run = await run_open_loop(plan, lambda n: request)
    assert slow.requests == 100  # the schedule, exactly: none dropped at this rate
    assert run.scheduled == 80
    assert run.result.warmup_requests == 20
    assert (run.result.ok, run.dropped, run.waited) == (80, 0, 0)
    _accounted(run)
    # The 80 measured requests were scheduled over 79 intervals of 5 ms.
    assert run.result.elapsed_s >= 79 / 200
    assert run.rate == 200
    decoded = HdrHistogram.decode(run.histogram)
    assert decoded.get_total_count() == 80


async def test_the_budget_bounds_the_schedule(slow: SlowServer) -> None:
    plan = OpenLoopPlan(port=slow.port, rate=500, duration_s=5, max_requests=30, warmup_s=0)
    assert (plan.scheduled, plan.warmup_requests) == (30, 0)
    run = await run_open_loop(plan, lambda n: slow.get("/sleep/0"))
    assert slow.requests == 30
    assert run.result.ok == 30
    _accounted(run)


async def test_latency_runs_from_the_scheduled_time_not_from_the_send(slow: SlowServer) -> None:
    # One connection, 20 ms per answer, a request every 5 ms: the server falls behind, the
    # generator does not slow down. Requests wait for the connection (counted), their wait is
    # part of their latency, and those still waiting when the time is up are dropped.
    plan = OpenLoopPlan(
        port=slow.port, rate=200, duration_s=0.5, warmup_s=0, connections=1, max_connections=1
    )
    run = await run_open_loop(plan, lambda n: slow.get("/sleep/20"))
    _accounted(run)
    assert slow.peak == 1
    assert run.waited > 0
    assert run.dropped > 0
    assert run.late > 0
    assert run.result.ok == slow.requests  # what was sent was answered
    assert run.service.p50 >= 20  # ms: the server's own time, what a closed loop would see
    assert run.result.latency.p99 > run.service.p99  # the queueing is not hidden
    assert run.send_lag.max > 0


async def test_connections_are_added_when_every_one_is_busy(slow: SlowServer) -> None:
    plan = OpenLoopPlan(
        port=slow.port, rate=100, duration_s=0.5, warmup_s=0, connections=1, max_connections=8
    )
    run = await run_open_loop(plan, lambda n: slow.get("/sleep/30"))
    _accounted(run)
    assert run.initial_connections == 1
    assert 2 <= run.peak_connections <= 8
    assert run.opened_extra == run.peak_connections - 1
    assert slow.peak <= 8


async def test_error_statuses_and_expected_statuses(slow: SlowServer) -> None:
    plan = OpenLoopPlan(port=slow.port, rate=200, duration_s=0.2, warmup_s=0, connections=4)
    failing = await run_open_loop(plan, lambda n: slow.get("/status/503"))
    _accounted(failing)
    assert failing.result.ok == 0
    assert failing.result.status_errors == {503: 40}
    expected = OpenLoopPlan(
        port=slow.port,
        rate=200,
        duration_s=0.2,
        warmup_s=0,
        connections=4,
        expected_statuses=frozenset({409}),
    )
    answered = await run_open_loop(expected, lambda n: slow.get("/status/409"))
    assert answered.result.ok == 40
    assert answered.result.errors == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate": 0}, "rate"),
        ({"connections": 9, "max_connections": 8}, "connections"),
        ({"warmup_s": 2.0, "duration_s": 1.0}, "warm-up"),
        ({"max_requests": 0}, "budget"),
    ],
)
def test_open_loop_plans_must_be_bounded(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpenLoopPlan(port=1, **{"rate": 10, **changes})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only targets"):
        OpenLoopPlan(port=1, rate=10, host="10.0.0.1")
