"""Rate limits (audit F15, DESIGN §4): per client IP, per user, per login email and address, per
booking user; 429 problem+json with `Retry-After` and `RateLimit-*`; Redis-backed, so two API
processes share one budget.

Each test builds its own app with tight limits (the shared test app has them out of the way) and
picks its own client addresses, which `httpx.ASGITransport(client=...)` hands to the app as the
peer address: no network traffic involved.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import time
from typing import Any

import httpx
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.auth import service as auth_service
from app.kit.db import Database
from app.kit.rate_limit import Policies
from app.kit.security import Passwords
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import TEST_PASSWORD, Accounts, make_settings, running_app
from tests.fixtures.booking import Booking, local_instant, next_local_day
from tests.fixtures.problems import assert_problem

READ = "/v1/specialties"  # an anonymous read that goes through routing, the DB and the cache


def limited_app(settings: Settings, **limits: Any) -> AbstractAsyncContextManager[FastAPI]:
    """An app on the test database and Redis with these rate-limit settings (the others loose)."""
    return running_app(make_settings(settings.database_url, settings.redis_url, **limits))


def client_at(app: FastAPI, host: str) -> httpx.AsyncClient:
    """A client whose requests the app sees as coming from `host`."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(host, 40_000))
    return httpx.AsyncClient(transport=transport, base_url="http://carebook.test")


def new_address() -> str:
    """A client address no other test uses (budgets live in the shared Redis)."""
    a, b, c = uuid.uuid4().bytes[:3]
    return f"10.{a}.{b}.{max(c, 1)}"


def default(field: str) -> Any:
    return Settings.model_fields[field].default


def assert_rate_limited(response: httpx.Response, *, rate: float, limit: int) -> int:
    """A 429 problem for one request over the burst of a policy of `rate` per second: its
    Retry-After is at most the policy's interval (the time one request's worth takes to refill;
    less when the burst was spent slowly, e.g. by logins that each hash a password)."""
    assert response.status_code == 429, f"expected 429, got {response.status_code}: {response.text}"
    assert_problem(response, 429, "rate_limited")
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), f"Retry-After is whole seconds, not {retry_after!r}"
    expected = math.ceil(1 / rate)
    assert 1 <= int(retry_after) <= expected, (retry_after, expected)
    # The refusing policy's RateLimit-* fields are there (whether they are the only ones is
    # test_a_refusal_carries_one_consistent_set_of_ratelimit_fields).
    assert str(limit) in response.headers.get_list("RateLimit-Limit")
    assert "0" in response.headers.get_list("RateLimit-Remaining")
    resets = response.headers.get_list("RateLimit-Reset")
    assert resets
    assert all(reset.isdigit() for reset in resets)
    assert max(int(reset) for reset in resets) >= 1
    return int(retry_after)


async def create_user(app: FastAPI, email: str) -> None:
    """A patient straight through the auth service: no login, so no login budget spent."""
    database: Database = app.state.database
    passwords: Passwords = app.state.passwords
    async with database.unit_of_work() as session:
        await auth_service.create_account(
            session,
            passwords,
            email=email,
            password=TEST_PASSWORD,
            full_name="Rate Limited",
            role=Role.PATIENT,
        )


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/v1/auth/token", json={"email": email, "password": password})


# --- per client IP -------------------------------------------------------------------------


async def test_per_ip_burst_then_429_with_retry_after(
    settings: Settings, database: Database
) -> None:
    rate, burst = 0.5, 3
    noisy, quiet = new_address(), new_address()
    async with limited_app(
        settings, rate_limit_ip_per_second=rate, rate_limit_ip_burst=burst
    ) as app:
        async with client_at(app, noisy) as client:
            remaining = []
            for _ in range(burst):
                response = await client.get(READ)
                assert response.status_code == 200, response.text
                assert response.headers["RateLimit-Limit"] == str(burst)
                assert int(response.headers["RateLimit-Reset"]) >= 1
                remaining.append(int(response.headers["RateLimit-Remaining"]))
            assert remaining == list(range(burst - 1, -1, -1)), "Remaining counts down"

            refused = await client.get(READ)
            assert_rate_limited(refused, rate=rate, limit=burst)
            # Limited before routing: an unknown path is refused too, not a 404.
            assert (await client.get("/v1/no-such-thing")).status_code == 429

            # Probes are exempt, however often they are called.
            for _ in range(burst + 2):
                live = await client.get("/health/live")
                assert live.status_code == 200
                assert "RateLimit-Remaining" not in live.headers
                assert (await client.get("/health/ready")).status_code == 200
            assert (await client.get(READ)).status_code == 429, "still limited"

        async with client_at(app, quiet) as other:
            response = await other.get(READ)
            assert response.status_code == 200, "another address has its own budget"
            assert response.headers["RateLimit-Remaining"] == str(burst - 1)


async def test_allowed_again_after_waiting_out_retry_after(
    settings: Settings, database: Database
) -> None:
    rate, burst = 1.0, 2  # a request's worth refills every second: slow enough for a busy CI
    async with (
        limited_app(settings, rate_limit_ip_per_second=rate, rate_limit_ip_burst=burst) as app,
        client_at(app, new_address()) as client,
    ):
        for _ in range(burst):
            assert (await client.get(READ)).status_code == 200
        refused = await client.get(READ)
        retry_after = assert_rate_limited(refused, rate=rate, limit=burst)
        await asyncio.sleep(retry_after)
        again = await client.get(READ)
        assert again.status_code == 200, again.text


# --- per user --------------------------------------------------------------------------------


async def test_per_user_budgets_are_separate(settings: Settings, database: Database) -> None:
    """Two users behind one address (generous per-IP limit): each has a budget of their own,
    and anonymous requests from that address are charged to no user."""
    rate, burst = 0.5, 3
    async with (
        limited_app(settings, rate_limit_user_per_second=rate, rate_limit_user_burst=burst) as app,
        client_at(app, new_address()) as client,
    ):
        accounts = Accounts(app, client)
        alice = await accounts.create(Role.PATIENT)
        bob = await accounts.create(Role.PATIENT)
        carol = await accounts.create(Role.PATIENT)

        for _ in range(burst):
            me = await client.get("/v1/me", headers=alice.headers)
            assert me.status_code == 200, me.text
        assert_rate_limited(
            await client.get("/v1/me", headers=alice.headers), rate=rate, limit=burst
        )
        # Any authenticated endpoint draws on the same per-user budget.
        refused = await client.get("/v1/appointments", headers=alice.headers)
        assert_rate_limited(refused, rate=rate, limit=burst)

        for _ in range(burst):
            me = await client.get("/v1/me", headers=bob.headers)
            assert me.status_code == 200, "Alice's budget is not Bob's"
            assert me.json()["id"] == str(bob.id)
        assert_rate_limited(await client.get("/v1/me", headers=bob.headers), rate=rate, limit=burst)

        # Anonymous requests: not limited by (nor charged to) any user's budget.
        for _ in range(2 * burst):
            assert (await client.get(READ)).status_code == 200
        for _ in range(burst):
            assert (await client.get("/v1/me", headers=carol.headers)).status_code == 200
        assert (await client.get("/v1/me", headers=carol.headers)).status_code == 429


# --- login ------------------------------------------------------------------------------------


async def test_login_is_limited_per_email_even_with_the_right_password(
    settings: Settings, database: Database
) -> None:
    per_minute = default("rate_limit_login_per_minute")  # the shipped default, about 10
    assert per_minute <= 10
    async with (
        limited_app(settings, rate_limit_login_per_minute=per_minute) as app,
        client_at(app, new_address()) as client,
    ):
        target, bystander = (f"{n}-{uuid.uuid4().hex[:8]}@example.com" for n in ("t", "b"))
        await create_user(app, target)
        await create_user(app, bystander)

        for attempt in range(per_minute):
            if attempt % 2:
                assert (await login(client, target, TEST_PASSWORD)).status_code == 200
            else:
                wrong = await login(client, target, "not the password")
                assert_problem(wrong, 401, "invalid_credentials")

        # The (N+1)-th attempt within the minute, right password, the email in other case.
        refused = await login(client, target.upper(), TEST_PASSWORD)
        assert_rate_limited(refused, rate=per_minute / 60, limit=per_minute)
        assert "access_token" not in refused.text

        other = await login(client, bystander, TEST_PASSWORD)
        assert other.status_code == 200, "another email is unaffected"


async def test_login_is_limited_per_address_across_emails(
    settings: Settings, database: Database
) -> None:
    per_minute = 5
    sprayer = new_address()
    async with limited_app(settings, rate_limit_login_ip_per_minute=per_minute) as app:
        email = f"sprayed-{uuid.uuid4().hex[:8]}@example.com"
        await create_user(app, email)
        async with client_at(app, sprayer) as client:
            for n in range(per_minute):
                guess = await login(client, f"guess-{n}-{uuid.uuid4().hex[:6]}@example.com", "x")
                assert_problem(guess, 401, "invalid_credentials")
            refused = await login(client, email, TEST_PASSWORD)
            assert_rate_limited(refused, rate=per_minute / 60, limit=per_minute)
            # The address, not the route, is limited: other requests from it still work.
            assert (await client.get(READ)).status_code == 200
        async with client_at(app, new_address()) as elsewhere:
            assert (await login(elsewhere, email, TEST_PASSWORD)).status_code == 200


# --- booking ----------------------------------------------------------------------------------


async def test_booking_is_limited_per_user(settings: Settings, database: Database) -> None:
    per_minute = 2
    async with (
        limited_app(settings, rate_limit_booking_per_minute=per_minute) as app,
        client_at(app, new_address()) as client,
    ):
        accounts = Accounts(app, client)
        booking = Booking(app, client, accounts)
        provider = await booking.provider(slot_minutes=60)
        eager = await accounts.create(Role.PATIENT)
        patient = await accounts.create(Role.PATIENT)
        day = next_local_day(provider.timezone)
        slots = [local_instant(day, time(hour, 0), provider.timezone) for hour in (9, 10, 11)]

        for start in slots[:per_minute]:
            booked = await booking.book(eager, provider, start)
            assert booked.status_code == 201, booked.text
        refused = await booking.book(eager, provider, slots[per_minute])
        assert_rate_limited(refused, rate=per_minute / 60, limit=per_minute)

        mine = await client.get("/v1/appointments", headers=eager.headers)
        assert mine.status_code == 200, "reads are not limited by the booking budget"
        assert len(mine.json()["items"]) == per_minute, "the refused booking was not made"

        other = await booking.book(patient, provider, slots[per_minute])
        assert other.status_code == 201, "another user's bookings are unaffected"


async def test_a_refusal_carries_one_consistent_set_of_ratelimit_fields(
    settings: Settings, database: Database
) -> None:
    """A 429 from a per-user, login or booking policy describes that policy, once: not also the
    per-IP budget's (contradictory) values under the same field names."""
    async with (
        limited_app(
            settings,
            rate_limit_user_per_second=0.5,
            rate_limit_user_burst=1,
            rate_limit_login_per_minute=1,
        ) as app,
        client_at(app, new_address()) as client,
    ):
        email = f"once-{uuid.uuid4().hex[:8]}@example.com"
        await create_user(app, email)
        signed_in = await login(client, email, TEST_PASSWORD)
        assert signed_in.status_code == 200, signed_in.text
        headers = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
        assert (await client.get("/v1/me", headers=headers)).status_code == 200

        for refused, limit in (
            (await login(client, email, TEST_PASSWORD), 1),
            (await client.get("/v1/me", headers=headers), 1),
        ):
            assert refused.status_code == 429, refused.text
            fields = {
                name: refused.headers.get_list(name)
                for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
            }
            assert fields["RateLimit-Limit"] == [str(limit)], fields
            assert fields["RateLimit-Remaining"] == ["0"], fields
            assert len(fields["RateLimit-Reset"]) == 1, fields
            assert int(fields["RateLimit-Reset"][0]) >= 1, fields


# --- Redis-backed: one budget across API processes --------------------------------------------


async def test_two_instances_share_one_budget(settings: Settings, database: Database) -> None:
    rate, burst = 0.5, 4
    limits = {"rate_limit_ip_per_second": rate, "rate_limit_ip_burst": burst}
    address = new_address()
    async with (
        limited_app(settings, **limits) as first,
        limited_app(settings, **limits) as second,
        client_at(first, address) as a,
        client_at(second, address) as b,
    ):
        remaining = []
        for client in (a, b, a, b):
            response = await client.get(READ)
            assert response.status_code == 200, response.text
            remaining.append(int(response.headers["RateLimit-Remaining"]))
        assert remaining == [3, 2, 1, 0], "each instance sees what the other spent"
        assert_rate_limited(await a.get(READ), rate=rate, limit=burst)
        assert_rate_limited(await b.get(READ), rate=rate, limit=burst)


# --- the shipped defaults ---------------------------------------------------------------------


def test_default_limits_leave_room_for_nat_and_are_tight_on_login_and_booking() -> None:
    policies = Policies.from_settings(Settings.model_validate({}))
    assert policies.per_ip.rate >= 100, "a clinic behind one NAT address"
    for per_email in (policies.login_per_client, policies.login_per_device):
        assert per_email.rate * 60 <= 10
        assert per_email.burst <= 10
    # The ceiling across clients is looser in burst, tighter in sustained rate (ADR 0007).
    ceiling = policies.login_per_email
    assert ceiling.burst > policies.login_per_client.burst
    assert ceiling.rate < policies.login_per_client.rate
    for tight in (
        policies.login_per_client,
        policies.login_per_device,
        ceiling,
        policies.login_per_ip,
        policies.booking_per_user,
    ):
        assert tight.rate < policies.per_user.rate <= policies.per_ip.rate


# --- switched off -----------------------------------------------------------------------------


async def test_no_ratelimit_fields_while_limiting_is_off(
    settings: Settings, database: Database
) -> None:
    """`CAREBOOK_RATE_LIMIT_ENABLED=false` (benchmarks): nothing is limited, so no response
    describes a limit."""
    async with (
        limited_app(
            settings,
            rate_limit_enabled=False,
            rate_limit_ip_per_second=0.01,
            rate_limit_ip_burst=1,
            rate_limit_login_per_minute=1,
        ) as app,
        client_at(app, new_address()) as client,
    ):
        email = f"off-{uuid.uuid4().hex[:8]}@example.com"
        await create_user(app, email)
        responses = [await client.get(READ) for _ in range(3)]
        responses += [await login(client, email, TEST_PASSWORD) for _ in range(3)]
        responses.append(await login(client, email, "wrong"))
        assert [r.status_code for r in responses] == [200] * 6 + [401]
        for response in responses:
            assert not [name for name in response.headers if name.lower().startswith("ratelimit")]


# --- the client address: no proxy is believed unless configured -------------------------------


def behind_uvicorn_proxy_headers(app: FastAPI, trusted: str, peer: str) -> httpx.AsyncClient:
    """A client at `peer` whose requests pass uvicorn's X-Forwarded-For handling, as
    `carebook serve` sets it up (`proxy_headers=True, forwarded_allow_ips=<setting>`)."""
    wrapped: Any = ProxyHeadersMiddleware(app, trusted_hosts=trusted)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False, client=(peer, 40_000))
    return httpx.AsyncClient(transport=transport, base_url="http://carebook.test")


async def test_a_local_client_cannot_pick_its_address_by_default(
    settings: Settings, database: Database
) -> None:
    """Issue 12: with the old default (127.0.0.1 trusted) any local process could send a fresh
    X-Forwarded-For per request and never run out of per-IP budget."""
    trusted = Settings.model_fields["forwarded_allow_ips"].default
    assert trusted == ""
    burst = 2
    async with (
        limited_app(settings, rate_limit_ip_per_second=0.01, rate_limit_ip_burst=burst) as app,
        behind_uvicorn_proxy_headers(app, trusted, "127.0.0.1") as client,
    ):
        await app.state.redis.delete("cb:rl:ip:127.0.0.1")  # other tests' loopback spending
        statuses = [
            (await client.get(READ, headers={"X-Forwarded-For": new_address()})).status_code
            for _ in range(burst + 1)
        ]
        assert statuses == [200] * burst + [429], "every forged address is the loopback's"


async def test_a_configured_proxy_is_believed(settings: Settings, database: Database) -> None:
    burst = 2
    proxy, first, second = new_address(), new_address(), new_address()
    async with (
        limited_app(settings, rate_limit_ip_per_second=0.01, rate_limit_ip_burst=burst) as app,
        behind_uvicorn_proxy_headers(app, proxy, proxy) as client,
    ):
        for _ in range(burst):
            ok = await client.get(READ, headers={"X-Forwarded-For": first})
            assert ok.status_code == 200, ok.text
        refused = await client.get(READ, headers={"X-Forwarded-For": first})
        assert refused.status_code == 429
        other = await client.get(READ, headers={"X-Forwarded-For": second})
        assert other.status_code == 200, "the proxy's clients have budgets of their own"
