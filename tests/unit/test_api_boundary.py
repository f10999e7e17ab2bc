"""The pieces of the API boundary that need no request: the text rule, which template of a
path is the more specific one, and that the routers list no route where a less specific one
before it would take its requests."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from runyard.api.boundary import dominates, route_table
from runyard.domain.text import find_unstorable, first_unstorable, is_storable, printable


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    from runyard.app import create_app
    from runyard.config import Settings

    return create_app(Settings(data_dir=tmp_path_factory.mktemp("data")))


@pytest.mark.parametrize(
    ("text", "storable"),
    [
        ("plain", True),
        ("ünïcödé and 猫", True),
        ("\U0001f600", True),  # a pair in JSON, one character once decoded
        ("a\x00b", False),
        ("\ud800", False),
        ("x\udfffy", False),
        ("é\x00", False),
    ],
)
def test_storable_text(text: str, storable: bool) -> None:
    assert is_storable(text) is storable


def test_the_first_bad_string_or_key_is_named_by_its_path() -> None:
    body = {"ok": ["a", {"deep": "fine"}], "runs": [{"p": "x"}, {"p": {"k": ["\x00"]}}]}
    assert find_unstorable(body) == "runs[1].p.k[0]"
    assert find_unstorable({"params": {"a\ud800": 1}}) == "params.a\\ud800"
    assert find_unstorable("\x00") == "body"
    assert find_unstorable({"n": 1, "b": True, "z": None, "s": "fine"}) is None
    assert printable("a\x00\ud800") == "a\\u0000\\ud800"
    assert first_unstorable([("a", "b"), ("c", "d\x00")]) == "c"
    assert first_unstorable([("a\x00", "b")]) == "a\\u0000"


def test_nesting_as_deep_as_json_allows_does_not_overflow() -> None:
    value: object = "\x00"
    for _ in range(50_000):
        value = [value]
    where = find_unstorable(value)
    assert where is not None and where.endswith("[0]" * 3)


def test_dominance() -> None:
    accept = ("api", "invitations", "accept")
    by_id = ("api", "invitations", None)
    assert dominates(accept, by_id) and not dominates(by_id, accept)
    assert not dominates(by_id, by_id)
    assert not dominates(("a", None, "c"), ("a", "b", None))  # neither is more specific
    assert not dominates(("a",), ("a", None))


def test_no_route_is_hidden_behind_a_less_specific_one(app: FastAPI) -> None:
    """A route with a method its path's more specific template also has must come after that
    template's route, or the router would hand it that template's requests."""
    table = route_table(app)
    order = {id(t.context.original_route): i for i, t in enumerate(table.templates)}
    for template in table.templates:
        over = table.shadowed_by.get(id(template.context.original_route), ())
        for other in over:
            if other.methods & template.methods:
                mine = order[id(template.context.original_route)]
                assert order[id(other.context.original_route)] < mine, (
                    other.context.path,
                    template.context.path,
                )
    # What the table knows today: the literal paths beside an {id}.
    shadowed = {
        t.context.path for t in table.templates if id(t.context.original_route) in table.shadowed_by
    }
    assert "/api/v1/invitations/{invitationId}" in shadowed
    assert "/api/v1/workflows/{workflowId}" in shadowed


def test_every_documented_status_has_a_description() -> None:
    from runyard.api import openapi

    extra = {s for statuses in openapi.EXTRA.values() for s in statuses}
    assert extra | {400, 401, 403, 404, 409, 413} <= set(openapi.DESCRIPTIONS)
