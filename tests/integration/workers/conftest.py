"""The fakes of the third parties the worker calls, and a clinic to book visits in."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.integrations.fakes import FakeFcm, FakeVideoSdk
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking
from tests.fixtures.redis_server import PrivateRedis
from tests.fixtures.worker import Clinic


@pytest.fixture
async def video() -> AsyncIterator[FakeVideoSdk]:
    async with FakeVideoSdk() as fake:
        yield fake


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    async with FakeFcm() as fake:
        yield fake


@pytest.fixture
def clinic(booking: Booking, accounts: Accounts, client: httpx.AsyncClient) -> Clinic:
    return Clinic(booking, accounts, client)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis of the test's own, to kill and restart empty."""
    directory = Path(tempfile.mkdtemp(prefix="cb-kr-"))  # short: a Unix socket lives in it
    redis = PrivateRedis(directory)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()
        shutil.rmtree(directory, ignore_errors=True)
