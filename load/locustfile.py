"""The mixed scenario for Locust users: 80 % reads, 15 % bookings, 5 % cancellations.

    pip install -e ".[locust]"
    carebook serve --host 127.0.0.1 --port 8000     # against a `carebook seed --scale N` dataset
    locust -f load/locustfile.py --host http://127.0.0.1:8000 --headless \\
        --users 64 --spawn-rate 16 --run-time 60s --stop-timeout 10

Each simulated user logs in as its own patient of the scale dataset (`patient000001@…`, the
password `LOAD_PASSWORD` of `app/seed/scale.py`) before its first task, then, with the mix of
`python -m load.bench --scenario mixed` (weights 8 : 4 : 4 : 3 : 1):

* reads a provider's 7-day availability (a window 1, 8, 15 or 22 days ahead),
* lists its own appointments (a page of 50),
* reads a provider's profile,
* books a free slot it saw in an availability answer (one `Idempotency-Key` per booking;
  a 409 because another user took the slot first is a correct answer, not a failure),
* cancels one of the visits it booked in this run.

Unlike the runner, Locust prepares nothing in the database: slots come from the API's own
answers, so bookings may meet 409s as the run goes on, and the data changes (run it on a
scratch copy, e.g. `createdb -T carebook_bench carebook_locust`). Only 127.0.0.1 is accepted as
the host. Locust's own overhead is far higher than the runner's generator (gevent, requests):
use `python -m load.bench` for the figures in docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from locust import HttpUser, between, events, task

from app.seed.scale import EMAIL_DOMAIN, LOAD_PASSWORD

LOOPBACK = "127.0.0.1"
WINDOW_OFFSETS = (1, 8, 15, 22)
WINDOW_DAYS = 7
PAGE = 50
PROVIDERS = 48
_patients = itertools.count(1)
_providers: list[str] = []


@events.test_start.add_listener
def _loopback_only(environment: Any, **_: Any) -> None:
    """Refuse to load anything but 127.0.0.1, like the runner's own generator."""
    host = urlsplit(environment.host or "").hostname
    if host != LOOPBACK:
        raise SystemExit(f"this locustfile only targets {LOOPBACK}, not {host!r}")


class MixedUser(HttpUser):
    """A patient of the scale dataset doing what patients do most."""

    wait_time = between(0, 0.01)  # closed loop, like the runner: the next request at once

    def on_start(self) -> None:
        self.email = f"patient{next(_patients):06d}@{EMAIL_DOMAIN}"
        answer = self.client.post(
            "/v1/auth/token", json={"email": self.email, "password": LOAD_PASSWORD}
        )
        answer.raise_for_status()
        self.headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        self.seen_slots: list[tuple[str, str]] = []  # (provider id, start)
        self.booked: list[str] = []
        if not _providers:
            listed = self.client.get("/v1/providers", params={"limit": "100"}, name="providers")
            _providers.extend(item["id"] for item in listed.json()["items"][:PROVIDERS])

    def _provider(self) -> str:
        return random.choice(_providers)  # noqa: S311 - a load mix, not a secret

    @task(8)
    def availability(self) -> None:
        provider = self._provider()
        first = datetime.now(UTC).date() + timedelta(days=random.choice(WINDOW_OFFSETS))  # noqa: S311
        last = first + timedelta(days=WINDOW_DAYS - 1)
        answer = self.client.get(
            f"/v1/providers/{provider}/availability",
            params={"from": first.isoformat(), "to": last.isoformat()},
            name="/v1/providers/{id}/availability",
        )
        if answer.ok:
            slots = answer.json()["slots"]
            self.seen_slots = [(provider, slot["start"]) for slot in slots[:20]]

    @task(4)
    def listing(self) -> None:
        self.client.get(
            "/v1/appointments",
            params={"limit": str(PAGE)},
            headers=self.headers,
            name="/v1/appointments",
        )

    @task(4)
    def profile(self) -> None:
        self.client.get(f"/v1/providers/{self._provider()}", name="/v1/providers/{id}")

    @task(3)
    def booking(self) -> None:
        if not self.seen_slots:
            return
        provider, start = self.seen_slots.pop(random.randrange(len(self.seen_slots)))  # noqa: S311
        with self.client.post(
            "/v1/appointments",
            json={"provider_id": provider, "start": start},
            headers={**self.headers, "Idempotency-Key": uuid.uuid4().hex},
            catch_response=True,
        ) as answer:
            if answer.status_code == 201:
                self.booked.append(answer.json()["id"])
                answer.success()
            elif answer.status_code == 409:
                answer.success()  # someone else took it first: the correct answer
            else:
                answer.failure(f"booking answered {answer.status_code}")

    @task(1)
    def cancel(self) -> None:
        if not self.booked:
            return
        appointment = self.booked.pop()
        self.client.post(
            f"/v1/appointments/{appointment}/cancel",
            json={"reason": "Load test"},
            headers=self.headers,
            name="/v1/appointments/{id}/cancel",
        )
