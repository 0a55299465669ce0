"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema
(tests/fixtures/compose-spec.schema.json, the compose-spec project's schema as the `dclint`
package ships it, MIT/Apache-2.0), then against the code: the same topology as deploy/k8s,
environment names that are settings, commands the CLI has, health checks on real routes, and
the order in which services start. The Dockerfile is parsed for its stages and its user.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.cli import GRACEFUL_SHUTDOWN_SECONDS
from app.settings import Settings
from tests.fixtures.codebase import app_paths, cli_options, setting_env_names

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PREFIX = "CAREBOOK_"
CAREBOOK_SERVICES = ("api", "worker", "migrate")
IMAGE_UID = "10001"
TMP = "/tmp"  # noqa: S108 - the path the containers mount a tmpfs on, not a file opened here


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "fixtures" / "compose-spec.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(COMPOSE)


def test_the_schema_rejects_a_misspelt_key() -> None:
    schema = json.loads((ROOT / "tests" / "fixtures" / "compose-spec.schema.json").read_text())
    broken = {"services": {"api": {"image": "carebook:local", "helthcheck": {"disable": True}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_compose_runs_the_kubernetes_topology_on_one_machine() -> None:
    assert set(SERVICES) == {
        "api",
        "worker",
        "migrate",
        "postgres",
        "redis",
        "minio",
        "minio-bucket",
    }
    options = cli_options()
    for name in CAREBOOK_SERVICES:
        command = SERVICES[name]["command"]
        assert command[0] == "carebook"
        assert [a for a in command[2:] if a.startswith("--")] == [
            a for a in command[2:] if a in options[command[1]]
        ]
    assert [SERVICES[name]["command"][1] for name in CAREBOOK_SERVICES] == [
        "serve",
        "worker",
        "migrate",
    ]


def test_every_carebook_variable_is_a_real_setting() -> None:
    fields = setting_env_names()
    for name in CAREBOOK_SERVICES:
        environment: dict[str, str] = SERVICES[name]["environment"]
        assert set(environment) - fields == set(), name
    for name, service in SERVICES.items():
        if name not in CAREBOOK_SERVICES:
            assert not any(k.startswith(PREFIX) for k in service.get("environment", {})), name


def _compose_settings(monkeypatch: pytest.MonkeyPatch, service: str) -> Settings:
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in SERVICES[service]["environment"].items():
        # The one interpolated value: the operator's own secret.
        monkeypatch.setenv(name, "j" * 48 if value.startswith("${") else value)
    return Settings()


@pytest.mark.parametrize("service", CAREBOOK_SERVICES)
def test_the_environment_makes_valid_production_settings(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    settings = _compose_settings(monkeypatch, service)
    assert settings.environment == "production"
    assert settings.database_url is not None
    assert settings.database_url.split("@")[1].startswith("postgres:")
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.storage_backend == "s3"
    assert settings.s3_endpoint_url == "http://minio:9000"
    # The bucket the one-shot service creates, with the credentials MinIO was started with.
    bucket = SERVICES["minio-bucket"]["environment"]
    minio = SERVICES["minio"]["environment"]
    assert settings.s3_bucket == bucket["BUCKET"]
    assert settings.s3_access_key_id is not None
    assert settings.s3_secret_access_key is not None
    assert settings.s3_access_key_id.get_secret_value() == minio["MINIO_ROOT_USER"]
    assert settings.s3_secret_access_key.get_secret_value() == minio["MINIO_ROOT_PASSWORD"]


def test_the_jwt_secret_comes_from_the_operator_and_is_required() -> None:
    value = SERVICES["api"]["environment"]["CAREBOOK_JWT_SECRET"]
    assert value.startswith("${CAREBOOK_JWT_SECRET:?")  # compose refuses to start without it


def test_the_bucket_service_creates_the_bucket_idempotently() -> None:
    script = SERVICES["minio-bucket"]["entrypoint"][-1]
    assert "mc mb --ignore-existing" in script
    assert '"local/$$BUCKET"' in script  # $$: left for the container's shell, not compose
    assert SERVICES["minio-bucket"]["restart"] == "no"


def test_services_start_in_order() -> None:
    def needs(service: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in SERVICES[service]["depends_on"].items()}

    assert needs("migrate") == {"postgres": "service_healthy"}
    for service in ("api", "worker"):
        assert needs(service) == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "minio-bucket": "service_completed_successfully",
        }
    assert needs("minio-bucket") == {"minio": "service_healthy"}
    # Everything waited on as healthy has a health check of its own.
    for name in ("postgres", "redis", "minio"):
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD"


def test_health_checks_use_the_apps_routes_and_the_workers_check() -> None:
    api = " ".join(SERVICES["api"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:(\d+)(/[a-z/]+)", api)
    assert path is not None
    assert path.group(2) == "/health/ready"
    assert path.group(2) in app_paths()
    serve = SERVICES["api"]["command"]
    assert path.group(1) == serve[serve.index("--port") + 1]
    assert SERVICES["worker"]["healthcheck"]["test"] == ["CMD", "carebook", "worker", "--check"]
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}


def test_the_api_is_given_time_to_finish_requests_when_stopped() -> None:
    assert _seconds(SERVICES["api"]["stop_grace_period"]) > GRACEFUL_SHUTDOWN_SECONDS


def test_published_ports_stay_on_this_machine() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), name


def test_carebook_containers_run_like_the_kubernetes_pods() -> None:
    for name in CAREBOOK_SERVICES:
        service = SERVICES[name]
        assert service["read_only"] is True
        assert TMP in {mount.split(":")[0] for mount in service["tmpfs"]}
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def _dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined; comments and parser directives dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    assert current == ""
    result = []
    for entry in logical:
        keyword, _, arguments = entry.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))
    return result


def _stages() -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in _dockerfile():
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "an instruction before the first FROM"
        stages[-1].append(instruction)
    return stages


def test_the_image_is_built_in_stages_from_slim_python() -> None:
    stages = _stages()
    assert len(stages) >= 2
    names = [stage[0].arguments.split() for stage in stages]
    assert all(words[0] == "python:3.11-slim" and words[1].upper() == "AS" for words in names)
    final = stages[-1]
    # The runtime takes the builder's wheels, offline: nothing is compiled or downloaded there.
    run = " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert "from=builder" in run
    assert "--no-index" in run


def test_the_final_stage_has_no_compilers() -> None:
    final = _stages()[-1]
    installs = " ".join(i.arguments for i in final if i.keyword == "RUN")
    for tool in ("build-essential", "gcc", "g++", "make"):
        assert not re.search(rf"\b{re.escape(tool)}\b", installs), tool
    # The builder may have them: that is where they belong.
    assert "build-essential" in " ".join(i.arguments for i in _stages()[0])


def test_the_final_stage_runs_as_an_unprivileged_numeric_user() -> None:
    final = _stages()[-1]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "the runtime stage never leaves root"
    last = users[-1]
    user, _, group = last.partition(":")
    assert user == IMAGE_UID
    assert group in {"", IMAGE_UID}
    # Nothing after USER switches back to root or runs as it.
    after = final[[i.arguments for i in final].index(last) :]
    assert not any(
        i.keyword == "USER" and i.arguments.split(":")[0] in {"root", "0"} for i in after
    )
    creates = " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert f"--uid {IMAGE_UID}" in creates


def test_the_image_exposes_the_api_and_serves_it_by_default() -> None:
    final = _stages()[-1]
    assert [i.arguments for i in final if i.keyword == "EXPOSE"] == ["8000"]
    (cmd,) = [json.loads(i.arguments) for i in final if i.keyword == "CMD"]
    assert cmd[:2] == ["carebook", "serve"]
    assert cmd[cmd.index("--port") + 1] == "8000"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - inside the container
    (healthcheck,) = [i.arguments for i in final if i.keyword == "HEALTHCHECK"]
    options, _, command = healthcheck.partition("CMD ")
    assert all(word.startswith("--") for word in options.split())
    probe = json.loads(command)
    assert probe[:2] == ["python", "-c"]
    path = re.search(r"http://127\.0\.0\.1:8000(/[a-z/]+)", probe[2])
    assert path is not None
    assert path.group(1) in app_paths()
