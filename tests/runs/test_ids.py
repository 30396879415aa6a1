"""Ids: UUIDv7 strings that sort in creation order; ``is_id`` accepts exactly the canonical
spelling (what ``str(uuid.UUID(...))`` writes)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from runs.ids import is_id, new_id


def test_new_ids_are_canonical_version_7_uuids_in_creation_order() -> None:
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for value in ids[:50]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert is_id(value)


@given(st.uuids())
def test_is_id_accepts_the_canonical_spelling_only(value: uuid.UUID) -> None:
    text = str(value)
    assert is_id(text)
    assert not is_id(text.upper())
    assert not is_id(value.hex)
    assert not is_id("{" + text + "}")
    assert not is_id(text + "\n")
    assert not is_id(" " + text)


@given(st.text(max_size=40))
def test_is_id_agrees_with_the_uuid_module(text: str) -> None:
    try:
        canonical = str(uuid.UUID(text)) == text
    except ValueError:
        canonical = False
    assert is_id(text) == canonical
