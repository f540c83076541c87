"""Scores of label maps: Dice, HD95, and the running sums that training and evaluation share.

Dice and HD95 come from MONAI (``compute_dice``, ``compute_hausdorff_distance``) on one-hot maps
without the background. :class:`ScoreAccumulator` keeps per-class sums rather than means, so the
shards of distributed validation add up exactly before one division. Scoring a folder of
predicted files lives in :mod:`mednext_lite.evaluation`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

__all__ = ["ScoreAccumulator", "dice_scores", "hd95_scores"]


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[N, num_classes, *spatial]`` float one-hot of integer maps ``[N, 1, *spatial]`` (or ``[N, *spatial]``)."""
    labels = torch.as_tensor(labels).long()
    if labels.ndim >= 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()


def dice_scores(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-case, per-foreground-class Dice ``[N, num_classes - 1]`` of integer maps ``[N, 1, *spatial]``.

    A class absent from both prediction and label scores 1 (nothing to find, nothing found), so
    a mean over cases is never NaN.
    """
    p, y = _one_hot(pred, num_classes), _one_hot(label, num_classes)
    return compute_dice(p, y, include_background=False, ignore_empty=False).float()


def hd95_scores(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Per-case, per-foreground-class 95th-percentile Hausdorff distance (in mm when ``spacing``
    is given, else voxels). NaN where the class is missing from prediction or label."""
    p, y = _one_hot(pred, num_classes), _one_hot(label, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own internal call trips its deprecation notice
        # A class missing from one map is expected here and answered with NaN, not a warning per case.
        warnings.filterwarnings("ignore", message=r"the (prediction|ground truth) of class \w+ is all 0", category=UserWarning)
        out = compute_hausdorff_distance(p, y, include_background=False, percentile=95,
                                         spacing=None if spacing is None else list(spacing))
    out = out.float()
    out[torch.isinf(out)] = float("nan")
    return out


class ScoreAccumulator:
    """Running per-class Dice (and HD95) sums over cases, for means that distributed ranks can share.

    Sums, not means, are kept, so shards add up exactly: each rank adds its cases, all-reduces
    :meth:`packed`, and :meth:`unpack` + :meth:`summary` give every rank the same numbers. A class
    missing from a case's prediction or label has no finite HD95; that case is left out of the
    class's HD95 mean and counted apart (``hd95_count`` holds the cases that have one), so one
    empty prediction cannot make the mean infinite.
    """

    def __init__(self, num_classes: int, hd95: bool = False) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: scores need the background and at least one foreground "
                             "class, e.g. num_classes=2")
        self.num_classes, self.hd95, self.n = int(num_classes), bool(hd95), 0
        self.dice_sum = torch.zeros(num_classes - 1, dtype=torch.float64)
        self.hd95_sum = torch.zeros_like(self.dice_sum)
        self.hd95_count = torch.zeros_like(self.dice_sum)

    def add(self, pred: torch.Tensor, label: torch.Tensor,
            spacing: Sequence[float] | None = None) -> tuple[list[float], list[float] | None]:
        """Score one case (integer maps ``[1, 1, *spatial]``, HD95 in mm when ``spacing`` is given)
        into the sums; returns its per-class Dice and HD95 (None without ``hd95``, NaN where missing)."""
        if pred.shape[0] != 1 or label.shape[0] != 1:
            raise ValueError(f"add scores one case at a time: got batches of {pred.shape[0]} and {label.shape[0]}; "
                             "call add once per case")
        dice = dice_scores(pred, label, self.num_classes)[0].double()
        self.dice_sum += dice
        self.n += 1
        if not self.hd95:
            return dice.tolist(), None
        hd = hd95_scores(pred, label, self.num_classes, spacing)[0].double()
        found = torch.isfinite(hd)
        self.hd95_sum += torch.where(found, hd, torch.zeros_like(hd))
        self.hd95_count += found.double()
        return dice.tolist(), hd.tolist()

    def packed(self) -> torch.Tensor:
        """Every sum in one float64 vector (Dice sums, HD95 sums, HD95 counts, then the case count),
        ready for one ``all_reduce``."""
        return torch.cat([self.dice_sum, self.hd95_sum, self.hd95_count,
                          torch.tensor([float(self.n)], dtype=torch.float64)])

    @classmethod
    def unpack(cls, packed: torch.Tensor, num_classes: int, hd95: bool) -> ScoreAccumulator:
        """The accumulator whose :meth:`packed` is ``packed`` (e.g. after summing it over ranks)."""
        k = num_classes - 1
        flat = torch.as_tensor(packed).detach().to("cpu", torch.float64)
        if flat.ndim != 1 or flat.numel() != 3 * k + 1:
            raise ValueError(f"packed scores of shape {tuple(flat.shape)} do not fit {num_classes} classes: expected "
                             f"{3 * k + 1} values (3 x {k} sums and the case count) from ScoreAccumulator.packed()")
        n = flat[-1].item()
        if not (math.isfinite(n) and n >= 0 and float(n).is_integer()):
            raise ValueError(f"packed scores hold a case count of {n}, not a whole number of cases: pass the "
                             "(summed) output of ScoreAccumulator.packed()")
        acc = cls(num_classes, hd95)
        acc.dice_sum, acc.hd95_sum, acc.hd95_count = flat[:k].clone(), flat[k:2 * k].clone(), flat[2 * k:3 * k].clone()
        acc.n = int(n)
        return acc

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        """Means over cases: ``{"dice": {name: mean}, "mean_dice", "n"}``, plus ``"hd95"`` (NaN for a
        class no case has an HD95 for) and ``"mean_hd95"`` (over the classes that have one) with ``hd95``."""
        names = list(names)
        if len(names) != self.num_classes - 1:
            raise ValueError(f"{len(names)} class name(s) {names} for {self.num_classes - 1} foreground class(es): "
                             "name every class but the background, in label order")
        mean = (self.dice_sum / max(self.n, 1)).tolist()
        out: dict[str, Any] = {"dice": dict(zip(names, mean)), "mean_dice": float(sum(mean) / len(mean)), "n": self.n}
        if self.hd95:
            hd = [(s / c).item() if c > 0 else float("nan") for s, c in zip(self.hd95_sum, self.hd95_count)]
            out["hd95"] = dict(zip(names, hd))
            finite = [h for h in hd if math.isfinite(h)]
            out["mean_hd95"] = float(sum(finite) / len(finite)) if finite else float("nan")
        return out
