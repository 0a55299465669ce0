"""The latency proxy (load/latency_proxy.py): every chunk in each direction arrives at least
`delay` later, intact and in order, with many chunks on their way at once (it delays, it does
not serialise). Times are only checked from below: a busy machine can make a round trip slower,
never faster than the delay allows."""

from __future__ import annotations

import asyncio
import random
import selectors
import time
from collections.abc import AsyncIterator
from contextlib import suppress

import pytest

from load.latency_proxy import LatencyProxy, precise_event_loop, proxy_process
from tests.unit.load.loopback import serving


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """An echo server on 127.0.0.1: writes back whatever it reads."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with serving(handle) as port:
        yield port


async def _round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        began = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
        return answer, time.perf_counter() - began
    finally:
        writer.close()


async def test_a_round_trip_takes_at_least_twice_the_delay(echo: int) -> None:
    delay = 0.05
    async with LatencyProxy(echo, delay) as proxy:
        for _ in range(3):
            answer, seconds = await _round_trip(proxy.port, b"ping")
            assert answer == b"ping"
            assert seconds >= 2 * delay
        stats = proxy.stats()
    assert stats.connections == 3
    assert stats.bytes == 3 * 2 * len(b"ping")  # each way, counted exactly
    assert stats.late_chunks == stats.chunks >= 6


async def test_concurrent_connections_get_their_bytes_intact_and_in_order(echo: int) -> None:
    rng = random.Random(13)
    payloads = [[rng.randbytes(rng.randint(1, 40_000)) for _ in range(30)] for _ in range(8)]

    async def converse(port: int, chunks: list[bytes]) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        expected = sum(len(c) for c in chunks)

        async def send() -> None:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0)

        try:
            sender = asyncio.create_task(send())
            received = await asyncio.wait_for(reader.readexactly(expected), 60)
            await sender
            return received
        finally:
            writer.close()

    async with LatencyProxy(echo, 0.005) as proxy:
        answers = await asyncio.gather(*(converse(proxy.port, chunks) for chunks in payloads))
        stats = proxy.stats()
    for chunks, answer in zip(payloads, answers, strict=True):
        assert answer == b"".join(chunks)
    assert stats.connections == len(payloads)
    assert stats.bytes == 2 * sum(len(c) for chunks in payloads for c in chunks)


async def test_chunks_are_pipelined_not_serialised(echo: int) -> None:
    # Ten writes, each its own chunk, within a delay far longer than it takes to make them:
    # the proxy holds several at once instead of forwarding one per delay.
    delay = 0.5
    async with LatencyProxy(echo, delay) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            for n in range(10):
                writer.write(b"%02d" % n)
                await writer.drain()
                await asyncio.sleep(0.005)
            answer = await asyncio.wait_for(reader.readexactly(20), 60)
        finally:
            writer.close()
        stats = proxy.stats()
    assert answer == b"".join(b"%02d" % n for n in range(10))
    assert stats.max_queued >= 2
    assert stats.bytes == 40


async def test_a_refused_target_closes_the_client(echo: int) -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(closed.sockets[0].getsockname()[1])
    closed.close()
    await closed.wait_closed()
    async with LatencyProxy(port, 0.001) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"hello")
            with suppress(ConnectionResetError):  # reset when the close finds "hello" unread
                assert await asyncio.wait_for(reader.read(), 30) == b""
        finally:
            writer.close()


def test_only_loopback_and_no_negative_delay() -> None:
    with pytest.raises(ValueError, match="only targets"):
        LatencyProxy(5432, 0.001, target_host="10.0.0.1")
    with pytest.raises(ValueError, match="negative"):
        LatencyProxy(5432, -0.001)


def test_the_precise_loop_polls_with_select() -> None:
    # epoll rounds every wait up to a whole millisecond, which would turn a 0.5 ms delay into
    # about 1 ms; select() takes microseconds. Checked by kind, not by timing the machine.
    loop = precise_event_loop()
    try:
        assert isinstance(loop._selector, selectors.SelectSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()


async def test_the_proxy_process_forwards_with_the_delay_and_reports(echo: int) -> None:
    async with proxy_process(echo, 20.0) as proxy:
        answer, seconds = await _round_trip(proxy.port, b"select 1")
        assert answer == b"select 1"
        assert seconds >= 2 * 0.020
        stats = await proxy.stats()
        assert stats.bytes == 2 * len(b"select 1")
        assert stats.connections == 1
        assert stats.late_chunks >= 2
        again = await proxy.stats()  # lateness resets at each snapshot, counters do not
        assert again.late_chunks == 0
        assert again.bytes == stats.bytes
    assert proxy.process.returncode is not None
