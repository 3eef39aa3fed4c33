"""The records' fast writers give exactly the bytes of ``json.dumps(indent=2, sort_keys=True)``.

``origin.json`` and ``remove-schedule.json`` are written without ``json``'s slow indented
encoder (garbage collection rewrites them at every batch); what users and other tools
read must not change by a byte.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from unpacked.records import RemovalSchedule, ScheduledRemoval, origin_json

TEXT = st.text(max_size=12)  # any characters: quotes, backslashes, non-ASCII, controls


def _indented(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


@given(st.lists(TEXT, max_size=6))
def test_origin_json_is_the_indented_json_of_its_sorted_set(origins: list[str]) -> None:
    assert origin_json(origins) == _indented({"origin": sorted(set(origins))})


@given(st.lists(st.tuples(TEXT, TEXT, TEXT), max_size=5))
def test_the_schedule_is_the_indented_json_of_its_sorted_entries(
    entries: list[tuple[str, str, str]],
) -> None:
    schedule = RemovalSchedule(tuple(ScheduledRemoval(*entry) for entry in entries))
    ordered = sorted(schedule.entries, key=lambda e: (e.unlinked, e.image_id))
    images = [
        {"imageId": e.image_id, "reference": e.reference, "unlinked": e.unlinked} for e in ordered
    ]
    assert schedule.to_bytes() == _indented({"version": 1, "images": images})
    assert RemovalSchedule.from_bytes(schedule.to_bytes()) == RemovalSchedule(tuple(ordered))
