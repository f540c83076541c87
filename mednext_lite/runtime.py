"""Where code runs and how its random numbers are seeded: the device, the seed, the generator state.

One resolver turns a device name ("auto", "cpu", "cuda", "cuda:1") into a ``torch.device`` for
training and prediction alike, and one seeding helper seeds Python, NumPy and torch together, so a
run repeats exactly. :func:`rng_state` / :func:`set_rng_state` capture and restore those generators
(as plain containers, so a checkpoint holding them loads with ``weights_only=True``) for an exact
resume.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["resolve_device", "rng_state", "seed_everything", "set_rng_state"]


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device ``name`` names: ``"auto"`` is ``cuda:local_rank`` when CUDA is available, else the
    CPU; a bare ``"cuda"`` gets index ``local_rank`` (the GPU torchrun gives this process).

    Raises ``ValueError`` naming the fix for a name torch does not know, for CUDA where there is none,
    and for a GPU index beyond the GPUs present."""
    text = str(name).strip()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={name!r} is not a device name: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available: use --device cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(f"device={name!r} asks for GPU {device.index} but {count} GPU(s) are present: "
                             f"use cuda:0 to cuda:{count - 1} (or auto)")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU) from ``seed``.

    NumPy takes seeds below 2**32, so larger seeds are reduced modulo 2**32 for it."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The state of every generator :func:`seed_everything` seeds, as lists, ints and tensors only."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`'s dict (the GPU states only where the same
    number of GPUs is present; elsewhere they cannot map one to one)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
