"""The `carebook` command line, run as a real subprocess against a database of this module's own.

Every command gets an explicit environment: no inherited `CAREBOOK_*` variable, only the
database URL and the development environment, so these tests never touch the shared per-run
database nor an embedded data folder.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import make_url, pool, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from app.kit.migrations import alembic_config, upgrade
from app.models import Base
from app.seed import DEMO_PASSWORD
from tests.fixtures.app import client_for, make_settings, running_app

if TYPE_CHECKING:
    from tests.fixtures.servers import TestServers
from tests.fixtures.servers import fresh_database as shared_fresh_database

CAREBOOK = Path(sys.executable).parent / "carebook"
COMMANDS = ["serve", "worker", "migrate", "seed", "create-user", "stats"]
COMMAND_OPTIONS = {
    "serve": ["--host", "--port", "--workers", "--data-dir", "--demo"],
    "worker": ["--data-dir", "--check"],
    "migrate": ["--data-dir"],
    "seed": ["--demo", "--scale", "--data-dir"],
    "create-user": ["--email", "--password", "--role", "--clinic-id", "--data-dir"],
    "stats": [],
}
CLI_TIMEOUT_SECONDS = 180.0
_BOX = re.compile(r"[\u2500-\u257f]")


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def plain(self) -> str:
        """Output without box drawing and with whitespace collapsed (immune to line wrapping)."""
        return " ".join(_BOX.sub(" ", self.output).split())

    def describe(self) -> str:
        return (
            f"carebook {' '.join(self.args)} exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def cli_env(database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    env["CAREBOOK_ENVIRONMENT"] = "development"
    if database_url is not None:
        env["CAREBOOK_DATABASE_URL"] = database_url
    # Wide, uncoloured help and error panels, so messages are not cut mid-word.
    env["COLUMNS"] = "200"
    env["TERMINAL_WIDTH"] = "200"
    env["NO_COLOR"] = "1"
    return env


async def run_cli(
    *args: str, database_url: str | None, extra_env: dict[str, str] | None = None
) -> Result:
    process = await asyncio.create_subprocess_exec(
        str(CAREBOOK),
        *args,
        env={**cli_env(database_url), **(extra_env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(args, process.returncode, stdout.decode(), stderr.decode())


def assert_clean_failure(result: Result, *, code: int | None = None) -> None:
    """A refusal: non-zero exit, an explanation, and no Python traceback."""
    assert result.returncode != 0, result.describe()
    if code is not None:
        assert result.returncode == code, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert result.stderr.strip(), result.describe()


def fresh_database(servers: TestServers) -> AbstractAsyncContextManager[str]:
    return shared_fresh_database(servers, "carebook_cli", migrate=False)


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[AsyncConnection]:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
async def cli_database_url(test_servers: TestServers) -> AsyncIterator[str]:
    """This module's database, migrated, shared by the create-user tests (unique emails)."""
    async with fresh_database(test_servers) as url:
        await upgrade(url)
        yield url


@pytest.fixture
async def empty_database_url(test_servers: TestServers) -> AsyncIterator[str]:
    async with fresh_database(test_servers) as url:
        yield url


def _unique_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


async def _insert_clinic(url: str) -> uuid.UUID:
    async with connect(url) as connection:
        clinic_id = (
            await connection.execute(
                text(
                    "INSERT INTO clinics (id, name, timezone) "
                    "VALUES (gen_random_uuid(), :name, 'Europe/Paris') RETURNING id"
                ),
                {"name": f"CLI clinic {uuid.uuid4().hex[:6]}"},
            )
        ).scalar_one()
        await connection.commit()
    assert isinstance(clinic_id, uuid.UUID)
    return clinic_id


async def _users_with_email(url: str, email: str) -> list[tuple[str, uuid.UUID | None, str]]:
    async with connect(url) as connection:
        rows = await connection.execute(
            text("SELECT role, clinic_id, email FROM users WHERE lower(email) = lower(:email)"),
            {"email": email},
        )
        return [(str(role), clinic_id, str(found)) for role, clinic_id, found in rows]


# --- help ---------------------------------------------------------------------------------------


def _commands_in_help(output: str) -> list[str]:
    """Command names of the "Commands" section, in rich panels or plain click format."""
    names: list[str] = []
    in_section = False
    for line in output.splitlines():
        if re.search(r"\bCommands\b", line):
            in_section = True
            continue
        if not in_section:
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("╰"):
            break
        entry = re.match(r"^\s*│?\s{0,3}([a-z][a-z0-9-]*)(\s{2,}|\s*│?$)", line)
        if entry:
            names.append(entry.group(1))
    return names


async def test_help_lists_exactly_the_commands() -> None:
    result = await run_cli("--help", database_url=None)
    assert result.returncode == 0, result.describe()
    assert sorted(_commands_in_help(result.stdout)) == sorted(COMMANDS), result.describe()


async def test_no_arguments_shows_help_without_traceback() -> None:
    result = await run_cli(database_url=None)
    assert "Traceback" not in result.output, result.describe()
    assert "serve" in result.output
    assert "create-user" in result.output


@pytest.mark.parametrize("command", COMMANDS)
async def test_each_command_has_help_with_its_options(command: str) -> None:
    result = await run_cli(command, "--help", database_url=None)
    assert result.returncode == 0, result.describe()
    assert f"carebook {command}" in result.plain, result.describe()
    options = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
    missing = [option for option in COMMAND_OPTIONS[command] if option not in options]
    assert missing == [], result.describe()


# --- migrate ------------------------------------------------------------------------------------


async def test_migrate_creates_the_schema_and_can_run_twice(empty_database_url: str) -> None:
    # A plain postgresql:// URL, as an operator writes it: the CLI picks the async driver.
    plain_url = (
        make_url(empty_database_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    first = await run_cli("migrate", database_url=plain_url)
    assert first.returncode == 0, first.describe()
    assert "Traceback" not in first.output

    async with connect(empty_database_url) as connection:
        versions = list(await connection.scalars(text("SELECT version_num FROM alembic_version")))
        tables = set(
            await connection.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
        )
    assert versions == [head]
    assert tables == {*Base.metadata.tables, "alembic_version"}

    second = await run_cli("migrate", database_url=plain_url)
    assert second.returncode == 0, second.describe()
    async with connect(empty_database_url) as connection:
        versions = list(await connection.scalars(text("SELECT version_num FROM alembic_version")))
        appointments = await connection.scalar(text("SELECT to_regclass('public.appointments')"))
    assert versions == [head]
    assert appointments is not None


# --- seed ---------------------------------------------------------------------------------------

_DEMO_COUNTS = """
SELECT
  (SELECT count(*) FROM clinics) AS clinics,
  (SELECT count(*) FROM specialties) AS specialties,
  (SELECT count(*) FROM providers) AS providers,
  (SELECT count(*) FROM users WHERE role = 'patient') AS patients,
  (SELECT count(*) FROM users WHERE role = 'provider') AS provider_users,
  (SELECT count(*) FROM users WHERE role = 'staff') AS staff,
  (SELECT count(*) FROM users WHERE role = 'admin') AS admins,
  (SELECT count(*) FROM schedule_rules) AS schedule_rules,
  (SELECT count(*) FROM providers p
     WHERE NOT EXISTS (SELECT 1 FROM schedule_rules r WHERE r.provider_id = p.user_id))
    AS providers_without_rules
"""


async def _demo_counts(url: str) -> dict[str, int]:
    async with connect(url) as connection:
        row = (await connection.execute(text(_DEMO_COUNTS))).mappings().one()
    return {key: int(value) for key, value in row.items()}


async def test_seed_demo_is_idempotent_and_the_demo_patient_can_log_in(
    empty_database_url: str, test_servers: TestServers
) -> None:
    # With a URL set, migrating is the deploy's step: `migrate`, then `seed`.
    migrated = await run_cli("migrate", database_url=empty_database_url)
    assert migrated.returncode == 0, migrated.describe()

    first = await run_cli("seed", "--demo", database_url=empty_database_url)
    assert first.returncode == 0, first.describe()
    assert "patient01@example.com" in first.stdout
    counts = await _demo_counts(empty_database_url)
    assert counts["clinics"] == 2
    assert counts["specialties"] == 4
    assert counts["providers"] == 10
    assert counts["provider_users"] == 10
    assert counts["patients"] == 20
    assert counts["staff"] == 2
    assert counts["admins"] == 1
    assert counts["schedule_rules"] > 0
    assert counts["providers_without_rules"] == 0

    second = await run_cli("seed", "--demo", database_url=empty_database_url)
    assert second.returncode == 0, second.describe()
    assert await _demo_counts(empty_database_url) == counts

    settings = make_settings(empty_database_url, test_servers.redis_url)
    async with running_app(settings) as app, client_for(app) as client:
        token = await client.post(
            "/v1/auth/token", json={"email": "patient01@example.com", "password": DEMO_PASSWORD}
        )
        assert token.status_code == 200, token.text
        body = token.json()
        assert body["token_type"] == "bearer"
        assert body["access_token"]
        assert body["refresh_token"]
        me = await client.get("/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert me.status_code == 200, me.text
        assert me.json()["email"] == "patient01@example.com"
        assert me.json()["role"] == "patient"
        wrong = await client.post(
            "/v1/auth/token", json={"email": "patient01@example.com", "password": "wrong-password"}
        )
        assert wrong.status_code == 401


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["seed", "--demo"], id="seed"),
        pytest.param(
            [
                *("create-user", "--email", "first@example.com"),
                *("--password", "first-admin-1", "--role", "admin"),
            ],
            id="create-user",
        ),
    ],
)
async def test_commands_never_migrate_with_a_url_and_refuse_an_unmigrated_database_cleanly(
    args: list[str], empty_database_url: str
) -> None:
    """README: with URLs set, `seed` and `create-user` never change the schema. On a database
    nobody migrated they must then say so (run `carebook migrate`), not dump a traceback."""
    result = await run_cli(*args, database_url=empty_database_url)
    assert result.returncode != 0, result.describe()
    async with connect(empty_database_url) as connection:
        tables = list(
            await connection.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
        )
    assert tables == [], "the command changed the schema"
    assert_clean_failure(result)
    assert "migrat" in result.stderr.lower(), result.describe()


@pytest.mark.parametrize(
    "args", [pytest.param([], id="neither"), pytest.param(["--demo", "--scale", "5"], id="both")]
)
async def test_seed_needs_exactly_one_of_demo_or_scale(
    args: list[str], cli_database_url: str
) -> None:
    result = await run_cli("seed", *args, database_url=cli_database_url)
    assert_clean_failure(result, code=2)  # click's usage error
    assert "Usage" in result.stderr
    assert "--demo" in result.plain
    assert "--scale" in result.plain


# --- create-user --------------------------------------------------------------------------------


async def test_create_user_creates_an_admin_who_can_log_in(
    cli_database_url: str, test_servers: TestServers
) -> None:
    email = _unique_email("admin")
    result = await run_cli(
        "create-user",
        "--email",
        email,
        "--password",
        "admin-password-1",
        "--role",
        "admin",
        "--full-name",
        "Ada Operator",
        database_url=cli_database_url,
    )
    assert result.returncode == 0, result.describe()
    assert email in result.stdout
    assert await _users_with_email(cli_database_url, email) == [("admin", None, email)]

    settings = make_settings(cli_database_url, test_servers.redis_url)
    async with running_app(settings) as app, client_for(app) as client:
        token = await client.post(
            "/v1/auth/token", json={"email": email, "password": "admin-password-1"}
        )
        assert token.status_code == 200, token.text
        me = await client.get(
            "/v1/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
        )
    assert me.status_code == 200, me.text
    assert me.json()["role"] == "admin"
    assert me.json()["full_name"] == "Ada Operator"


async def test_create_staff_without_clinic_id_fails_cleanly(cli_database_url: str) -> None:
    email = _unique_email("staff")
    result = await run_cli(
        "create-user",
        "--email",
        email,
        "--password",
        "staff-password-1",
        "--role",
        "staff",
        database_url=cli_database_url,
    )
    assert_clean_failure(result)
    assert "clinic" in result.stderr.lower(), result.describe()
    assert await _users_with_email(cli_database_url, email) == []


async def test_create_staff_with_a_clinic_id(cli_database_url: str) -> None:
    clinic_id = await _insert_clinic(cli_database_url)
    email = _unique_email("staff")
    result = await run_cli(
        "create-user",
        "--email",
        email,
        "--password",
        "staff-password-1",
        "--role",
        "staff",
        "--clinic-id",
        str(clinic_id),
        database_url=cli_database_url,
    )
    assert result.returncode == 0, result.describe()
    assert await _users_with_email(cli_database_url, email) == [("staff", clinic_id, email)]


@pytest.mark.parametrize(
    "clinic_id",
    [pytest.param(str(uuid.uuid4()), id="unknown-clinic"), pytest.param("not-a-uuid", id="bad")],
)
async def test_create_staff_with_an_invalid_clinic_id_fails_cleanly(
    clinic_id: str, cli_database_url: str
) -> None:
    email = _unique_email("staff")
    result = await run_cli(
        "create-user",
        "--email",
        email,
        "--password",
        "staff-password-1",
        "--role",
        "staff",
        "--clinic-id",
        clinic_id,
        database_url=cli_database_url,
    )
    assert_clean_failure(result)
    assert "clinic" in result.plain.lower(), result.describe()
    assert await _users_with_email(cli_database_url, email) == []


async def test_create_user_with_a_taken_email_fails_cleanly(cli_database_url: str) -> None:
    email = _unique_email("twice")
    args = ("--password", "admin-password-1", "--role", "admin")
    first = await run_cli("create-user", "--email", email, *args, database_url=cli_database_url)
    assert first.returncode == 0, first.describe()

    for again in (email, email.upper()):  # emails are unique case-insensitively
        result = await run_cli(
            "create-user", "--email", again, *args, database_url=cli_database_url
        )
        assert_clean_failure(result)
        assert "exists" in result.stderr.lower() or "taken" in result.stderr.lower(), (
            result.describe()
        )
    assert len(await _users_with_email(cli_database_url, email)) == 1


@pytest.mark.parametrize("role", ["patient", "provider", "superuser", ""])
async def test_create_user_rejects_roles_other_than_admin_and_staff(
    role: str, cli_database_url: str
) -> None:
    email = _unique_email("role")
    result = await run_cli(
        "create-user",
        "--email",
        email,
        "--password",
        "some-password-1",
        "--role",
        role,
        database_url=cli_database_url,
    )
    assert_clean_failure(result, code=2)
    assert "role" in result.plain.lower(), result.describe()
    assert await _users_with_email(cli_database_url, email) == []


@pytest.mark.parametrize(
    ("email", "password"),
    [
        pytest.param("not-an-email", "long-enough-1", id="bad-email"),
        pytest.param("short@example.com", "short", id="short-password"),
    ],
)
async def test_create_user_rejects_invalid_input_cleanly(
    email: str, password: str, cli_database_url: str
) -> None:
    result = await run_cli(
        "create-user",
        "--email",
        email,
        "--password",
        password,
        "--role",
        "admin",
        database_url=cli_database_url,
    )
    assert_clean_failure(result, code=2)
    assert await _users_with_email(cli_database_url, email) == []
