"""What every request meets at the API boundary, on SQLite and PostgreSQL: text no store or
encoder can hold (NUL, unpaired surrogates) is a 400 naming the field, never a 500; numbers
and booleans are not read out of strings; a wrong method is a 405 with the path's whole
``Allow``; and the OpenAPI document lists each operation's error statuses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from runyard.domain.text import UNSTORABLE_TEXT
from tests.fixtures.graphs import text_to_image_workflow
from tests.integration.conftest import PASSWORD, Account, Accounts, assert_error, ok
from tests.integration.test_dashboard import Browser, field_errors, nonce_of, sign_in

API = "/api/v1"
NUL = "\x00"
LONE = "\ud800"  # a high surrogate with no low one after it


async def send(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    """``body`` as JSON with ASCII escapes (``\\ud800``): httpx's own encoder cannot write a
    lone surrogate, a client in another language can."""
    return await client.request(
        method,
        path,
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )


@pytest.fixture
async def browsers() -> AsyncIterator[list[Browser]]:
    opened: list[Browser] = []
    yield opened
    for browser in opened:
        await browser.http.aclose()


def refused(response: httpx.Response, where: str) -> None:
    assert_error(response, 400, exact=f"{where}: {UNSTORABLE_TEXT}")


async def test_anonymous_sign_in_and_sign_up_refuse_nul_and_lone_surrogates(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    login = {"email_address": f"p{NUL}@example.com", "user_password": PASSWORD}
    refused(await send(client, "POST", f"{API}/auth/login", login, {}), "email_address")
    login = {"email_address": "p@example.com", "user_password": f"pw{LONE}"}
    refused(await send(client, "POST", f"{API}/auth/login", login, {}), "user_password")
    register: dict[str, Any] = {"email_address": "new@example.com", "user_password": PASSWORD}
    for field in ("first_name", "last_name", "display_name"):
        for bad in (NUL, LONE):
            body = {**register, field: f"Ann{bad}"}
            refused(await send(client, "POST", f"{API}/auth/register", body, {}), field)
    refresh = {"refresh_token": f"x{NUL}"}
    refused(await send(client, "POST", f"{API}/auth/refresh", refresh, {}), "refresh_token")
    # Nothing was stored: the address is still free, and a paired emoji is fine.
    fine = {**register, "display_name": "Ann \U0001f600"}
    ok(await send(client, "POST", f"{API}/auth/register", fine, {}))


async def test_names_descriptions_and_nested_run_parameters_are_checked(
    accounts: Accounts,
) -> None:
    owner = await accounts.signup("owner")
    headers = owner.headers()
    client = owner.client
    for method, path in (("POST", "/teams"), ("PUT", "/teams/current")):
        body = {"display_name": f"Studio{NUL}"}
        refused(await send(client, method, f"{API}{path}", body, headers), "display_name")
    workflow = text_to_image_workflow("t2i")
    for field in ("display_name", "description"):
        body = {**workflow, field: f"x{LONE}"}
        refused(await send(client, "POST", f"{API}/workflows/import", body, headers), field)
    nested = {**workflow, "parameters": [{**workflow["parameters"][0], "label": f"a{NUL}"}]}
    refused(
        await send(client, "POST", f"{API}/workflows/import", nested, headers),
        "parameters[0].label",
    )
    workflow_id = ok(await owner.request("POST", f"{API}/workflows/import", json=workflow))["id"]
    wf_path = f"{API}/workflows/{workflow_id}"
    refused(await send(client, "PUT", wf_path, {"description": NUL}, headers), "description")

    run = f"{API}/r/workflows/{workflow_id}/run"
    bad_run = {"parameters": {"prompt": f"a cat{LONE}"}}
    refused(await send(client, "POST", run, bad_run, headers), "parameters.prompt")
    deep = {"parameters": {"prompt": "x", "extra": {"list": [1, {"v": NUL}]}}}
    refused(await send(client, "POST", run, deep, headers), "parameters.extra.list[1].v")
    bad_key = {"parameters": {f"p{NUL}": "x"}}
    refused(await send(client, "POST", run, bad_key, headers), "parameters.p\\u0000")
    runs = {"runs": [{"parameters": {"prompt": "x"}}, {"parameters": {"prompt": LONE}}]}
    refused(await send(client, "POST", f"{run}s", runs, headers), "runs[1].parameters.prompt")
    # The task list is empty: nothing was queued that could never be dispatched.
    assert ok(await owner.request("GET", f"{API}/r/tasks"))["task_list"] == []
    ok(await owner.request("POST", run, json={"parameters": {"prompt": "a cat \U0001f408"}}), 202)


async def test_query_path_and_header_values_are_checked(accounts: Accounts) -> None:
    owner = await accounts.signup("owner")
    refused(
        await owner.request("GET", f"{API}/r/tasks", params={"status": f"queued{NUL}"}), "status"
    )
    refused(await owner.request("GET", f"{API}/workflows", params={"anything": NUL}), "anything")
    refused(await owner.request("GET", f"{API}/agents/gpu%00node"), "agentId")
    refused(await owner.request("GET", f"{API}/r/workflows/slug/t2i%00"), "workflowSlug")
    refused(
        await owner.request("POST", f"{API}/r/workflows/slug/x%00/run", json={}), "workflowSlug"
    )
    response = await owner.request("GET", f"{API}/members", headers={"X-Team-ID": f"t{NUL}"})
    refused(response, "x-team-id")
    # Before authentication: an anonymous caller gets the same answer, not a 401.
    refused(await owner.client.get(f"{API}/users/me", params={"q": NUL}), "q")


async def test_dashboard_forms_refuse_nul_with_a_page_not_a_500(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    http = httpx.AsyncClient(transport=client._transport, base_url="http://runyard.test")
    browsers.append(Browser(http, owner))
    form = await http.get("/login")
    login = {"email": f"{owner.email}{NUL}", "password": PASSWORD, "nonce": nonce_of(form.text)}
    response = await http.post("/login", data=login)
    assert response.status_code == 400 and "text/html" in response.headers["content-type"]
    assert f"email: {UNSTORABLE_TEXT}" in response.text

    browser = await sign_in(client, owner)
    browsers.append(browser)
    response = await browser.post("/teams", {"display_name": f"Studio{NUL}"})
    assert response.status_code == 400
    assert f"display_name: {UNSTORABLE_TEXT}" in response.text
    workflow = text_to_image_workflow("t2i")
    graph = workflow["workflow_json"]
    first = next(iter(graph))
    graph[first]["inputs"]["note"] = f"a{NUL}"
    response = await browser.post(
        "/workflows/import",
        {
            "workflow_slug": "t2i",
            "workflow_json": json.dumps(graph),  # "\u0000" in the text, NUL once decoded
            "parameters": json.dumps([{**workflow["parameters"][0], "label": f"a{LONE}"}]),
        },
    )
    assert response.status_code == 400
    errors = field_errors(response.text)
    assert errors["parameters"] == f"parameters[0].label: {UNSTORABLE_TEXT}"
    assert errors["workflow_json"] == f"workflow_json.{first}.inputs.note: {UNSTORABLE_TEXT}"


async def test_numbers_and_booleans_are_not_read_from_strings(accounts: Accounts) -> None:
    owner = await accounts.signup("owner")
    workflow = text_to_image_workflow("t2i")
    for field, value in (("task_timeout", "300"), ("max_retries", "1"), ("min_vram_gb", "8")):
        response = await owner.request(
            "POST", f"{API}/workflows/import", json={**workflow, field: value}
        )
        assert_error(response, 400, f"{field}: Input should be a valid integer")
    flag = {**workflow["parameters"][0], "required": "true"}
    response = await owner.request(
        "POST", f"{API}/workflows/import", json={**workflow, "parameters": [flag]}
    )
    assert_error(response, 400, "parameters[0].required: Input should be a valid boolean")
    workflow_id = ok(await owner.request("POST", f"{API}/workflows/import", json=workflow))["id"]
    run = f"{API}/r/workflows/{workflow_id}/run"
    response = await owner.request(
        "POST", run, json={"parameters": {"prompt": "x"}, "priority": "5"}
    )
    assert_error(response, 400, exact="priority: Input should be a valid integer")
    response = await owner.request(
        "POST",
        f"{API}/credentials",
        json={"kind": "integration", "display_name": "k", "expires_in_days": "30"},
    )
    assert_error(response, 400, "expires_in_days: Input should be a valid integer")
    # The same values as JSON numbers, enums as strings and query numbers still parse.
    ok(
        await owner.request(
            "POST", run, json={"parameters": {"prompt": "x"}, "priority": 5, "target_pool": "team"}
        ),
        202,
    )
    listed = ok(
        await owner.request("GET", f"{API}/r/tasks", params={"per_page": "5", "status": "pending"})
    )
    assert listed["page_meta"]["per_page"] == 5


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/teams/current", "DELETE, GET, PUT"),
        ("OPTIONS", "/teams/current", "DELETE, GET, PUT"),
        ("POST", "/workflows/019a0000-0000-7000-8000-000000000000", "DELETE, GET, PUT"),
        ("DELETE", "/invitations/accept", "POST"),
        ("GET", "/invitations/accept", "POST"),
        ("GET", "/workflows/import", "POST"),
        ("DELETE", "/workflows", "GET, POST"),
        ("OPTIONS", "/objects/inputs/x/y.png", "GET, HEAD, PUT"),
    ],
)
async def test_a_wrong_method_is_405_with_every_method_of_the_path(
    client: httpx.AsyncClient, accounts: Accounts, method: str, path: str, allow: str
) -> None:
    owner: Account = await accounts.signup("owner")
    for headers in ({}, owner.headers()):  # anonymous or not: the method is wrong either way
        response = await client.request(method, f"{API}{path}", headers=headers)
        assert_error(response, 405, exact="method not allowed")
        assert response.headers["allow"] == allow


async def test_every_operation_documents_its_errors(client: httpx.AsyncClient) -> None:
    document = ok(await client.get(f"{API}/openapi.json"))
    schemas = document["components"]["schemas"]
    assert schemas["ErrorBody"]["required"] == ["error_message"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == error_ref
            if not path.startswith(f"{API}/"):
                continue
            checked += 1
            expected = {"400"}
            if operation.get("security"):
                expected |= {"401", "403", "404"}
            if any(p["in"] == "path" for p in operation.get("parameters", [])):
                expected.add("404")
            if "requestBody" in operation:
                expected.add("413")
            if method in ("post", "put", "delete"):
                expected.add("409")
            assert expected <= set(responses), (method, path, sorted(responses))
    assert checked > 60
    login = document["paths"][f"{API}/auth/login"]["post"]["responses"]
    assert {"401", "429"} <= set(login) and "Retry-After" in login["429"]["headers"]
