"""Seeded k-fold splits of a task's cases, saved beside a run so that it always trains on the same cases."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..safe_io import atomic_write

__all__ = ["get_or_make_split", "load_split", "make_split", "save_split"]


def make_split(cases: Sequence[Any], *, n_folds: int = 5, fold: int = 0, seed: int = 0) -> tuple[list, list]:
    """Split ``cases`` into (train, val) for one fold of a seeded k-fold partition. The same
    cases, ``n_folds`` and ``seed`` always give the same folds, and the ``n_folds`` validation
    sets are disjoint and cover every case; order inside each list follows the input order."""
    cases = list(cases)
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds={n_folds!r} is invalid: use an integer >= 2 (5 is the nnU-Net convention)")
    if len(cases) < n_folds:
        raise ValueError(f"cannot make {n_folds} folds from {len(cases)} cases: use n_folds <= {len(cases)}")
    if not isinstance(fold, int) or not 0 <= fold < n_folds:
        raise ValueError(f"fold={fold!r} is out of range: use 0..{n_folds - 1}")
    order = np.random.default_rng(seed).permutation(len(cases))
    val_idx = set(np.array_split(order, n_folds)[fold].tolist())
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = [c for i, c in enumerate(cases) if i in val_idx]
    return train, val


def _to_json(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: _to_json(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return [_to_json(v) for v in item]
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    return item


def _from_json(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: Path(v) if k in ("image", "label") and isinstance(v, str) else _from_json(v)
                for k, v in item.items()}
    if isinstance(item, str):
        return Path(item)
    return item


def save_split(path: str | os.PathLike, train: Sequence[Any], val: Sequence[Any], **meta: Any) -> Path:
    """Write a split as JSON (``{"train": [...], "val": [...], "meta": {...}}``) so a run, and
    its resumption, always trains on the cases it started with; extra keywords (fold, seed...)
    are stored under "meta". Paths are stored as strings; the file is replaced atomically (a
    symlink at ``path`` is replaced, never written through)."""
    payload = {"train": _to_json(list(train)), "val": _to_json(list(val)), "meta": _to_json(meta)}
    return atomic_write(path, json.dumps(payload, indent=2) + "\n")


def load_split(path: str | os.PathLike) -> tuple[list, list]:
    """Read a split written by ``save_split`` and return (train, val); string entries and the
    "image"/"label" values of dict entries come back as ``Path``."""
    train, val, _ = _read_split(Path(path))
    return train, val


def _read_split(path: Path) -> tuple[list, list, dict[str, Any]]:
    """(train, val, meta) of a split file, in one read."""
    try:
        payload = json.loads(path.read_text())
        train, val = [_from_json(c) for c in payload["train"]], [_from_json(c) for c in payload["val"]]
        return train, val, payload.get("meta") or {}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a split file written by save_split ({err}); delete it to make a new split") from err


def get_or_make_split(cases: Sequence[Any], split_path: str | os.PathLike, *, n_folds: int = 5, fold: int = 0,
                      seed: int = 0) -> tuple[list, list]:
    """Return the split stored at ``split_path`` when it exists (so a resumed run keeps its
    cases), else make one with ``make_split`` and save it there. A stored split whose "meta"
    names another ``n_folds``, ``fold`` or ``seed`` is refused: returning it would train the
    wrong fold without a word."""
    split_path = Path(split_path)
    if not split_path.exists():
        train, val = make_split(cases, n_folds=n_folds, fold=fold, seed=seed)
        save_split(split_path, train, val, n_folds=n_folds, fold=fold, seed=seed)
        return train, val
    train, val, stored = _read_split(split_path)
    asked = {"n_folds": n_folds, "fold": fold, "seed": seed}
    clash = [key for key, value in asked.items() if key in stored and stored[key] != value]
    if clash:
        have = ", ".join(f"{key}={stored[key]!r}" for key in clash)
        want = ", ".join(f"{key}={asked[key]!r}" for key in clash)
        raise ValueError(f"{split_path} holds the split for {have}, but {want} was asked for: "
                         "use another run directory (--run-dir) for another fold, or delete the file")
    return train, val
