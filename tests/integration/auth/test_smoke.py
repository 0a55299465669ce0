from __future__ import annotations

import httpx

from tests.fixtures.app import Accounts


async def test_register_then_login_then_me(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/v1/auth/register",
        json={"email": "Ada@Example.com", "password": "s3cret-pass", "full_name": "Ada"},
    )
    assert created.status_code == 201, created.text
    token = await client.post(
        "/v1/auth/token", json={"email": "ada@example.com", "password": "s3cret-pass"}
    )
    assert token.status_code == 200
    me = await client.get(
        "/v1/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert me.json()["email"] == "Ada@example.com"
    assert me.json()["role"] == "patient"


async def test_accounts_fixture_logs_in(accounts: Accounts, client: httpx.AsyncClient) -> None:
    account = await accounts.create()
    me = await client.get("/v1/me", headers=account.headers)
    assert me.status_code == 200
    assert me.json()["id"] == str(account.id)
