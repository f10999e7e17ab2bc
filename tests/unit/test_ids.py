from __future__ import annotations

import uuid

from runyard.domain.ids import new_id, parse_id


def test_new_ids_are_uuid7_and_strictly_increasing() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_parse_id_normalises_or_refuses() -> None:
    value = new_id()
    assert parse_id(value.upper()) == value
    assert parse_id("sk-abcdef") is None
    assert parse_id("") is None
