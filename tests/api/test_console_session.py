"""The console's session: an admin token buys a signed cookie; writes need its CSRF token."""

from __future__ import annotations

import time

import httpx

from support import api_process
from task_api.auth import Authenticator

TOKENS = {"producer": ["ptok"], "consumer": [], "admin": ["atok", "btok"]}


def test_only_an_admin_token_opens_a_session_and_it_expires():
    auth = Authenticator(TOKENS, host="127.0.0.1")
    assert auth.open_session("ptok") is None and auth.open_session("nope") is None
    now = time.time()
    cookie, csrf = auth.open_session("btok", now=now)
    assert "btok" not in cookie and "btok" not in csrf
    assert auth.session_valid(cookie, now=now) and auth.session_valid(cookie, csrf, now=now)
    assert not auth.session_valid(cookie, "0." + csrf.split(".", 1)[1], now=now)
    assert not auth.session_valid(cookie, now=now + 13 * 3600)  # past its 12 hours
    expiry, signature = cookie.split(".")
    assert not auth.session_valid(f"{int(expiry) + 3600}.{signature}", now=now)  # expiry is signed
    # The token it was signed with leaves the configuration: its sessions end with it.
    assert not Authenticator({**TOKENS, "admin": ["atok"]}, host="127.0.0.1").session_valid(cookie, now=now)


async def test_login_sets_strict_httponly_cookie_and_writes_need_csrf(tmp_path):
    env = {"TASKFLEET_PRODUCER_TOKENS": "ptok", "TASKFLEET_ADMIN_TOKENS": "atok"}
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, **env) as api:
        async with httpx.AsyncClient(base_url=api.url) as http:
            assert (await http.post("/ui/login", json={"token": "ptok"})).status_code == 401
            surrogate = await http.post("/ui/login", content=b'{"token": "\\ud800"}', headers={"content-type": "application/json"})
            assert surrogate.status_code == 400 and surrogate.json()["error"]["code"] == "invalid_json"
            assert (await http.get("/ui/session")).json() == {"open": False, "signed_in": False}
            login = await http.post("/ui/login", json={"token": "atok"})
            assert login.status_code == 204
            set_cookies = login.headers.get_list("set-cookie")
            session = next(c for c in set_cookies if c.startswith("taskfleet_session="))
            assert "HttpOnly" in session and "SameSite=strict" in session and "atok" not in session
            csrf_cookie = next(c for c in set_cookies if c.startswith("taskfleet_csrf="))
            assert "HttpOnly" not in csrf_cookie
            assert (await http.get("/ui/session")).json() == {"open": False, "signed_in": True}

            created = await http.post("/api/tasks", json={"workflow": "echo", "input": {}})
            assert created.status_code == 403 and created.json()["error"]["code"] == "csrf_failed"
            csrf = http.cookies["taskfleet_csrf"]
            created = await http.post("/api/tasks", json={"workflow": "echo", "input": {}}, headers={"X-CSRF-Token": csrf})
            assert created.status_code == 201
            assert (await http.get("/api/consumers")).status_code == 200

            assert (await http.post("/ui/logout")).status_code == 204
            assert (await http.get("/api/consumers")).status_code == 401
