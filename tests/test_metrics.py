"""Scores of label maps: Dice and HD95 numbers and the score accumulator shared by training and
evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mednext_lite.metrics import ScoreAccumulator, dice_scores, hd95_scores


def test_dice_and_hd95_numbers():
    label = torch.zeros(1, 1, 10, 10, 10, dtype=torch.long)
    label[0, 0, :5] = 1
    label[0, 0, 8:] = 2
    pred = label.clone()
    pred[0, 0, 4] = 0  # class 1: 400 of 500 voxels found -> Dice 800/900
    d = dice_scores(pred, label, 3)
    assert d.shape == (1, 2)
    assert d[0, 0].item() == pytest.approx(800 / 900)
    assert d[0, 1].item() == pytest.approx(1.0)
    # A class absent from both counts as perfect, never NaN.
    assert dice_scores(torch.zeros_like(label), torch.zeros_like(label), 3).tolist() == [[1.0, 1.0]]
    h = hd95_scores(pred, label, 3, spacing=(2.0, 1.0, 1.0))
    assert h[0, 1].item() == pytest.approx(0.0)
    assert h[0, 0].item() == pytest.approx(2.0)  # the missing slab is one voxel of 2 mm along x


# -- the score accumulator shared by training and evaluation ------------------------------------

def _two_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Case 1: class 1 misses one slab of 100 voxels (Dice 800/900, HD95 2 mm at 2 mm spacing
    along x), class 2 exact. Case 2: class 1 exact, class 2 missing from the prediction (Dice 0,
    no finite HD95)."""
    label = torch.zeros(1, 1, 10, 10, 10, dtype=torch.long)
    label[0, 0, :5] = 1
    label[0, 0, 8:] = 2
    first = label.clone()
    first[0, 0, 4] = 0
    second = label.clone()
    second[second == 2] = 0
    return [(first, label), (second, label)]


def _same(a: dict, b: dict) -> bool:
    # NaN-aware equality of two summaries.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_score_accumulator_means_on_a_hand_made_case():
    (p1, y1), (p2, y2) = _two_cases()
    acc = ScoreAccumulator(3, hd95=True)
    dice, hd = acc.add(p1, y1, spacing=(2.0, 1.0, 1.0))
    assert dice == pytest.approx([800 / 900, 1.0]) and hd == pytest.approx([2.0, 0.0])
    dice, hd = acc.add(p2, y2, spacing=(2.0, 1.0, 1.0))
    assert dice == pytest.approx([1.0, 0.0]) and hd[0] == 0.0 and math.isnan(hd[1])
    s = acc.summary(["head", "tail"])
    assert s["n"] == 2
    assert s["dice"] == pytest.approx({"head": (800 / 900 + 1) / 2, "tail": 0.5})
    assert s["mean_dice"] == pytest.approx(((800 / 900 + 1) / 2 + 0.5) / 2)
    # The case without a finite HD95 for the tail is counted apart, not averaged in as 0 or inf.
    assert acc.hd95_count.tolist() == [2.0, 1.0]
    assert s["hd95"] == pytest.approx({"head": 1.0, "tail": 0.0})
    assert s["mean_hd95"] == pytest.approx(0.5)
    # A class no case has an HD95 for is NaN, and left out of the mean over classes.
    only = ScoreAccumulator(3, hd95=True)
    only.add(p2, y2)
    s = only.summary(["head", "tail"])
    assert s["hd95"]["head"] == 0.0 and math.isnan(s["hd95"]["tail"]) and s["mean_hd95"] == 0.0
    # Without hd95 the summary has no HD95 keys, and add returns None for them.
    plain = ScoreAccumulator(3)
    assert plain.add(p1, y1)[1] is None
    assert set(plain.summary(["head", "tail"])) == {"dice", "mean_dice", "n"}


def test_score_accumulator_packed_round_trip_and_shards_add_up():
    cases = _two_cases()
    whole, shards = ScoreAccumulator(3, hd95=True), [ScoreAccumulator(3, hd95=True) for _ in cases]
    for (p, y), shard in zip(cases, shards):
        whole.add(p, y, (2.0, 1.0, 1.0))
        shard.add(p, y, (2.0, 1.0, 1.0))
    packed = whole.packed()
    assert packed.dtype == torch.float64 and packed.shape == (7,)
    assert packed.tolist() == pytest.approx([800 / 900 + 1, 1.0, 2.0, 0.0, 2.0, 1.0, 2.0])
    back = ScoreAccumulator.unpack(packed, 3, hd95=True)
    assert torch.equal(back.packed(), packed) and back.n == 2
    assert _same(back.summary(["a", "b"]), whole.summary(["a", "b"]))
    # What an all_reduce does: the sum of the shards' vectors is the whole's.
    summed = ScoreAccumulator.unpack(shards[0].packed() + shards[1].packed(), 3, hd95=True)
    assert torch.allclose(summed.packed(), packed, rtol=0, atol=1e-12)
    assert _same(summed.summary(["a", "b"]), whole.summary(["a", "b"]))


def test_score_accumulator_refuses_what_does_not_fit():
    acc = ScoreAccumulator(3)
    with pytest.raises(ValueError, match=r"expected 7 values"):
        ScoreAccumulator.unpack(torch.zeros(5, dtype=torch.float64), 3, hd95=False)
    with pytest.raises(ValueError, match="case count of 1.5"):
        ScoreAccumulator.unpack(torch.tensor([0.0] * 6 + [1.5]), 3, hd95=False)
    with pytest.raises(ValueError, match=r"1 class name\(s\) \['a'\] for 2 foreground"):
        acc.summary(["a"])
    label = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="one case at a time: got batches of 2"):
        acc.add(label, label)
    with pytest.raises(ValueError, match="num_classes=1"):
        ScoreAccumulator(1)
