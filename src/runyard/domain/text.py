"""Text every store and every encoder can hold: no NUL character (PostgreSQL refuses it in
``text``) and no unpaired surrogate (no UTF-8 encoding, so no JSON, frame or row can carry it).

One rule for every field: the API checks each decoded string of a request (and each key of its
JSON body) and each parameter, the dashboard each form field, with the functions here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: What the user reads after the field's name.
UNSTORABLE_TEXT = "text must not contain NUL characters or unpaired surrogates"

# A decoded ``str`` holds a surrogate code point only when it was unpaired: a JSON
# ``\ud83d\ude00`` pair decodes to one character (U+1F600).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def is_storable(text: str) -> bool:
    """True when ``text`` has no NUL and no unpaired surrogate."""
    if text.isascii():  # the common case, checked at C speed
        return "\x00" not in text
    return _UNSTORABLE.search(text) is None


def printable(text: str) -> str:
    """``text`` with every unstorable character written as ``\\uXXXX``: safe to echo in an
    error message (a lone surrogate would break the JSON response itself)."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def find_unstorable(value: Any, path: str = "") -> str | None:
    """The path of the first string or object key in a decoded JSON ``value`` that is not
    storable (``parameters.prompt``, ``runs[1].parameters``), or None when all are.

    A bad key is named by its parent and itself, escaped (``parameters.a\\u0000``). Walks
    with its own stack, so nesting as deep as the JSON decoder allows cannot overflow Python's.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not is_storable(item):
                return where or "body"
        elif isinstance(item, dict):
            children: list[tuple[Any, str]] = []
            for key, child in item.items():
                name = str(key)
                if not is_storable(name):
                    return _member(where, printable(name))
                children.append((child, _member(where, name)))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


def first_unstorable(fields: Iterable[tuple[str, str]]) -> str | None:
    """The name of the first ``(name, text)`` pair whose name or text is not storable (query
    parameters, form fields, headers), escaped for an error message; None when all are."""
    for name, text in fields:
        if not (is_storable(name) and is_storable(text)):
            return printable(name)
    return None
