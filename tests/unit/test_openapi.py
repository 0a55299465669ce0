"""The published OpenAPI document is a contract: a change to it is deliberate, made by
regenerating the snapshot (`python -m tests.unit.test_openapi`), never a side effect of moving
code."""

from __future__ import annotations

import json
from pathlib import Path

from app.main import create_app
from app.settings import Settings

SNAPSHOT = Path(__file__).resolve().parents[1] / "fixtures" / "openapi.json"


def _document() -> str:
    document = create_app(Settings(environment="test", jwt_secret="s" * 48)).openapi()
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def test_openapi_document_matches_the_snapshot() -> None:
    # Compared as JSON text so that a difference reads as a diff in pytest's report.
    assert _document() == SNAPSHOT.read_text()


if __name__ == "__main__":
    SNAPSHOT.write_text(_document())
