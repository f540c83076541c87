"""The intensity-only baseline: the best any rule "voxel intensity -> label" can do.

A segmentation task is only worth a network when intensity alone fails. This module fits, on
the given cases, the per-intensity-bin majority label (the intensity-only classifier with the
fewest voxel errors; a fixed threshold or Otsu is a special case with two bins) and reports its
Dice per class. On the synthetic task the head and tail share one intensity distribution, so
such a rule labels all foreground with one class and the mean foreground Dice stays low.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .dataset import TaskInfo, read_image
from .validate import load_task

__all__ = ["dice_per_class", "threshold_baseline"]


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: Sequence[int]) -> dict[int, float]:
    """Dice of each class value in ``classes`` between two integer label maps; a class absent
    from both maps scores 1.0 (nothing to find, nothing predicted)."""
    out = {}
    for c in classes:
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out[int(c)] = 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)
    return out


def _normalised(image: np.ndarray, is_ct: bool) -> np.ndarray:
    """Channel-first intensities comparable across cases: HU as they are for CT; for MRI a
    z-score per channel over non-zero voxels (the network's own normalisation)."""
    img = image.astype(np.float32)
    if img.ndim == 3:
        img = img[None]
    if is_ct:
        return img
    out = np.zeros_like(img)
    for c, ch in enumerate(img):
        nz = ch != 0
        if nz.any():
            out[c][nz] = (ch[nz] - ch[nz].mean()) / (ch[nz].std() + 1e-8)
    return out


def _fit_and_score(images: list[np.ndarray], labels: list[np.ndarray], classes: list[int], n_bins: int) -> dict:
    pooled = np.concatenate([i.ravel() for i in images])
    # Quantile bins put resolution where the voxels are; unique() drops duplicate edges (CT air).
    edges = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, n_bins + 1)))
    counts = np.zeros((len(edges) + 1, max(classes) + 1), np.int64)
    for img, lbl in zip(images, labels):
        bins = np.digitize(img.ravel(), edges[1:-1])
        np.add.at(counts, (bins, np.clip(lbl.ravel(), 0, max(classes))), 1)
    bin_labels = counts.argmax(1)
    per_case, fg_binary = [], []
    for img, lbl in zip(images, labels):
        pred = bin_labels[np.digitize(img, edges[1:-1])]
        per_case.append(dice_per_class(pred, lbl, classes))
        fg_binary.append(dice_per_class((pred > 0).astype(int), (lbl > 0).astype(int), [1])[1])
    dice = {c: float(np.mean([d[c] for d in per_case])) for c in classes}
    fg = [c for c in classes if c != 0]
    return {
        "dice": dice,
        "mean_foreground_dice": float(np.mean([dice[c] for c in fg])) if fg else float("nan"),
        "foreground_dice": float(np.mean(fg_binary)),
        "bin_edges": edges.tolist(),
        "bin_labels": bin_labels.tolist(),
    }


def threshold_baseline(
    task: str | os.PathLike | TaskInfo,
    cases: Sequence[dict] | None = None,
    *,
    n_bins: int = 64,
) -> dict:
    """Fit and score the intensity-only rule on ``cases`` (default: all training cases) of a
    task, and return a dict with ``dice`` (class value -> mean Dice over cases),
    ``mean_foreground_dice``, ``foreground_dice`` (binary: any foreground vs background),
    ``bin_edges`` and ``bin_labels`` (the fitted rule), ``channel`` (the modality it reads; for
    multi-modal tasks the best single one) and ``n_cases``.

    The rule is fitted and scored on the same cases, which flatters it: the figure is an upper
    bound on what intensity alone achieves, so a network that beats it has learned shape."""
    info = task if isinstance(task, TaskInfo) else load_task(task, validate=False)
    cases = list(cases) if cases is not None else list(info.training)
    if not cases:
        raise ValueError(f"no cases to fit the baseline on in task {info.root}: pass cases or add training cases")
    classes = sorted(info.labels)
    images, labels = [], []
    for case in cases:
        img, _ = read_image(case["image"])
        lbl, _ = read_image(case["label"])
        images.append(_normalised(img, info.is_ct))
        labels.append(np.rint(lbl).astype(np.int64))
    # Multi-modal tasks: fit one rule per modality and keep the best (averaging modalities with
    # opposite contrast would cancel the signal and make the baseline unfairly weak).
    best = None
    for c in range(images[0].shape[0]):
        result = _fit_and_score([i[c] for i in images], labels, classes, n_bins)
        result["channel"] = c
        if best is None or result["mean_foreground_dice"] > best["mean_foreground_dice"]:
            best = result
    best["n_cases"] = len(cases)
    return best
