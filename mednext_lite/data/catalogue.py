"""Catalogue of the ten Medical Segmentation Decathlon (MSD) tasks and the data-root rule.

Addresses and MD5 checksums are the public facts also carried by MONAI's DecathlonDataset; the
modality and label tables mirror each task's released dataset.json, so a user can see what a
task holds before paying for the download.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from monai.apps import DecathlonDataset

__all__ = ["DATA_ENV_VAR", "MSD_TASKS", "MSDTask", "get_task", "resolve_data_dir", "validate_task_name"]

#: Environment variable that overrides the default data root (``./data``).
DATA_ENV_VAR = "MEDNEXT_DATA"


@dataclass(frozen=True)
class MSDTask:
    """One MSD task: where to fetch it, how to check it, and what it contains.

    ``tensor_image_size`` is "4D" for the multi-modal tasks whose NIfTI images keep the
    modalities on the last axis; ``size_mb`` is the approximate archive size, for the user's
    benefit only (the MD5 is what is checked).
    """

    name: str
    url: str
    md5: str
    modality: dict[str, str]
    labels: dict[int, str]
    tensor_image_size: str
    size_mb: int

    @property
    def number(self) -> str:
        """The two-digit task number, e.g. "04"."""
        return self.name[4:6]

    @property
    def short_name(self) -> str:
        """The name without the "TaskNN_" prefix, e.g. "Hippocampus"."""
        return self.name.split("_", 1)[1]

    @property
    def is_ct(self) -> bool:
        """True when the images are CT (int16 Hounsfield units)."""
        return any(m.upper() == "CT" for m in self.modality.values())


def _task(name: str, modality: dict[str, str], labels: dict[int, str], dims: str, size_mb: int) -> MSDTask:
    # Addresses and checksums are MONAI's own DecathlonDataset table, so the two never drift apart.
    return MSDTask(name, DecathlonDataset.resource[name], DecathlonDataset.md5[name], modality, labels, dims, size_mb)


MSD_TASKS: dict[str, MSDTask] = {
    t.name: t
    for t in [
        _task("Task01_BrainTumour", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
              {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}, "4D", 7100),
        _task("Task02_Heart", {"0": "MRI"}, {0: "background", 1: "left atrium"}, "3D", 440),
        _task("Task03_Liver", {"0": "CT"}, {0: "background", 1: "liver", 2: "cancer"}, "3D", 27000),
        _task("Task04_Hippocampus", {"0": "MRI"}, {0: "background", 1: "Anterior", 2: "Posterior"}, "3D", 27),
        _task("Task05_Prostate", {"0": "T2", "1": "ADC"}, {0: "background", 1: "PZ", 2: "TZ"}, "4D", 230),
        _task("Task06_Lung", {"0": "CT"}, {0: "background", 1: "cancer"}, "3D", 8500),
        _task("Task07_Pancreas", {"0": "CT"}, {0: "background", 1: "pancreas", 2: "cancer"}, "3D", 11500),
        _task("Task08_HepaticVessel", {"0": "CT"}, {0: "background", 1: "Vessel", 2: "Tumour"}, "3D", 8900),
        _task("Task09_Spleen", {"0": "CT"}, {0: "background", 1: "spleen"}, "3D", 1500),
        _task("Task10_Colon", {"0": "CT"}, {0: "background", 1: "colon cancer primaries"}, "3D", 5800),
    ]
}


def get_task(name: str) -> MSDTask:
    """Look up an MSD task by full name ("Task04_Hippocampus"), short name ("Hippocampus",
    case-insensitive), number ("04", "4") or prefix ("Task04"); raise ``KeyError`` listing the
    valid names when nothing matches."""
    key = str(name).strip()
    if key in MSD_TASKS:
        return MSD_TASKS[key]
    low = key.lower()
    match = re.fullmatch(r"(?:task)?0*(\d{1,2})", low)
    for task in MSD_TASKS.values():
        if low in (task.name.lower(), task.short_name.lower()):
            return task
        if match and int(match.group(1)) == int(task.number):
            return task
    valid = ", ".join(MSD_TASKS)
    raise KeyError(
        f"unknown MSD task {name!r}: use a full name ({valid}), a short name such as 'Hippocampus', "
        "or a number such as '04'"
    )


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data root: ``data_dir`` when given, else ``$MEDNEXT_DATA`` when set and
    non-empty, else ``./data`` (relative to the current directory). The directory is not created
    here; downloaders and writers create it when they first need it."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path("data")


def validate_task_name(name: str) -> str:
    """Return ``name`` if it can be used as one folder directly under the data root, else raise
    ``ValueError`` naming it. Refused: empty or blank names, "." and "..", absolute paths, names
    holding a path separator (``/``, ``\\``) or a drive colon, control characters, names starting
    with "." (the data root's hidden folders, such as ``.cache``, are the package's own), and names
    longer than 255 characters. Call it before anything is written under the root: a name such as
    ``../../x`` would otherwise place a task outside it."""
    text = str(name)
    fix = "use a plain folder name such as Task04_Hippocampus, or pass the task's folder as a path"
    if not text.strip():
        raise ValueError(f"task name {text!r} is empty: {fix}")
    if text == ".":
        raise ValueError(f"task name {text!r} names the data root itself, not a task folder: {fix}")
    if ".." in text.replace("\\", "/").split("/"):
        raise ValueError(f"task name {text!r} climbs out of the data root: {fix}")
    if os.path.isabs(text) or text.startswith(("/", "\\")):
        raise ValueError(f"task name {text!r} is an absolute path, not a name: {fix}")
    separators = {"/", "\\", ":", os.sep, os.altsep or "/"}
    if any(sep in text for sep in separators):
        found = " ".join(repr(sep) for sep in sorted(separators & set(text)))
        raise ValueError(f"task name {text!r} holds a path separator or drive colon ({found}): {fix}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError(f"task name {text!r} holds a control character: {fix}")
    if text.startswith("."):
        raise ValueError(f"task name {text!r} starts with '.': hidden folders of the data root belong to "
                         f"mednext_lite (cache, extraction staging); {fix}")
    if len(text) > 255:
        raise ValueError(f"task name of {len(text)} characters is longer than a folder name may be (255): {fix}")
    return text
