"""The dashboard's pure session helpers: CSRF tokens, Origin checks, where sign-in may lead."""

from __future__ import annotations

from runyard.services.web_sessions import csrf_token, csrf_valid, origin_allowed
from runyard.web.session import safe_next


def test_csrf_token_is_bound_to_the_session() -> None:
    token = csrf_token("session-one")
    assert csrf_valid("session-one", token)
    assert not csrf_valid("session-two", token)
    assert not csrf_valid("session-one", "")
    assert not csrf_valid("session-one", None)


def test_origin_must_be_this_server_as_addressed_or_published() -> None:
    public = "https://runyard.example.com"
    assert origin_allowed(None, "127.0.0.1:8080", "http", public)  # no Origin: token decides
    assert origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080", "http", public)
    assert origin_allowed("https://runyard.example.com", "10.0.0.5:8080", "http", public)
    assert not origin_allowed("https://evil.example", "127.0.0.1:8080", "http", public)
    assert not origin_allowed("null", "127.0.0.1:8080", "http", public)
    assert not origin_allowed("http://127.0.0.1:9999", "127.0.0.1:8080", "http", public)


def test_sign_in_only_leads_to_paths_of_this_server() -> None:
    assert safe_next("/tasks?status=failed") == "/tasks?status=failed"
    for bad in (None, "", "https://evil.example/", "//evil.example", "/\\evil.example", "tasks"):
        assert safe_next(bad) == "/"
