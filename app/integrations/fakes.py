"""Fake VideoSDK and FCM servers for tests and for `carebook serve --demo`.

Small HTTP/1.1 servers (asyncio + h11) bound to 127.0.0.1 on an ephemeral port. They implement
the endpoints the adapters call, record every call, count effects per idempotency key, and can
be told at runtime to be slow, answer 5xx / 429 / a given 4xx, hang, or drop the connection.

Run them on the current event loop (`async with FakeVideoSdk() as fake: ...`) or on a thread of
their own (`url = fake.start_in_thread()` ... `fake.stop_thread()`). Faults can also be set over
HTTP, which the demo uses: `POST /_fake/fault {"kind": "fail", "times": 3}`, `POST /_fake/slow
{"ms": 500}`, `POST /_fake/reset`, `GET /_fake/calls`, `GET /_fake/state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import h11

HOST = "127.0.0.1"  # never any other interface

FaultKind = Literal["status", "hang", "drop"]


@dataclass
class RecordedCall:
    """One request the fake received (control requests under /_fake/ are not recorded)."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, else text; None when empty
    at: float  # time.monotonic() on arrival
    outcome: str = "pending"  # the status code sent, or "hang" / "drop"
    query: str = ""  # the raw query string, without the "?"
    raw: bytes = b""  # the body as received


@dataclass
class FakeResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None  # sent as text/html instead of JSON when set
    content: bytes | None = None  # sent as is (type from a Content-Type header) when set


@dataclass
class Fault:
    """What the next call(s) get instead of a normal answer; `times=None` lasts until cleared."""

    kind: FaultKind
    times: int | None = 1
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after_effect: bool = False  # hang/drop only: do the work first, then lose the answer


_DROP = object()


class FakeServer:
    """HTTP plumbing, call recording and fault injection; subclasses implement `handle`."""

    name = "fake"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._calls: list[RecordedCall] = []
        self._faults: list[Fault] = []
        self._delay = 0.0
        self._release = asyncio.Event()
        self._arrival = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self.name} is not running")
        return f"http://{HOST}:{self.port}"

    async def start(self) -> str:
        """Listen on 127.0.0.1, on a free port; return the base URL."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve_connection, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        """Stop listening, release hung calls and close every connection."""
        if self._server is None:
            return
        self._server.close()
        self._release.set()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self) -> str:
        """Run on a daemon thread with its own event loop (for the demo); return the base URL."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=10):
            raise RuntimeError(f"{self.name} did not start")
        return self.url

    def stop_thread(self) -> None:
        if self._thread is None or self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    # --- fault injection (callable from any thread) --------------------------------------------

    def slow(self, ms: float) -> None:
        """Delay every answer by `ms` milliseconds (0 to stop)."""
        with self._lock:
            self._delay = max(0.0, ms) / 1000

    def fail_next(
        self, times: int | None = 1, *, status: int = 503, retry_after: float | None = None
    ) -> None:
        """Answer the next `times` calls with a 5xx (None: every call until cleared)."""
        headers = {} if retry_after is None else {"Retry-After": _seconds(retry_after)}
        body = {"error": {"code": status, "message": "fake failure"}}
        self._add(Fault("status", times, status, body, headers))

    def rate_limit_next(self, times: int | None = 1, *, retry_after: float = 1.0) -> None:
        """Answer the next `times` calls with 429 and `Retry-After: retry_after`."""
        body = {"error": {"code": 429, "message": "rate limited", "status": "RESOURCE_EXHAUSTED"}}
        self._add(Fault("status", times, 429, body, {"Retry-After": _seconds(retry_after)}))

    def reject_next(self, status: int = 400, *, body: Any = None, times: int | None = 1) -> None:
        """Answer the next `times` calls with the given 4xx (and body)."""
        default = {"error": {"code": status, "message": "fake rejection"}}
        self._add(Fault("status", times, status, default if body is None else body))

    def hang_next(self, times: int | None = 1, *, after_effect: bool = False) -> None:
        """Never answer the next `times` calls, until `release()` (which then drops them)."""
        self._add(Fault("hang", times, after_effect=after_effect))

    def drop_next(self, times: int | None = 1, *, after_effect: bool = False) -> None:
        """Close the connection without answering the next `times` calls."""
        self._add(Fault("drop", times, after_effect=after_effect))

    def release(self) -> None:
        """Let hung calls go (their connections are dropped) and forget pending hang faults."""
        with self._lock:
            self._faults = [fault for fault in self._faults if fault.kind != "hang"]
        self._in_loop(self._release_hung)

    def clear_faults(self) -> None:
        """Back to normal: no faults, no delay, hung calls released."""
        with self._lock:
            self._faults.clear()
            self._delay = 0.0
        self._in_loop(self._release_hung)

    # --- what happened --------------------------------------------------------------------------

    @property
    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    async def wait_for_calls(self, count: int) -> None:
        """Wait until `count` calls have arrived (in-process mode: on the fake's own loop).

        Wrap it in `asyncio.timeout(...)` to bound the wait.
        """
        while len(self.calls) < count:
            self._arrival.clear()
            await self._arrival.wait()

    def calls_to(self, path: str, method: str = "POST") -> list[RecordedCall]:
        return [call for call in self.calls if call.path == path and call.method == method]

    def state(self) -> dict[str, Any]:
        """Effects, for GET /_fake/state (subclasses add theirs)."""
        return {"calls": len(self.calls)}

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> FakeResponse:
        """The service's behaviour for one call (called under the lock)."""
        return FakeResponse(404, {"error": {"code": 404, "message": "not found"}})

    def handle_call(self, call: RecordedCall) -> FakeResponse:
        """Like `handle`, with the whole call (query string, raw body) for fakes that need it."""
        return self.handle(call.method, call.path, call.headers, call.body)

    # --- internals ------------------------------------------------------------------------------

    def _add(self, fault: Fault) -> None:
        if fault.times is not None and fault.times <= 0:
            return
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self) -> Fault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.pop(0)
            return fault

    def _in_loop(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            callback()
        else:
            loop.call_soon_threadsafe(callback)

    def _release_hung(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        connection = h11.Connection(h11.SERVER)
        drop = False
        try:
            while True:
                request = await _read_request(connection, reader)
                if request is None:
                    break
                method, target, headers, raw = request
                answer = await self._answer(method, target, headers, raw)
                if answer is _DROP:
                    drop = True
                    break
                assert isinstance(answer, FakeResponse)
                writer.write(_encode(connection, answer))
                await writer.drain()
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    break
                connection.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            drop = True
        finally:
            self._connections.discard(task)
            if drop:
                writer.transport.abort()
            else:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> FakeResponse | object:
        path, _, query = target.partition("?")
        body = _parse(raw)
        if path.startswith("/_fake/"):
            return self._control(method, path, body)
        call = RecordedCall(method, path, headers, body, time.monotonic(), query=query, raw=raw)
        with self._lock:
            self._calls.append(call)
            delay = self._delay
        self._arrival.set()
        if delay:
            await asyncio.sleep(delay)
        fault = self._take_fault()
        if fault is None or fault.kind == "status":
            if fault is None:
                with self._lock:
                    response = self.handle_call(call)
            else:
                response = FakeResponse(fault.status, fault.body, dict(fault.headers))
            call.outcome = str(response.status)
            return response
        if fault.after_effect:
            with self._lock:
                self.handle_call(call)
        call.outcome = fault.kind
        if fault.kind == "hang":
            await self._release.wait()
        return _DROP

    def _control(self, method: str, path: str, body: Any) -> FakeResponse:
        options = body if isinstance(body, dict) else {}
        if method == "GET" and path == "/_fake/calls":
            calls = [
                {"method": c.method, "path": c.path, "body": c.body, "outcome": c.outcome}
                for c in self.calls
            ]
            return FakeResponse(200, calls)
        if method == "GET" and path == "/_fake/state":
            return FakeResponse(200, self.state())
        if method == "POST" and path == "/_fake/reset":
            self.clear_faults()
            return FakeResponse(200, {"ok": True})
        if method == "POST" and path == "/_fake/slow":
            self.slow(float(options.get("ms", 0)))
            return FakeResponse(200, {"ok": True})
        if method == "POST" and path == "/_fake/fault":
            kind = options.get("kind")
            times = options.get("times", 1)
            after = bool(options.get("after_effect", False))
            if kind == "fail":
                self.fail_next(times, status=int(options.get("status", 503)))
            elif kind == "rate_limit":
                self.rate_limit_next(times, retry_after=float(options.get("retry_after", 1.0)))
            elif kind == "reject":
                self.reject_next(int(options.get("status", 400)), times=times)
            elif kind == "hang":
                self.hang_next(times, after_effect=after)
            elif kind == "drop":
                self.drop_next(times, after_effect=after)
            else:
                return FakeResponse(422, {"error": "kind: fail|rate_limit|reject|hang|drop"})
            return FakeResponse(200, {"ok": True})
        return FakeResponse(404, {"error": "unknown control endpoint"})


# --- VideoSDK -----------------------------------------------------------------------------------


@dataclass
class FakeRoom:
    room_id: str
    custom_room_id: str | None
    disabled: bool = False
    deactivations: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "roomId": self.room_id,
            "customRoomId": self.custom_room_id,
            "disabled": self.disabled,
            "id": self.room_id,
        }


class FakeVideoSdk(FakeServer):
    """VideoSDK rooms: create (idempotent on `customRoomId`), deactivate, get; a join page."""

    name = "fake-videosdk"

    def __init__(self, token: str | None = None) -> None:
        super().__init__()
        self.token = token
        self.rooms: dict[str, FakeRoom] = {}
        self._by_custom_id: dict[str, str] = {}
        self._rooms_created: dict[str | None, int] = {}

    def rooms_for(self, custom_room_id: str | None) -> int:
        """How many rooms were created for this `customRoomId` (the effect: at most 1)."""
        with self._lock:
            return self._rooms_created.get(custom_room_id, 0)

    def room_by_custom_id(self, custom_room_id: str) -> FakeRoom | None:
        with self._lock:
            room_id = self._by_custom_id.get(custom_room_id)
            return None if room_id is None else self.rooms[room_id]

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": len(self._calls),
                "rooms": [room.as_json() for room in self.rooms.values()],
            }

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> FakeResponse:
        if method == "GET" and path.startswith("/meeting/"):
            room_id = path.removeprefix("/meeting/")
            return FakeResponse(200, text=f"<h1>Fake VideoSDK room {room_id}</h1>")
        if self.token is not None and headers.get("authorization") != self.token:
            return FakeResponse(401, {"statusCode": 401, "error": "Unauthorized"})
        payload = body if isinstance(body, dict) else {}
        if method == "POST" and path == "/v2/rooms":
            return self._create(payload.get("customRoomId"))
        if method == "POST" and path == "/v2/rooms/deactivate":
            room = self.rooms.get(str(payload.get("roomId")))
            if room is None:
                return FakeResponse(404, {"statusCode": 404, "error": "Room not found"})
            room.disabled = True
            room.deactivations += 1
            return FakeResponse(200, room.as_json())
        if method == "GET" and path.startswith("/v2/rooms/"):
            room = self.rooms.get(path.removeprefix("/v2/rooms/"))
            if room is None:
                return FakeResponse(404, {"statusCode": 404, "error": "Room not found"})
            return FakeResponse(200, room.as_json())
        return super().handle(method, path, headers, body)

    def _create(self, custom_room_id: Any) -> FakeResponse:
        if custom_room_id is not None and not isinstance(custom_room_id, str):
            return FakeResponse(400, {"statusCode": 400, "error": "customRoomId must be a string"})
        if custom_room_id is not None and custom_room_id in self._by_custom_id:
            return FakeResponse(200, self.rooms[self._by_custom_id[custom_room_id]].as_json())
        room = FakeRoom(_room_id(), custom_room_id)
        self.rooms[room.room_id] = room
        if custom_room_id is not None:
            self._by_custom_id[custom_room_id] = room.room_id
        self._rooms_created[custom_room_id] = self._rooms_created.get(custom_room_id, 0) + 1
        return FakeResponse(200, room.as_json())


# --- FCM ------------------------------------------------------------------------------------------

_FCM_SEND = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


@dataclass(frozen=True)
class Delivery:
    project: str
    token: str
    title: str | None
    body: str | None
    data: dict[str, str]
    message_id: str


class FakeFcm(FakeServer):
    """FCM HTTP v1 `messages:send`, with unregistered and invalid tokens on demand."""

    name = "fake-fcm"

    def __init__(self, access_token: str | None = None) -> None:
        super().__init__()
        self.access_token = access_token
        self.deliveries: list[Delivery] = []
        self._unregistered: set[str] = set()
        self._invalid: set[str] = set()

    def unregister(self, token: str) -> None:
        """From now on, pushes to `token` get 404 UNREGISTERED (the app was uninstalled)."""
        with self._lock:
            self._unregistered.add(token)

    def invalidate(self, token: str) -> None:
        """From now on, pushes to `token` get 400 INVALID_ARGUMENT (a malformed token)."""
        with self._lock:
            self._invalid.add(token)

    def pushes(self, token: str, dedupe_key: str | None = None) -> int:
        """Deliveries to `token` (only those whose data["dedupe_key"] matches, when given)."""
        with self._lock:
            return sum(
                1
                for d in self.deliveries
                if d.token == token
                and (dedupe_key is None or d.data.get("dedupe_key") == dedupe_key)
            )

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": len(self._calls),
                "deliveries": [
                    {"token": d.token, "title": d.title, "data": d.data} for d in self.deliveries
                ],
            }

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> FakeResponse:
        match = _FCM_SEND.match(path)
        if method != "POST" or match is None:
            return super().handle(method, path, headers, body)
        if self.access_token is not None and (
            headers.get("authorization") != f"Bearer {self.access_token}"
        ):
            return _fcm_error(401, "UNAUTHENTICATED", "Request had invalid credentials.")
        message = body.get("message") if isinstance(body, dict) else None
        token = message.get("token") if isinstance(message, dict) else None
        if not isinstance(message, dict) or not isinstance(token, str) or not token:
            return _fcm_error(400, "INVALID_ARGUMENT", "message.token is required", bad="message")
        data = message.get("data") or {}
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            return _fcm_error(400, "INVALID_ARGUMENT", "data values must be strings", bad="data")
        if token in self._invalid:
            return _fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                fcm_code="INVALID_ARGUMENT",
            )
        if token in self._unregistered:
            return _fcm_error(
                404, "NOT_FOUND", "Requested entity was not found.", fcm_code="UNREGISTERED"
            )
        notification = message.get("notification") or {}
        project = match.group("project")
        message_id = f"0:{int(time.time() * 1000)}%{secrets.token_hex(8)}"
        self.deliveries.append(
            Delivery(
                project=project,
                token=token,
                title=notification.get("title"),
                body=notification.get("body"),
                data=dict(data),
                message_id=message_id,
            )
        )
        return FakeResponse(200, {"name": f"projects/{project}/messages/{message_id}"})


def _fcm_error(
    status: int, grpc_status: str, message: str, *, fcm_code: str | None = None, bad: str = ""
) -> FakeResponse:
    details: list[dict[str, Any]] = []
    if fcm_code is not None:
        details.append({"@type": _FCM_ERROR, "errorCode": fcm_code})
    if bad:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": f"message.{bad}", "description": message}],
            }
        )
    error = {"code": status, "message": message, "status": grpc_status, "details": details}
    return FakeResponse(status, {"error": error})


# --- HTTP plumbing --------------------------------------------------------------------------------


async def _read_request(
    connection: h11.Connection, reader: asyncio.StreamReader
) -> tuple[str, str, dict[str, str], bytes] | None:
    """The next request on the connection, or None once the client has closed it."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            headers = {name.decode().lower(): value.decode() for name, value in request.headers}
            return request.method.decode(), request.target.decode(), headers, bytes(body)


def _encode(connection: h11.Connection, response: FakeResponse) -> bytes:
    extra = dict(response.headers)
    if response.content is not None:
        payload = response.content
        content_type = extra.pop("Content-Type", "application/octet-stream")
    elif response.text is not None:
        payload = response.text.encode()
        content_type = "text/html; charset=utf-8"
    else:
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        content_type = "application/json"
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(payload))),
        *extra.items(),
    ]
    try:
        reason = http.HTTPStatus(response.status).phrase.encode()
    except ValueError:
        reason = b""
    head = h11.Response(status_code=response.status, headers=headers, reason=reason)
    out = connection.send(head) or b""
    if payload:
        out += connection.send(h11.Data(data=payload)) or b""
    out += connection.send(h11.EndOfMessage()) or b""
    return out


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _room_id() -> str:
    letters = string.ascii_lowercase
    return "-".join("".join(secrets.choice(letters) for _ in range(4)) for _ in range(3))
