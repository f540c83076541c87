"""Miniature replicas of the ten Medical Segmentation Decathlon (MSD) releases, for tests.

``RELEASES`` holds what each released task looks like, as data: its dataset.json header (key
names, spelling and order as published, e.g. "relase" where the release misspells it), the
modality and label tables, image and label dtypes, the typical voxel spacing and the case file
naming. Every fact carries the public source it was taken from; a fact that no retrieved public
copy confirmed is listed in ``unconfirmed`` instead of being passed off as checked.

``write_replica`` writes a tiny task in the release's own layout (dataset.json, ``imagesTr``,
``labelsTr``, ``imagesTs`` with ``./imagesTr/x.nii.gz`` paths and a ``test`` list), with the real
dtypes, 4D images with modalities last for the multi-modal tasks, the task's anisotropic
spacing, flipped and oblique affines (shared by image and label) and images whose intensities
follow the labels, so one training step has something to learn. ``pack_replica`` packs it as the
releases are packed: one ``TaskNN_Name/`` top folder and a macOS ``._`` AppleDouble member beside
every real one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["APPLEDOUBLE", "RELEASES", "ReleasedTask", "build_replica_archive", "pack_replica", "write_replica"]

# Sources, named once so each fact below can point at one.
SRC_NNUNET_V1_DOC = ("MIC-DKFZ/nnUNet (v1) documentation/dataset_conversion.md: the Task05_Prostate "
                     "dataset.json quoted in full")
SRC_NNUNET_V2_MSD = ("MIC-DKFZ/nnUNet nnunetv2/dataset_conversion/convert_MSD_dataset.py: 4D MSD images are "
                     "split along their 4th (last) axis; files starting with '.' are skipped")
SRC_PANCREAS_COPY = "copy of Task07_Pancreas dataset.json quoted in an nnU-Net tutorial (Chinese), found by code search"
SRC_HIPPO_COPY = ("Task04_Hippocampus dataset.json header quoted in the nnActive README and in a "
                  "MSDDataset unit test (code search), both with reference ' Vanderbilt University Medical Center'")
SRC_BRATS_COPIES = ("Task01_BrainTumour dataset.json header quoted identically by several independent "
                    "repositories (code search: a Chinese nnU-Net guide, two BraTS loaders), all with "
                    "\"release\":\"2.0 04/05/2018\" spelled correctly")
SRC_SPLEEN_COPIES = ("Task09_Spleen dataset.json: MONAI test data ('datalist', Copyright 2020 MONAI "
                     "Consortium) and sarah-antillia ImageMask-Dataset-Spleen README, both with "
                     "\"release\":\"1.0 06/08/2018\"")
SRC_HEPATIC_COPY = ("Task08_HepaticVessel dataset.json quoted in sarah-antillia "
                    "Tensorflow-Image-Segmentation-Hepatic-Vessel README: \"release\":\"1.1 14/08/2018\"")
SRC_MONAI_TESTS = ("Project-MONAI/MONAI tests (test_load_decathlon_datalist.py, test_dataset_func.py): "
                   "name 'Spleen', description 'Spleen Segmentation', labels {0: background, 1: spleen}")
SRC_MSD_PAPER = ("Simpson et al. 2019, arXiv:1902.09063, and Antonelli et al. 2022, Nat. Commun. 13:4128: "
                 "modalities, targets and case counts per task")
SRC_HF_MSD_CARD = ("mtoan65/Medical_Segmentation_Decathlon dataset card (Hugging Face): counts and sources "
                   "per task, e.g. Heart 20+10, Liver 131+70 'IRCAD', Hippocampus 'Vanderbilt'")
SRC_CATALOGUE = "mednext_lite/data/catalogue.py (modality and label tables of the ten tasks)"
SRC_OPENMEDLAB = ("openmedlab/Awesome-Medical-Dataset resources/MSD_*.md and resources/LiTS.md (commit 81da0eee): "
                  "min/median/max voxel spacing and size measured over each task's training cases, case file "
                  "trees (BRATS_001, la_003, lung_001, pancreas_001, hepaticvessel_001, spleen_2, colon_001, "
                  "prostate_00), and the downloaded counts (Lung: 63 training cases, Hippocampus: 260 + 130)")
SRC_WFCRC_MSD = ("wfcrc/datasets/loaders/msd.py module notes (code search): checked against the real "
                 "Task04_Hippocampus archive - dataset.json says numTraining 260, numTest 130 and spells "
                 "\"relase\"; all 260 cases at 1.0 mm; the tree carries '._*' AppleDouble files and .DS_Store")
SRC_LIVER_NAMES = ("liver case names liver_0, liver_1, liver_100, liver_127 (unpadded) in several code-search hits: "
                   "DanielNobbe/ignition tests/test-data/liverv3_small (liver_0..liver_12), 3D Slicer SampleData "
                   "acknowledgements (Task03_Liver imagesTr/liver_100.nii.gz)")
SRC_LIVER_README = ("sssamaraaa/liver-3D-segmentation README.md: MSD Liver 'Release: Version 1.0 (May 4, 2018)', "
                    "'Tensor Image Size: 3D', 'Modality: CT', CC-BY-SA 4.0 (values only, not key names)")
SRC_LABEL_TABLES = ("code search: preprocessing scripts quoting each task's released \"modality\" and \"labels\" "
                    "blocks (Heart {0: MRI}, {1: left atrium}; Liver {1: liver, 2: cancer}; Lung {1: cancer}; "
                    "Colon {1: colon cancer primaries}) and an MSD download catalogue with the same tables")
SRC_HEART_LIST = ("Prasun1608/BRATS Task02_Heart/dataset.json (a regenerated file, not the release): training "
                  "la_003..la_030 (20 cases), test la_001, la_002, ... (10 cases)")
SRC_REFERENCE = ("project facts sheet (REFERENCE.md, MSD layout): CT tasks are int16 Hounsfield units, "
                 "4D images keep modalities on the last axis, archives carry '._' files")
SRC_TRAIN_NAMES = ("case file names seen in the quoted dataset.json training lists (BRATS_457, la_003, "
                   "hippocampus_367, prostate_16, pancreas_290, spleen_19)")

#: What macOS tar writes as the start of an AppleDouble ``._name`` file: certainly neither NIfTI
#: nor JSON, which is the point.
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 16

_COMMON = {"licence": "CC-BY-SA 4.0"}


@dataclass(frozen=True)
class ReleasedTask:
    """One released MSD task, as data.

    ``header`` is the released dataset.json without its ``training``/``test`` lists, keys in the
    release's order (``numTraining``/``numTest`` hold the released counts); ``image_dtype`` and
    ``label_dtype`` are NumPy dtype names; ``spacing`` is a typical voxel size in mm along the
    x, y, z array axes as nibabel reads them (the median over the released training cases);
    ``case_prefix`` and ``case_digits`` name the case files (``<prefix>_<n>.nii.gz``, ``n``
    zero-padded to ``case_digits``). ``sources`` maps each fact to where it was taken from and
    ``unconfirmed`` names the facts no retrieved public copy confirmed.
    """

    name: str
    header: dict[str, Any]
    image_dtype: str
    label_dtype: str
    spacing: tuple[float, float, float]
    case_prefix: str
    sources: dict[str, str]
    unconfirmed: tuple[str, ...] = ()
    # Descriptive extra only: (x, y, z) of a typical (median) released case.
    typical_shape: tuple[int, ...] = field(default=())
    # Zero-padding of the case number in file names: 3 for la_003, 2 for prostate_16, 1 (none) for
    # liver_0 and spleen_2.
    case_digits: int = 3

    @property
    def dataset_json_keys(self) -> tuple[str, ...]:
        """Keys of the released dataset.json, in the release's order (the lists included)."""
        return (*self.header, "training", "test")

    @property
    def modalities(self) -> list[str]:
        """Modality names in channel order."""
        return [self.header["modality"][k] for k in sorted(self.header["modality"], key=int)]

    @property
    def label_values(self) -> list[int]:
        """Declared label values, background included, sorted."""
        return sorted(int(k) for k in self.header["labels"])

    @property
    def is_ct(self) -> bool:
        """True for the CT tasks (int16 Hounsfield units)."""
        return self.modalities == ["CT"]


def _header(name: str, description: str, reference: str, release_key: str, release: str, dims: str,
            modality: dict[str, str], labels: dict[str, str], n_train: int, n_test: int,
            *, dims_first: bool = False) -> dict[str, Any]:
    # Most releases put tensorImageSize after the release date; Heart puts it before reference.
    head: dict[str, Any] = {"name": name, "description": description}
    if dims_first:
        head["tensorImageSize"] = dims
    head.update({"reference": reference, **_COMMON, release_key: release})
    if not dims_first:
        head["tensorImageSize"] = dims
    head.update({"modality": modality, "labels": labels, "numTraining": n_train, "numTest": n_test})
    return head


_CT = {"0": "CT"}
_MRI = {"0": "MRI"}
_MSK = "Memorial Sloan Kettering Cancer Center"

RELEASES: dict[str, ReleasedTask] = {t.name: t for t in [
    ReleasedTask(
        "Task01_BrainTumour",
        _header("BRATS", "Gliomas segmentation tumour and oedema in on brain images",
                "https://www.med.upenn.edu/sbia/brats2017.html", "release", "2.0 04/05/2018", "4D",
                {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}, 484, 266),
        "float32", "uint8", (1.0, 1.0, 1.0), "BRATS",
        {"header": SRC_BRATS_COPIES, "modality/labels": f"{SRC_BRATS_COPIES}; {SRC_CATALOGUE}",
         "4D, modalities last": f"{SRC_REFERENCE}; {SRC_NNUNET_V2_MSD}",
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (every case 1.0 mm, 240x240x155)",
         "counts": f"{SRC_MSD_PAPER}; {SRC_HF_MSD_CARD}; {SRC_OPENMEDLAB}",
         "case names": f"{SRC_TRAIN_NAMES}; {SRC_OPENMEDLAB}",
         "dtypes": "project facts sheet only; no public source retrieved"},
        unconfirmed=("image dtype float32", "label dtype uint8"), typical_shape=(240, 240, 155, 4)),
    ReleasedTask(
        "Task02_Heart",
        _header("LeftAtrium", "Left atrium segmentation", "King\u2019s College London", "relase", "1.0 04/05/2018",
                "3D", _MRI, {"0": "background", "1": "left atrium"}, 20, 10, dims_first=True),
        "float32", "uint8", (1.25, 1.25, 1.37), "la",
        {"header": "recalled from the release; no public copy of the released header retrieved",
         "modality/labels": f"{SRC_LABEL_TABLES}; {SRC_CATALOGUE}",
         "counts": f"{SRC_HF_MSD_CARD}; {SRC_MSD_PAPER}; {SRC_OPENMEDLAB}; {SRC_HEART_LIST}",
         "reference": f"{SRC_HF_MSD_CARD} (source institution, not the header string)",
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (every case 1.25x1.25x1.37 mm, median 320x320x115)",
         "case names": f"nnU-Net v1 dataset_conversion.md example tree (la_003.nii.gz); {SRC_OPENMEDLAB}; "
                       f"{SRC_HEART_LIST}"},
        unconfirmed=("name", "description", "reference string", "key order", "relase spelling",
                     "image dtype float32", "label dtype uint8"),
        typical_shape=(320, 320, 115)),
    ReleasedTask(
        "Task03_Liver",
        _header("LITS", "LITS", "https://competitions.codalab.org/competitions/17094", "relase", "1.0 04/05/2018",
                "3D", _CT, {"0": "background", "1": "liver", "2": "cancer"}, 131, 70),
        "int16", "uint8", (0.7676, 0.7676, 1.0), "liver",
        {"header": "recalled from the release; no public copy of the released header retrieved",
         "release value, tensorImageSize, licence": SRC_LIVER_README,
         "modality/labels": f"{SRC_LABEL_TABLES}; {SRC_CATALOGUE}",
         "counts": f"{SRC_HF_MSD_CARD}; {SRC_MSD_PAPER}; {SRC_OPENMEDLAB} (LiTS.md: 131 training, 70 test)",
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (LiTS.md, the same 131 training volumes: median "
                                   f"0.7676x0.7676x1 mm, 512x512x432; slices 0.7-5 mm)",
         "case names": SRC_LIVER_NAMES, "dtypes": SRC_REFERENCE},
        unconfirmed=("name", "description", "reference", "relase spelling", "label dtype uint8"),
        typical_shape=(512, 512, 432), case_digits=1),
    ReleasedTask(
        "Task04_Hippocampus",
        _header("Hippocampus", "Left and right hippocampus segmentation", " Vanderbilt University Medical Center",
                "relase", "1.0 04/05/2018", "3D", _MRI, {"0": "background", "1": "Anterior", "2": "Posterior"},
                260, 130),
        "float32", "uint8", (1.0, 1.0, 1.0), "hippocampus",
        {"header": f"{SRC_HIPPO_COPY}; {SRC_WFCRC_MSD}", "modality/labels": f"{SRC_HIPPO_COPY}; {SRC_CATALOGUE}",
         "counts": f"{SRC_HIPPO_COPY}; {SRC_WFCRC_MSD}; {SRC_OPENMEDLAB}",
         "spacing": f"{SRC_WFCRC_MSD}; {SRC_OPENMEDLAB}", "case names": SRC_HIPPO_COPY,
         "typical shape": f"{SRC_OPENMEDLAB} (median 35x50x36); REFERENCE.md (about 35x50x35 voxels)",
         "._ files": SRC_WFCRC_MSD},
        unconfirmed=("image dtype float32", "label dtype uint8"), typical_shape=(35, 50, 36)),
    ReleasedTask(
        "Task05_Prostate",
        _header("PROSTATE", "Prostate transitional zone and peripheral zone segmentation",
                "Radboud University, Nijmegen Medical Centre", "relase", "1.0 04/05/2018", "4D",
                {"0": "T2", "1": "ADC"}, {"0": "background", "1": "PZ", "2": "TZ"}, 32, 16),
        "float32", "uint8", (0.63, 0.63, 3.6), "prostate",
        {"header": SRC_NNUNET_V1_DOC, "modality/labels": SRC_NNUNET_V1_DOC, "counts": SRC_NNUNET_V1_DOC,
         "case names": f"{SRC_NNUNET_V1_DOC} (prostate_16, prostate_04: two digits); {SRC_OPENMEDLAB}",
         "4D, modalities last": f"{SRC_REFERENCE}; {SRC_NNUNET_V2_MSD}",
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (median 0.63x0.63x3.6 mm as printed, 320x320x20)"},
        unconfirmed=("image dtype float32", "label dtype uint8"), typical_shape=(320, 320, 20, 2), case_digits=2),
    ReleasedTask(
        "Task06_Lung",
        _header("Lung", "Lung and cancer segmentation", "The Cancer Imaging Archive", "relase", "1.0 04/05/2018",
                "3D", _CT, {"0": "background", "1": "cancer"}, 63, 32),
        "int16", "uint8", (0.79, 0.79, 1.2), "lung",
        {"name/description/reference": ("three derived dataset.json writers found by code search share "
                                        "name 'Lung', 'Lung and cancer segmentation', 'The Cancer Imaging Archive'"),
         "modality/labels": f"{SRC_LABEL_TABLES}; {SRC_CATALOGUE}",
         "counts": f"{SRC_MSD_PAPER} (64+32 in the paper); {SRC_OPENMEDLAB} (63 training cases downloaded)",
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (median 0.79x0.79x1.2 mm as printed, 512x512x252)",
         "case names": f"{SRC_OPENMEDLAB}; code search (imagesTr/lung_001.nii.gz, lung_045, lung_064)",
         "dtypes": SRC_REFERENCE},
        unconfirmed=("relase spelling", "numTraining field value 63 (63 training files are confirmed)",
                     "label dtype uint8"),
        typical_shape=(512, 512, 252)),
    ReleasedTask(
        "Task07_Pancreas",
        _header("Pancreas", "Pancreas and cancer segmentation", "Memorial Sloan Kettering Cancer Center ",
                "relase", "1.0 04/05/2018", "3D", _CT, {"0": "background", "1": "pancreas", "2": "cancer"}, 281, 139),
        "int16", "uint8", (0.8, 0.8, 2.5), "pancreas",
        {"header": SRC_PANCREAS_COPY, "modality/labels": SRC_PANCREAS_COPY,
         "counts": f"{SRC_PANCREAS_COPY}; {SRC_OPENMEDLAB}", "case names": SRC_PANCREAS_COPY,
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (median 0.80x0.80x2.5 mm, 512x512x93)",
         "dtypes": SRC_REFERENCE},
        unconfirmed=("label dtype uint8",), typical_shape=(512, 512, 93)),
    ReleasedTask(
        "Task08_HepaticVessel",
        _header("HepaticVessel", "Hepatic Vessels and Tumour Segmentation", _MSK, "release", "1.1 14/08/2018",
                "3D", _CT, {"0": "background", "1": "Vessel", "2": "Tumour"}, 303, 140),
        "int16", "uint8", (0.8, 0.8, 5.0), "hepaticvessel",
        {"header": SRC_HEPATIC_COPY, "modality/labels": SRC_HEPATIC_COPY,
         "counts": f"{SRC_HEPATIC_COPY}; {SRC_OPENMEDLAB}", "case names": SRC_OPENMEDLAB,
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (median 0.80x0.80x5.0 mm, 512x512x49)",
         "dtypes": SRC_REFERENCE},
        unconfirmed=("label dtype uint8",), typical_shape=(512, 512, 49)),
    ReleasedTask(
        "Task09_Spleen",
        _header("Spleen", "Spleen Segmentation", _MSK, "release", "1.0 06/08/2018", "3D", _CT,
                {"0": "background", "1": "spleen"}, 41, 20),
        "int16", "uint8", (0.79, 0.79, 5.0), "spleen",
        {"header": SRC_SPLEEN_COPIES, "modality/labels": f"{SRC_SPLEEN_COPIES}; {SRC_MONAI_TESTS}",
         "counts": f"{SRC_SPLEEN_COPIES}; {SRC_OPENMEDLAB}",
         "case names": f"{SRC_MONAI_TESTS} (spleen_19: unpadded); {SRC_OPENMEDLAB} (spleen_2)",
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (median 0.79x0.79x5.0 mm, 512x512x90)",
         "dtypes": SRC_REFERENCE},
        unconfirmed=("label dtype uint8",), typical_shape=(512, 512, 90), case_digits=1),
    ReleasedTask(
        "Task10_Colon",
        _header("Colon", "Colon cancer segmentation", _MSK, "release", "1.0 06/08/2018", "3D", _CT,
                {"0": "background", "1": "colon cancer primaries"}, 126, 64),
        "int16", "uint8", (0.78, 0.78, 5.0), "colon",
        {"modality/labels": f"{SRC_LABEL_TABLES}; {SRC_CATALOGUE}",
         "counts": f"{SRC_MSD_PAPER} (190 volumes: 126+64); {SRC_OPENMEDLAB}",
         "spacing, typical shape": f"{SRC_OPENMEDLAB} (median 0.78x0.78x5.0 mm, 512x512x95)",
         "case names": SRC_OPENMEDLAB, "dtypes": SRC_REFERENCE,
         "header": "recalled from the release (same source and date as Spleen); no public copy retrieved"},
        unconfirmed=("name", "description", "release spelling and date", "label dtype uint8"),
        typical_shape=(512, 512, 95)),
]}


# ------------------------------------------------------------------------------------- builder

def _affine(spacing: tuple[float, float, float], kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """A voxel-to-world affine with ``spacing``: "plain" (RAS-like), "flipped" (x and y axes
    reversed, as many MSD files are stored) or "oblique" (12 degrees about z, 5 about x)."""
    lin = np.diag(spacing)
    if kind == "flipped":
        lin = np.diag([-1.0, -1.0, 1.0]) @ lin
    elif kind == "oblique":
        a, b = np.deg2rad(12.0), np.deg2rad(5.0)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        lin = rz @ rx @ lin
    affine = np.eye(4)
    affine[:3, :3] = lin
    # Centre the volume near the world origin, as scanners roughly do.
    affine[:3, 3] = -lin @ (np.asarray(shape[:3], dtype=float) / 2.0)
    return affine


def _label_map(shape: tuple[int, int, int], n_fg: int, rng: np.random.Generator) -> np.ndarray:
    """Nested ellipsoids: class 1 the largest, each next class inside the previous one (as tumour
    sits inside an organ), so every declared class is present and has a few voxels at least."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), axis=-1)
    centre = np.asarray(shape, float) / 2.0 + rng.uniform(-1.5, 1.5, 3)
    radii = np.asarray(shape, float) * rng.uniform(0.28, 0.34, 3)
    label = np.zeros(shape, dtype=np.uint8)
    for c in range(1, n_fg + 1):
        scale = 1.0 - 0.3 * (c - 1) / max(n_fg, 1)
        r = np.maximum(radii * scale, 1.6)
        inside = (((grid - centre) / r) ** 2).sum(-1) <= 1.0
        label[inside] = c
    return label


def _image(task: ReleasedTask, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intensities that follow the labels: CT in Hounsfield units (air around a soft-tissue body,
    brighter per class), MRI as positive float signal inside a head/body mask, one contrast per
    modality; 4D images put modalities on the last axis."""
    shape = label.shape
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), axis=-1)
    body = (grid ** 2).sum(-1) <= 1.15  # everything but the corners
    noise = rng.normal(0.0, 1.0, shape)
    if task.is_ct:
        hu = np.where(body, 40.0, -1000.0) + 70.0 * label + 12.0 * noise
        return np.clip(np.rint(hu), -1024, 3071).astype(task.image_dtype)
    channels = []
    for m in range(len(task.modalities)):
        # Each modality sees the classes with its own contrast (e.g. FLAIR bright, T1 darker).
        gains = 1.0 + 0.6 * np.sin(np.arange(1, len(task.label_values)) * (m + 1.3))
        signal = np.where(body, 100.0, 0.0)
        for c, g in enumerate(gains, start=1):
            signal = np.where(label == c, 100.0 + 80.0 * g * c, signal)
        signal = np.where(body, signal + 6.0 * noise, 0.0)
        channels.append(np.maximum(signal, 0.0))
    data = np.stack(channels, axis=-1) if len(channels) > 1 else channels[0]
    return data.astype(task.image_dtype)


def _nifti_gz(array: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)  # keep int16/float32/uint8 exactly, no scaling
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _case_files(task: ReleasedTask, n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    # Released numbering is sparse and unordered (hippocampus_367, _304, ...): imitate that.
    numbers = [3 + 7 * i for i in range(n_train + n_test)]
    names = [f"{task.case_prefix}_{n:0{task.case_digits}d}.nii.gz" for n in numbers]
    return names[:n_train], names[n_train:]


def replica_members(name: str, *, n_train: int = 3, n_test: int = 1, seed: int = 0,
                    shape: tuple[int, int, int] = (20, 18, 16)) -> list[tuple[str, bytes]]:
    """The (archive path, bytes) members of a replica of ``name``, in release order:
    ``TaskNN_Name/dataset.json`` then images, labels and test images. Case ``i`` gets a
    "plain", "flipped" or "oblique" affine in turn (image and label share it)."""
    if name not in RELEASES:
        raise KeyError(f"no replica for {name!r}: use one of {', '.join(RELEASES)}")
    if n_train < 1 or n_test < 0:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: a replica needs >= 1 training case and >= 0 test cases")
    if max(shape) > 24:
        raise ValueError(f"shape {shape} is over 24 voxels on an axis: replicas stay tiny (<= 24^3)")
    task = RELEASES[name]
    rng = np.random.default_rng([seed, int(name[4:6])])
    train_names, test_names = _case_files(task, n_train, n_test)
    kinds = ("plain", "flipped", "oblique")
    n_fg = len(task.label_values) - 1
    members: list[tuple[str, bytes]] = []
    for i, fname in enumerate(train_names + test_names):
        label = _label_map(shape, n_fg, rng)
        image = _image(task, label, rng)
        affine = _affine(task.spacing, kinds[i % len(kinds)], shape)
        if i < n_train:
            members.append((f"{name}/imagesTr/{fname}", _nifti_gz(image, affine)))
            members.append((f"{name}/labelsTr/{fname}", _nifti_gz(label.astype(task.label_dtype), affine)))
        else:
            members.append((f"{name}/imagesTs/{fname}", _nifti_gz(image, affine)))
    meta = dict(task.header)
    # The miniature lists fewer cases than the release; its counts say so, its keys do not change.
    meta["numTraining"], meta["numTest"] = n_train, n_test
    meta["training"] = [{"image": f"./imagesTr/{f}", "label": f"./labelsTr/{f}"} for f in train_names]
    meta["test"] = [f"./imagesTs/{f}" for f in test_names]
    members.insert(0, (f"{name}/dataset.json", json.dumps(meta, indent=4, ensure_ascii=False).encode()))
    return members


def write_replica(root: str | Path, name: str, **kwargs: Any) -> Path:
    """Write the replica of ``name`` under ``root`` (``root/TaskNN_Name/...``, no ``._`` files)
    and return the task directory; ``kwargs`` go to ``replica_members``."""
    root = Path(root)
    for path, data in replica_members(name, **kwargs):
        out = root / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return root / name


def pack_replica(members: list[tuple[str, bytes]], *, resource_forks: bool = True) -> bytes:
    """Pack replica members as an uncompressed tar, the released archives' format: directory
    entries for the top folder and its subfolders, and with ``resource_forks`` a ``._`` AppleDouble
    member before every real file, as macOS tar writes them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: list[str] = []
        for path, _ in members:
            parts = path.split("/")[:-1]
            for k in range(1, len(parts) + 1):
                d = "/".join(parts[:k])
                if d not in dirs:
                    dirs.append(d)
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in members:
            entries = [(path, data)]
            if resource_forks:
                head, _, base = path.rpartition("/")
                entries.insert(0, (f"{head}/._{base}", APPLEDOUBLE))
            for member_name, payload in entries:
                info = tarfile.TarInfo(member_name)
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def build_replica_archive(path: str | Path, name: str, **kwargs: Any) -> tuple[Path, str]:
    """Write the packed replica of ``name`` to ``path`` and return ``(path, md5)``, the MD5 in
    the hex form the catalogue and ``--md5`` use."""
    data = pack_replica(replica_members(name, **kwargs))
    path = Path(path)
    path.write_bytes(data)
    return path, hashlib.md5(data).hexdigest()
