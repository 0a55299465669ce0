"""`carebook` command line: serve, worker, migrate, seed, create-user, stats.

With no `CAREBOOK_DATABASE_URL` / `CAREBOOK_REDIS_URL`, every command uses the embedded
PostgreSQL and Redis under the data folder, also while `carebook serve` is running.

SIGTERM (docker stop, Kubernetes, systemd) and SIGINT (Ctrl-C) stop every command the same
way: the API and the worker shut down gracefully, then the embedded servers stop. `serve` and
`worker` then exit 0; a command cut short exits 128 + the signal number (130, 143).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from app.kit.embedded import EmbeddedServers, ensure_secret_file
from app.settings import DEVELOPMENT_JWT_SECRET, Settings, get_settings

cli = typer.Typer(
    help="Carebook: appointment booking for clinics and telehealth practices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# uvicorn lets requests in flight finish for this long after SIGTERM; deploy/k8s and
# docker-compose.yml give the API more than this (plus their drain delay) before SIGKILL.
GRACEFUL_SHUTDOWN_SECONDS = 20

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder of the embedded PostgreSQL and Redis (used when no URLs are set). "
        "Default: CAREBOOK_DATA_DIR or the user's data directory.",
        file_okay=False,
    ),
]


class _StopSignals:
    """SIGTERM is handled as Ctrl-C is: as KeyboardInterrupt, so every `finally` runs, the one
    that stops the embedded servers included.

    While uvicorn serves and while `carebook worker` runs, their own handlers take over and
    shut down gracefully; uvicorn then re-raises the signal it caught, which lands here rather
    than in SIGTERM's default action (dying on the spot, orphaning the servers). While servers
    start or stop, a signal is held back: an interruption there would leave one running.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._holding = 0
        self._held = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self._holding:
            self._held = True
            return
        raise KeyboardInterrupt

    def _install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    @contextmanager
    def handling(self) -> Iterator[None]:
        """For one command: exits with 128 + the signal number when it cuts the command short."""
        previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {
            signum: signal.getsignal(signum) for signum in self.SIGNALS
        }
        self.received, self._holding, self._held = None, 0, False
        self._install()
        try:
            yield
        except KeyboardInterrupt as interrupt:
            if self.received is None:
                raise
            name = signal.Signals(self.received).name
            typer.echo(f"Stopped by {name}.", err=True)
            raise typer.Exit(code=128 + self.received) from interrupt
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextmanager
    def held(self, *, then_raise: bool) -> Iterator[None]:
        """No interruption inside; a signal received meanwhile takes effect after it
        (`then_raise`) or was only the request to do what is being done anyway (stopping)."""
        # asyncio's loop and uvicorn's process supervisor leave handlers of their own behind.
        self._install()
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if then_raise and self._held and not self._holding:
            self._held = False
            raise KeyboardInterrupt


_stop_signals = _StopSignals()


def _reload_settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


@contextmanager
def _environment(data_dir: Path | None, *, with_redis: bool) -> Iterator[Settings]:
    """Settings pointing at real servers: the configured URLs, or embedded ones started here.

    In embedded mode the schema is migrated on the way in (nobody else would), and the job
    worker runs inside the API process. With URLs set, migrating is the deploy's business
    (`carebook migrate`) and nothing here changes the schema. SIGTERM and SIGINT end the
    command in order, stopping the embedded servers last.
    """
    with _stop_signals.handling():
        if data_dir is not None:
            os.environ["CAREBOOK_DATA_DIR"] = str(data_dir.resolve())
        settings = _reload_settings()
        if not settings.embedded:
            yield settings
            return
        os.environ.setdefault("CAREBOOK_RUN_WORKER_IN_PROCESS", "true")
        servers = EmbeddedServers(
            settings.data_dir, with_redis=with_redis and not settings.redis_url
        )
        typer.echo(f"Embedded mode: data in {settings.data_dir}", err=True)
        try:
            with _stop_signals.held(then_raise=True):
                database_url, redis_url = servers.start()
            os.environ["CAREBOOK_DATABASE_URL"] = database_url
            if redis_url:
                os.environ["CAREBOOK_REDIS_URL"] = redis_url
            if settings.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET:
                secret = ensure_secret_file(settings.data_dir / "jwt-secret")
                os.environ["CAREBOOK_JWT_SECRET"] = secret
            embedded_settings = _reload_settings()
            _migrate(embedded_settings)
            yield embedded_settings
        finally:
            with _stop_signals.held(then_raise=False):
                servers.stop()


@contextmanager
def _demo_integrations(demo: bool) -> Iterator[None]:
    """With `--demo`, VideoSDK and FCM that are not configured are served by the fake servers
    on 127.0.0.1, so bookings get rooms and pushes locally (`GET /_fake/state` shows them)."""
    from app.integrations.fakes import FakeFcm, FakeServer, FakeVideoSdk

    settings = get_settings()
    fakes: list[FakeServer] = []
    if demo and settings.videosdk_base_url is None:
        video = FakeVideoSdk()
        url = video.start_in_thread()
        fakes.append(video)
        os.environ["CAREBOOK_VIDEOSDK_BASE_URL"] = url
        os.environ["CAREBOOK_VIDEOSDK_JOIN_URL_TEMPLATE"] = f"{url}/meeting/{{room_id}}"
        typer.echo(f"Demo: fake VideoSDK at {url}", err=True)
    if demo and settings.fcm_base_url is None:
        fcm = FakeFcm()
        url = fcm.start_in_thread()
        fakes.append(fcm)
        os.environ["CAREBOOK_FCM_BASE_URL"] = url
        os.environ.setdefault("CAREBOOK_FCM_PROJECT_ID", "carebook-demo")
        typer.echo(f"Demo: fake FCM at {url}", err=True)
    _reload_settings()
    try:
        yield
    finally:
        for fake in fakes:
            fake.stop_thread()


def _require_schema(settings: Settings) -> None:
    """Refuse, in one line, to work on a database that `carebook migrate` has not prepared."""
    from app.kit.migrations import current_revision, head_revision

    assert settings.database_url is not None
    revision = asyncio.run(current_revision(settings.database_url))
    if revision != head_revision():
        state = "has no Carebook schema" if revision is None else f"is at revision {revision}"
        typer.echo(f"error: the database {state}; run `carebook migrate` first.", err=True)
        raise typer.Exit(code=1)


def _migrate(settings: Settings) -> None:
    from app.kit.migrations import upgrade

    assert settings.database_url is not None
    asyncio.run(upgrade(settings.database_url))


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.", min=1, max=64)] = 1,
    data_dir: DataDir = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Seed a demo clinic and print its logins.")
    ] = False,
) -> None:
    """Run the HTTP API.

    With no database URL configured this starts embedded PostgreSQL and Redis, applies the
    migrations and runs the job worker inside the API process; Ctrl-C stops everything.
    """
    from app.kit import serving

    with (
        _environment(data_dir, with_redis=True) as settings,
        _demo_integrations(demo),
        _multiprocess_metrics(workers),
    ):
        if demo:
            from app.seed import print_demo_logins, seed_demo

            asyncio.run(seed_demo(settings))
            print_demo_logins(host, port)
        serving.run(
            "app.main:app_factory",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            log_config=None,
            server_header=False,  # no banner naming the server software to attackers
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            # The client address (rate limits) comes from X-Forwarded-For only via these.
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )


@contextmanager
def _multiprocess_metrics(workers: int) -> Iterator[None]:
    """Several uvicorn processes share their Prometheus values through files in a fresh folder
    (one per run, removed afterwards), so /metrics reports all of them whichever one answers."""
    if workers == 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="carebook-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


@cli.command()
def worker(
    data_dir: DataDir = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 0 if the worker on this host refreshed its health-check key recently, "
            "else 1 (a liveness probe; needs CAREBOOK_REDIS_URL).",
        ),
    ] = False,
) -> None:
    """Run the background job worker (ARQ): the jobs and cron jobs of workers/settings.py."""
    if check:
        _check_worker()
        return
    from app.kit.logging import configure_logging
    from workers.runner import run_until_signalled

    with _environment(data_dir, with_redis=True) as settings:
        configure_logging(settings.log_level, json=settings.log_json)
        if settings.worker_metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
        asyncio.run(run_until_signalled(settings))


def _check_worker() -> None:
    """Never starts embedded servers: a probe only reads the configured Redis."""
    from workers.health import check_health, health_check_key

    settings = _reload_settings()
    if settings.redis_url is None:
        typer.echo("error: --check needs CAREBOOK_REDIS_URL.", err=True)
        raise typer.Exit(code=1)
    if not asyncio.run(check_health(settings)):
        typer.echo(f"unhealthy: no recent heartbeat at {health_check_key()}.", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"healthy: {health_check_key()} is fresh.")


@cli.command()
def migrate(
    data_dir: DataDir = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations (Alembic) up to the latest revision."""
    from app.kit.migrations import upgrade

    with _environment(data_dir, with_redis=False) as settings:
        assert settings.database_url is not None
        asyncio.run(upgrade(settings.database_url, revision))  # embedded: already at head
        typer.echo(f"Database migrated to {revision}.")


@cli.command()
def seed(
    data_dir: DataDir = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Demo clinics, providers, schedules and patients.")
    ] = False,
    scale: Annotated[
        int | None,
        typer.Option(help="Benchmark dataset with N appointments (loaded with COPY).", min=1),
    ] = None,
    random_seed: Annotated[
        int,
        typer.Option(
            "--random-seed",
            help="With --scale: seed of the generator; the same seed (on the same day) gives "
            "identical rows, ids included.",
        ),
    ] = 42,
) -> None:
    """Load data: the demo dataset (idempotent) or a benchmark dataset of a given size.

    `--scale N` needs a migrated database without appointments and refuses any other.
    """
    if demo == (scale is not None):
        raise typer.BadParameter("give exactly one of --demo or --scale N")
    with _environment(data_dir, with_redis=False) as settings:
        _require_schema(settings)
        if demo:
            from app.seed import print_demo_logins, seed_demo

            asyncio.run(seed_demo(settings))
            print_demo_logins("127.0.0.1", 8000)
        else:
            from app.seed import SeedError, seed_scale

            assert scale is not None
            try:
                summary = asyncio.run(seed_scale(settings, scale, random_seed=random_seed))
            except SeedError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(code=exc.exit_code) from exc
            typer.echo(
                f"Seeded {summary.appointments} appointments, {summary.patients} patients, "
                f"{summary.providers} providers ({summary.schedule_rules} schedule rules) in "
                f"{summary.clinics} clinics in {summary.seconds:.1f} s "
                f"(random seed {summary.random_seed}, today {summary.today.isoformat()})."
            )
            typer.echo("\n".join(summary.logins()))


@cli.command("create-user")
def create_user(
    email: Annotated[str, typer.Option(help="Login email.")],
    password: Annotated[str, typer.Option(help="Password (8 to 128 characters).")],
    role: Annotated[str, typer.Option(help="admin or staff.")],
    clinic_id: Annotated[
        str | None, typer.Option("--clinic-id", help="Clinic of a staff member.")
    ] = None,
    full_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create an operator account (admin or staff), e.g. the first admin of an installation."""
    from pydantic import ValidationError

    from app.auth.schemas import CreateUserIn
    from app.kit.errors import AppError
    from app.seed import create_operator

    try:
        data = CreateUserIn.model_validate(
            {
                "email": email,
                "password": password,
                "full_name": full_name or email.split("@", 1)[0],
                "role": role,
                "clinic_id": clinic_id,
            }
        )
    except ValidationError as exc:
        messages = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(messages) from exc
    with _environment(data_dir, with_redis=False) as settings:
        _require_schema(settings)
        try:
            user_id = asyncio.run(create_operator(settings, data))
        except AppError as exc:
            typer.echo(f"error: {exc.detail}", err=True)
            raise typer.Exit(code=1) from exc
    typer.echo(f"Created {data.role} {data.email} with id {user_id}.")


stats = typer.Typer(help="Clinic analytics tables.", no_args_is_help=True)
cli.add_typer(stats, name="stats")

_DATE = ["%Y-%m-%d"]


@stats.command("rebuild")
def stats_rebuild(
    from_: Annotated[
        datetime | None, typer.Option("--from", formats=_DATE, help="First date, YYYY-MM-DD.")
    ] = None,
    to: Annotated[
        datetime | None, typer.Option("--to", formats=_DATE, help="Last date, inclusive.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Recompute clinic_daily_stats from appointments (all dates, or --from..--to)."""
    from app.analytics.tasks import rebuild_with_settings

    first, last = (from_.date() if from_ else None), (to.date() if to else None)
    if first is not None and last is not None and last < first:
        raise typer.BadParameter("--to must not be before --from")
    with _environment(data_dir, with_redis=False) as settings:
        _require_schema(settings)
        summary = asyncio.run(rebuild_with_settings(settings, first, last))
    span = f"{summary.first} to {summary.last}" if summary.first else "nothing to rebuild"
    typer.echo(
        f"Rebuilt clinic_daily_stats: {span}, {summary.rows} rows in {summary.chunks} "
        f"monthly chunks, {summary.seconds:.1f} s."
    )


def main() -> None:
    cli()
