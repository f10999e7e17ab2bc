"""Object keys, names and link signatures: the pure parts of object storage."""

from __future__ import annotations

import pytest

from runyard.objects.keys import (
    BadName,
    check_content_type,
    check_file_name,
    check_key,
    check_relative_name,
    content_disposition,
    input_key,
    output_key,
)
from runyard.objects.signing import LinkSigner, derive_key


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b.png", "a\\b.png", "/etc/passwd", "a\x00.png", "x" * 256]
)
def test_file_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(BadName):
        check_file_name(name)


@pytest.mark.parametrize("name", ["photo.png", "é.png", "my photo (1).PNG", "..hidden", "a..b"])
def test_plain_file_names_pass(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/abs", "a\\b", "a//b", "./a", "a/", "a\x1fb"]
)
def test_output_names_are_relative_and_plain(name: str) -> None:
    with pytest.raises(BadName):
        check_relative_name(name)
    with pytest.raises(BadName):
        output_key("t", 1, name)


def test_keys() -> None:
    assert input_key("team", "up", "a.png") == "inputs/team/up/a.png"
    assert output_key("task", 2, "sub/ComfyUI_00001_.png") == "tasks/task/2/sub/ComfyUI_00001_.png"
    for key in ("../x", ".tmp/x", "a/./b", "/x", ""):
        with pytest.raises(BadName):
            check_key(key)


def test_content_types() -> None:
    assert check_content_type("Image/PNG") == "image/png"
    assert check_content_type("application/vnd.api+json") == "application/vnd.api+json"
    for bad in ("png", "image/png; q=1", "image/", "/png", "a b/c"):
        with pytest.raises(BadName):
            check_content_type(bad)


def test_content_disposition_keeps_the_name_and_escapes_quotes() -> None:
    header = content_disposition('a "b" é.png')
    assert header.startswith('attachment; filename="a _b_ ?.png"')
    assert "filename*=UTF-8''a%20%22b%22%20%C3%A9.png" in header


def test_link_signatures() -> None:
    signer = LinkSigner("server secret")
    params = {"expires": "100", "size": "5"}
    params["sig"] = signer.sign("PUT", "k/a.png", params)
    assert signer.verify("PUT", "k/a.png", params)
    assert not signer.verify("GET", "k/a.png", params)
    assert not signer.verify("PUT", "k/b.png", params)
    assert not signer.verify("PUT", "k/a.png", {**params, "size": "6"})
    assert not signer.verify("PUT", "k/a.png", {**params, "extra": "1"})
    assert not LinkSigner("another secret").verify("PUT", "k/a.png", params)
    # The link key is derived: it is not the secret that signs sessions.
    assert derive_key("server secret") != b"server secret"
