"""The network figure and the per-stage preset table are read back and checked against the module."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from mednext_lite import create_mednext, preset_config
from mednext_lite.diagram import (
    draw_network,
    format_stage_table,
    network_parts,
    preset_stage_rows,
    shape_text,
)
from mednext_lite.losses import deep_supervision_weights, make_loss
from mednext_lite.model import STAGE_NAMES


def _texts(fig) -> dict[str, str]:
    """Every labelled text of the drawing, by its gid."""
    return {t.get_gid(): t.get_text() for t in fig.axes[0].texts if t.get_gid()}


def test_preset_b_labels_show_its_ratios_blocks_and_shapes_at_128_cubed():
    texts = _texts(draw_network(preset_config("B", 1, 3, deep_supervision=True), 128))
    stage = [texts[f"stage:{name}"] for name in STAGE_NAMES]
    assert [int(re.search(r"R=(\d+)", t).group(1)) for t in stage] == [2, 3, 4, 4, 4, 4, 4, 3, 2]
    assert [int(re.search(r"B=(\d+)", t).group(1)) for t in stage] == [2] * 9
    shapes = [t.splitlines()[-1] for t in stage]
    assert shapes == ["32×128³", "64×64³", "128×32³", "256×16³", "512×8³", "256×16³", "128×32³", "64×64³", "32×128³"]
    # down block i uses R of stage i+1; the up block feeding decoder level i uses R of stage 8-i
    assert [texts[f"down:{i}"] for i in range(4)] == ["down ×2\nR=3", "down ×2\nR=4", "down ×2\nR=4", "down ×2\nR=4"]
    assert [texts[f"up:{i}"] for i in range(4)] == ["up ×2\nR=2", "up ×2\nR=3", "up ×2\nR=4", "up ×2\nR=4"]
    assert all(texts[f"add:{i}"] == "+" for i in range(4))  # additive skips, one per level
    assert "input\n1×128³" == texts["input:0"]


def test_head_weights_shown_are_the_losses_and_sum_to_one():
    texts = _texts(draw_network(preset_config("S", 1, 3, deep_supervision=True), 128))
    shown = [Fraction(re.search(r"w=([\d/]+)", texts[f"head:{i}"]).group(1)) for i in range(5)]
    assert sum(shown) == 1 and shown[-1] == 0
    assert [float(w) for w in shown] == pytest.approx(deep_supervision_weights(5))
    assert make_loss().weights is None  # the trainer's loss (train.py: make_loss()) falls back to that function
    heads = [texts[f"head:{i}"].splitlines()[1] for i in range(5)]
    assert heads == ["3×128³", "3×64³", "3×32³", "3×16³", "3×8³"]


def test_without_deep_supervision_one_head_weighted_one():
    parts = network_parts(preset_config("S", 1, 2), 64)
    heads = [p for p in parts if p["kind"] == "head"]
    assert len(heads) == 1 and heads[0]["weight"] == 1.0 and heads[0]["shape"] == (2, 64, 64, 64)


def test_2d_and_a_model_instance_work():
    model = create_mednext("M", 2, 4, spatial_dims=2, deep_supervision=True)
    parts = network_parts(model, (256, 128))
    stages = {p["name"]: p for p in parts if p["kind"] == "stage"}
    assert stages["bottleneck"]["shape"] == (512, 16, 8) and stages["enc0"]["shape"] == (32, 256, 128)
    assert [stages[n]["blocks"] for n in STAGE_NAMES] == list(model.config.block_counts)
    texts = _texts(draw_network(model, (256, 128)))
    assert texts["stage:dec0"].endswith("32×256×128") and "4×16×8" in texts["head:4"]
    assert shape_text((32, 64, 64)) == "32×64²"


def test_bad_input_size_is_refused_by_the_models_own_check():
    with pytest.raises(ValueError, match="not divisible by 16"):
        network_parts(preset_config("S"), 100)


def test_stage_table_of_the_v2_presets_names_their_width():
    rows = preset_stage_rows(family="all")
    assert [r["variant"] for r in rows] == ["S", "B", "M", "L", "V2-B", "V2-W"]
    table = format_stage_table(rows)
    assert "| V2-B | R3 B3 |" in table and "61,969,507" in table
    assert "| V2-W (C=64) | R3 B3 |" in table and "246,536,387" in table


def test_stage_table_reproduces_the_reference_parameter_counts():
    rows = preset_stage_rows(kernel_size=3, spatial_dims=3)
    assert {r["variant"]: r["params"] for r in rows} == {
        "S": 5_550_947, "B": 10_526_339, "M": 17_548_995, "L": 61_779_299}
    by = {r["variant"]: r for r in rows}
    assert by["L"]["R"] == (3, 4, 8, 8, 8, 8, 8, 4, 3) and by["M"]["B"] == (3, 4, 4, 4, 4, 4, 4, 4, 3)
    assert by["S"]["widths"] == (32, 64, 128, 256, 512, 256, 128, 64, 32)
    table = format_stage_table(rows)
    assert "| L | R3 B3 | R4 B4 | R8 B8 |" in table and "61,779,299" in table
    assert {r["params"] for r in preset_stage_rows(kernel_size=5, spatial_dims=2)} == {
        5_542_179, 10_517_571, 17_534_467, 61_754_531}
