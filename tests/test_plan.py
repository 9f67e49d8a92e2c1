"""The launch plan (no compiler needed): operands and their strides, the choice of kernel family, tile
and split-K, and the launches (batching, arguments)."""
from __future__ import annotations

import plan_table


def test_the_plan_chooses_as_the_recorded_table():
    """Every product the tests sweep (training layers, kernel-test shapes, stacks; every dtype, TF32 off
    and on, aligned and unaligned operands) is planned as tests/data/plan_choices.json records."""
    recorded, planned = plan_table.load(), plan_table.record()
    assert planned.keys() == recorded.keys()
    moved = {key: (recorded[key], planned[key]) for key in recorded if planned[key] != recorded[key]}
    assert not moved, f"{len(moved)} plans differ from the table, e.g. {next(iter(moved.items()))}"
