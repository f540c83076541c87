"""An embedded synthetic task in the exact MSD layout, built so that a network is needed.

Each case holds one "comma": a rounded head (label 1) joined to a thinner, tapered, bent tail
(label 2), like the hippocampus' anterior and posterior parts. Head and tail share ONE intensity
distribution, so no intensity rule can tell them apart; only shape and position context can.
Realism that a model must cope with: a body of soft tissue with smooth texture, partial-volume
edges, Gaussian noise, a smooth multiplicative bias field (MRI) or smooth additive drift (CT), a
random gain, and a random pose (rotation, translation, scale) of the object. Everything derives
from the seed, so a task is reproducible bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .msd_writer import write_msd_task

__all__ = ["FLAVOURS", "SyntheticFlavour", "make_synthetic_task", "random_rotation", "smooth_field",
           "synthesize_case"]


@dataclass(frozen=True)
class SyntheticFlavour:
    """Static description of one synthetic flavour: task folder name, file prefix and the
    dataset.json modality table."""

    task_name: str
    prefix: str
    modality: dict[str, str]
    description: str


FLAVOURS: dict[str, SyntheticFlavour] = {
    "mri": SyntheticFlavour("Task90_SyntheticMRI", "synmri", {"0": "MRI"},
                            "Synthetic MRI-like comma: float32 intensities, multiplicative bias field"),
    "ct": SyntheticFlavour("Task91_SyntheticCT", "synct", {"0": "CT"},
                           "Synthetic CT-like comma: int16 Hounsfield units, air outside the body"),
    "mri4d": SyntheticFlavour("Task92_SyntheticMRI4D", "synmri4d", {"0": "T1w", "1": "T2w"},
                              "Synthetic two-modality MRI comma: 4D image, modalities on the last axis"),
}

LABELS = {"0": "background", "1": "head", "2": "tail"}


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 5) -> np.ndarray:
    """A smooth random field in about [-1, 1] made of ``2 * coarse`` random low-frequency
    separable cosine waves (at most ``coarse / 2`` periods across the volume): the look of real
    bias fields and tissue texture, at the cost of outer products instead of a 3D upsampling."""
    field = np.zeros(shape, np.float32)
    for _ in range(2 * coarse):
        term = np.ones((1,) * len(shape), np.float32)
        for axis, size in enumerate(shape):
            freq = rng.uniform(0.0, coarse / 2) * 2 * np.pi / size
            wave = np.cos(freq * np.arange(size, dtype=np.float32) + rng.uniform(0, 2 * np.pi))
            term = term * wave.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        field += rng.standard_normal() * term
    return field / (np.abs(field).max() + 1e-8)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random 3x3 rotation matrix: turns about x, then y, then z, each by an angle drawn
    uniformly from [-max_deg, max_deg] degrees (three draws from ``rng``)."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _comma_distance(q: np.ndarray, h: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distances (mm, negative inside) of object-frame points ``q`` (N, 3) to
    the head ellipsoid and to the tail tube; sizes are fractions of the half field of view ``h``
    so the object fills the volume whatever the shape and spacing."""
    jitter = rng.uniform(0.92, 1.08, 3)
    head_c = np.array([-0.38 * h, 0.0, 0.0])
    head_r = np.array([0.40, 0.36, 0.34]) * h * jitter
    rel = (q - head_c) / head_r
    # Scaling the normalised radius by the mean semi-axis gives a distance in mm near the surface.
    d_head = (np.sqrt((rel ** 2).sum(1)) - 1.0) * head_r.mean()
    # Tail: quadratic Bezier centreline from inside the head to the tip, with a random bend.
    p0 = np.array([-0.12 * h, 0.0, 0.0])
    p2 = np.array([0.66 * h, rng.uniform(-0.12, 0.12) * h, rng.uniform(-0.08, 0.08) * h])
    p1 = np.array([0.30 * h, rng.uniform(0.10, 0.28) * h * rng.choice([-1, 1]), rng.uniform(-0.1, 0.1) * h])
    u = np.linspace(0.0, 1.0, 40)[:, None]
    centre = (1 - u) ** 2 * p0 + 2 * (1 - u) * u * p1 + u ** 2 * p2
    radius = (0.24 * (1 - u[:, 0]) + 0.11 * u[:, 0]) * h * rng.uniform(0.92, 1.08)
    # A union of spheres along the centreline is a tapered tube; min over samples of
    # (distance - radius) is its signed distance up to sampling error.
    # Only points near the tail's bounding box can be inside or on its soft edge; the rest get
    # a distance that is merely "far" (it only feeds the partial-volume edge), which keeps a
    # case at a few tens of milliseconds.
    margin = radius.max() + 0.15 * h
    near = np.all((q > centre.min(0) - margin) & (q < centre.max(0) + margin), axis=1)
    qn = q[near].astype(np.float32)
    c32 = centre.astype(np.float32)
    sq = (qn * qn).sum(1)[:, None] - 2.0 * (qn @ c32.T) + (c32 * c32).sum(1)[None, :]
    d_tail = np.full(len(q), 0.15 * h, dtype=np.float32)
    d_tail[near] = (np.sqrt(np.maximum(sq, 0.0)) - radius[None, :].astype(np.float32)).min(1)
    return d_head.astype(np.float32), d_tail


def synthesize_case(
    seed: Sequence[int] | int,
    *,
    flavour: str = "mri",
    shape: Sequence[int] = (48, 48, 48),
    spacing: Sequence[float] = (1.0, 1.0, 1.25),
    max_rotation_deg: float = 25.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(image, label, affine)`` for one synthetic case. ``image`` is float32 (mri),
    int16 Hounsfield units (ct) or float32 ``(x, y, z, 2)`` (mri4d, modalities last as MSD
    stores them); ``label`` is uint8 with 0 background, 1 head, 2 tail; ``affine`` maps voxel
    indices to millimetres (RAS, x and y flipped as in most MSD files)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}: use one of {sorted(FLAVOURS)}")
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=float)
    if len(shape) != 3 or min(shape) < 16 or len(spacing) != 3 or np.any(spacing <= 0):
        raise ValueError(f"shape={shape} spacing={tuple(spacing)} invalid: use 3 sizes >= 16 and 3 positive spacings")
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * spacing
    origin = -np.array([1.0, 1.0, -1.0]) * extent / 2 + rng.uniform(-5, 5, 3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing * np.array([-1.0, -1.0, 1.0]))
    affine[:3, 3] = origin
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    # Work in millimetres relative to the volume centre, so geometry is independent of the origin.
    mm = ((ijk - (np.asarray(shape) - 1) / 2) * spacing).astype(np.float32)
    h = float(extent.min() / 2)

    # Body: soft-tissue ellipsoid leaving air in the corners (what non-zero normalisation and
    # foreground cropping act on).
    body_r = extent / 2 * rng.uniform(0.88, 0.98, 3)
    body = (((mm / body_r) ** 2).sum(1) <= 1.0).reshape(shape)

    rot = random_rotation(rng, max_rotation_deg)
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.08, 0.08, 3) * h
    q = ((mm - shift) @ rot) / scale  # world -> object frame (rot is orthonormal: inverse = transpose)
    d_head, d_tail = _comma_distance(q, h, rng)
    d_head, d_tail = d_head * scale, d_tail * scale
    label = np.zeros(len(q), np.uint8)
    label[d_tail <= 0] = 2
    label[d_head <= 0] = 1  # the tail starts inside the head; the head wins there
    label = label.reshape(shape)
    # Partial volume: a soft edge (about half a voxel) instead of a binary step.
    occupancy = (1.0 / (1.0 + np.exp(np.minimum(d_head, d_tail) / (0.35 * spacing.min())))).reshape(shape)

    texture = smooth_field(rng, shape, coarse=6)
    inner = smooth_field(rng, shape, coarse=8)
    drift = smooth_field(rng, shape, coarse=4)

    def mri_channel(tissue: float, obj: float, noise: float) -> np.ndarray:
        clean = tissue * (1 + 0.08 * texture) * (1 - occupancy) + obj * (1 + 0.06 * inner) * occupancy
        noisy = clean + rng.normal(0.0, noise, shape)
        bias = np.exp(0.2 * drift)  # smooth multiplicative field, about x0.8..x1.2
        out = noisy * bias * rng.uniform(0.8, 1.25)  # random scanner gain
        return np.where(body, np.maximum(out, 1.0), 0.0).astype(np.float32)

    if flavour == "mri":
        image = mri_channel(100.0, 170.0, 10.0)
    elif flavour == "mri4d":
        image = np.stack([mri_channel(100.0, 170.0, 10.0), mri_channel(90.0, 45.0, 8.0)], axis=-1)
    else:
        hu = 40.0 + 10.0 * texture + (140.0 - 40.0 + 8.0 * inner) * occupancy
        hu = hu + 15.0 * drift + rng.normal(0.0, 15.0, shape)
        air = -1000.0 + rng.normal(0.0, 5.0, shape)
        image = np.clip(np.round(np.where(body, hu, air)), -1024, 3071).astype(np.int16)
    return image, label, affine


def make_synthetic_task(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 40,
    n_test: int = 4,
    flavour: str = "mri",
    seed: int = 0,
    shape: Sequence[int] = (48, 48, 48),
    spacing: Sequence[float] = (1.0, 1.0, 1.25),
    progress: bool = True,
) -> Path:
    """Write a synthetic task in MSD layout under ``out_dir`` and return its directory
    (``Task90_SyntheticMRI``, ``Task91_SyntheticCT`` or ``Task92_SyntheticMRI4D``).

    The task has dataset.json with every standard MSD key, ``imagesTr/``, ``labelsTr/`` and
    ``imagesTs/`` of .nii.gz files with real affines; labels are 0 background, 1 head, 2 tail.
    The same arguments always give identical arrays. Defaults (48^3 voxels, 1x1x1.25 mm) are
    sized so a small network learns the task on a laptop CPU in minutes; re-running overwrites
    the files with the same content.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}: use one of {sorted(FLAVOURS)}")
    spec = FLAVOURS[flavour]

    def make_case(kind: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Separate, seed-derived streams per case: case k is the same whatever n_train is.
        return synthesize_case([seed, int(kind == "test"), i], flavour=flavour, shape=shape, spacing=spacing)

    meta = {
        "name": spec.task_name.split("_", 1)[1],
        "description": spec.description + ". Head (1) and tail (2) share one intensity distribution.",
        "reference": "mednext_lite synthetic generator (mednext_lite.data.make_synthetic_task)",
        "licence": "CC0 1.0 (generated data)",
        "release": f"1.0 seed={seed} shape={list(map(int, shape))} spacing={list(map(float, spacing))}",
        "tensorImageSize": "4D" if flavour == "mri4d" else "3D",
        "modality": dict(spec.modality),
        "labels": dict(LABELS),
    }
    return write_msd_task(Path(out_dir) / spec.task_name, prefix=spec.prefix, n_train=n_train, n_test=n_test,
                          make_case=make_case, meta=meta, progress=progress)
