"""`runyard server` and `runyard admin bootstrap` as separate processes, as operators run them."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx

from tests.e2e.conftest import RUNYARD, ServerProcess, runyard_env


def test_server_serves_api_health_and_openapi(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    spec = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    assert "/api/v1/auth/login" in spec["paths"]

    email, password = "ops@example.com", "a-long-password"
    registered = httpx.post(
        f"{server.url}/api/v1/auth/register",
        json={"email_address": email, "user_password": password},
    )
    assert registered.status_code == 200, registered.text
    tokens = httpx.post(
        f"{server.url}/api/v1/auth/login",
        json={"email_address": email, "user_password": password},
    ).json()
    me = httpx.get(
        f"{server.url}/api/v1/users/me",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert me.json()["email_address"] == email

    # A stack trace never reaches the client; secrets never reach the log.
    bad = httpx.post(
        f"{server.url}/api/v1/auth/login",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 400
    assert bad.json() == {"error_message": "malformed JSON body"}
    untyped = httpx.post(f"{server.url}/api/v1/auth/login", content=b"email=x")
    assert untyped.status_code == 400
    assert "must be a JSON object" in untyped.json()["error_message"]

    server.proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises SIGTERM after a graceful shutdown, so the exit status is -SIGTERM.
    assert server.proc.wait(timeout=15) in (0, -signal.SIGTERM)
    logs = server.logs()
    assert '"event": "server_stopped"' in logs
    assert tokens["access_token"] not in logs
    assert tokens["refresh_token"] not in logs
    assert password not in logs
    assert '"path": "/api/v1/users/me"' in logs


def test_admin_bootstrap_creates_owner_team_and_key(db_url: str, tmp_path: Path) -> None:
    args = [
        *RUNYARD,
        "admin",
        "bootstrap",
        "--email",
        "Root@Example.com",
        "--password",
        "bootstrap-pass",
        "--team-name",
        "Render Farm",
        "--json",
        "--data-dir",
        str(tmp_path),
    ]
    env = runyard_env(db_url)
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert set(out) == {"user_id", "team_id", "api_key"}
    assert out["api_key"].startswith("sk-")

    # Running it again reuses the user and team and mints a second key.
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    out2 = json.loads(again.stdout)
    assert (out2["user_id"], out2["team_id"]) == (out["user_id"], out["team_id"])
    assert out2["api_key"] != out["api_key"]

    wrong = [*args]
    wrong[wrong.index("bootstrap-pass")] = "another-password"
    refused = subprocess.run(wrong, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "different password" in refused.stderr
