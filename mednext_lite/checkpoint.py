"""Checkpoints that rebuild their own model: written atomically with checksums, read back safely.

A checkpoint embeds the model config beside the weights, and two SHA-256 per entry: one of its
tensors' bytes, one of everything else in it (paths, numbers, settings). ``torch.load`` reads a
flipped bit in either without complaint, so :func:`load_checkpoint` recomputes both; it reads
with ``weights_only=True`` (a pickled object outside PyTorch's allowed set is refused, never
executed) and refuses weights holding NaN or inf.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .model import MedNeXt, MedNeXtConfig
from .safe_io import atomic_write

__all__ = [
    "CHECKSUM_KEY",
    "FORMAT",
    "CheckpointError",
    "check_finite",
    "entry_checksum",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
    "state_dict_of",
    "tensor_checksum",
]

#: The ``format`` entry of every checkpoint this package writes.
FORMAT = "mednext_lite/1"
#: The entry holding the checksums; reserved, so :func:`save_checkpoint` refuses it as an extra.
CHECKSUM_KEY = "checksum"
#: Where a training checkpoint (ours, the reference's, or a plain wrapper) keeps its weights.
_WEIGHTS_KEYS = ("state_dict", "model_state_dict", "model")
_USE_PREVIOUS = "use the previous checkpoint (last.pt / best.pt)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, unsafe, non-finite, or of a layout we cannot convert."""


# -- checksums ----------------------------------------------------------------------------

def _tensors_with_paths(obj: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside ``obj`` (dicts in their stored order, lists, tuples) with its path."""
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors_with_paths(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors_with_paths(value, f"{where}[{i}]")


def tensor_checksum(obj: Any) -> str | None:
    """SHA-256 over the tensors inside ``obj``: each one's path, dtype, shape and bytes (in
    row-major order, so a channels-last copy of the same values hashes the same); ``None`` when
    ``obj`` holds no tensor."""
    digest, found = hashlib.sha256(), False
    for where, tensor in _tensors_with_paths(obj, ""):
        found = True
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{where}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest() if found else None


def _canonical_text(obj: Any, out: list[str]) -> None:
    """Append to ``out`` a text that determines ``obj`` up to its tensors (each a placeholder: their
    bytes have their own digest). It is what ``torch.load`` gives back that is hashed, so a tuple
    and a list read alike, floats are written exactly (``float.hex``), mappings keep their stored
    order and sets are sorted (their order changes between processes)."""
    if isinstance(obj, torch.Tensor):
        out.append("<tensor>")
    elif obj is None or isinstance(obj, bool):
        out.append(repr(obj))
    elif isinstance(obj, int):
        out.append(f"i{int(obj)}")
    elif isinstance(obj, float):
        out.append(f"f{float(obj).hex()}")
    elif isinstance(obj, str):
        out.append(json.dumps(str(obj)))
    elif isinstance(obj, (bytes, bytearray)):
        out.append(f"b{bytes(obj).hex()}")
    elif isinstance(obj, Mapping):
        out.append("{")
        for key, value in obj.items():
            _canonical_text(key, out)
            out.append(":")
            _canonical_text(value, out)
            out.append(",")
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for value in obj:
            _canonical_text(value, out)
            out.append(",")
        out.append("]")
    elif isinstance(obj, (set, frozenset)):
        items = []
        for value in obj:
            part: list[str] = []
            _canonical_text(value, part)
            items.append("".join(part))
        out.append("set[" + ",".join(sorted(items)) + "]")
    else:  # dtypes, devices and other objects torch's safe loader allows: their repr is stable
        out.append(f"<{type(obj).__name__} {obj!r}>")


def entry_checksum(obj: Any) -> str:
    """SHA-256 of everything in ``obj`` but its tensors' bytes: names, numbers, strings, structure
    (:func:`tensor_checksum` covers the tensors). A flipped byte in a stored path, epoch or
    setting changes it."""
    out: list[str] = []
    _canonical_text(obj, out)
    return hashlib.sha256("".join(out).encode("utf-8", "surrogatepass")).hexdigest()


def _entry_checksums(payload: Mapping[str, Any]) -> dict[str, str]:
    return {str(key): entry_checksum(value) for key, value in payload.items() if key != CHECKSUM_KEY}


def _tensor_checksums(payload: Mapping[str, Any]) -> dict[str, str]:
    # One digest per top-level entry, so a mismatch can say whether the weights or the training
    # state (optimizer, RNG) were damaged.
    sums = {key: tensor_checksum(value) for key, value in payload.items() if key != CHECKSUM_KEY}
    return {key: value for key, value in sums.items() if value is not None}


def _verify_checksums(obj: Mapping[str, Any], path: Path) -> None:
    stored = obj.get(CHECKSUM_KEY)
    if stored is None:
        return  # older files and foreign state dicts carry none: nothing to compare against
    unreadable = CheckpointError(f"checkpoint {path} is corrupt: its checksum entry is unreadable ({stored!r:.80}); "
                                 f"{_USE_PREVIOUS}")
    if not isinstance(stored, Mapping) or not isinstance(stored.get("sha256"), Mapping):
        raise unreadable
    expected, actual = dict(stored["sha256"]), _tensor_checksums(obj)
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) != actual.get(key):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: the tensors of {key!r} do not match the SHA-256 written when it "
                f"was saved (damaged on disk or in transfer); {_USE_PREVIOUS} or copy the file again")
    entries = stored.get("entries_sha256")
    if entries is None:
        return  # written before the other entries were hashed: their tensors were checked above
    if not isinstance(entries, Mapping):
        raise unreadable
    actual = _entry_checksums(obj)
    for key in sorted(set(entries) | set(actual)):
        if entries.get(key) != actual.get(key):
            what = "is missing" if key not in actual else ("was not there when it was saved" if key not in entries
                                                           else "does not match the SHA-256 written when it was saved")
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its entry {key!r} {what} (damaged on disk or in transfer: a "
                f"stored path, number or setting changed); {_USE_PREVIOUS} or copy the file again")


# -- weights ------------------------------------------------------------------------------

def _weights_entry(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The mapping under the first of :data:`_WEIGHTS_KEYS` that ``obj`` holds, else ``obj`` itself."""
    for key in _WEIGHTS_KEYS:
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def check_finite(obj: Mapping[str, Any], source: str = "this checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first weight of ``obj`` (a checkpoint dict or a
    state dict) that holds NaN or inf: such a model predicts garbage (typically all background)."""
    weights = _weights_entry(obj)
    if weights is obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return  # neither a checkpoint holding weights nor a state dict: no weights to check
    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value.detach())).sum())
            if bad:
                raise CheckpointError(
                    f"{source}: weight {key!r} holds {bad} NaN/inf value(s) of {value.numel()}: the run that wrote "
                    "it diverged; use an earlier checkpoint (e.g. best.pt) or retrain with a lower --lr")


def state_dict_of(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint dict (``state_dict`` / ``model`` key), or ``obj`` itself,
    with a DDP ``module.`` prefix removed."""
    weights = _weights_entry(obj)
    bad = next((k for k, v in weights.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"entry {bad!r} is not a tensor: this is not a state dict (keys: {list(weights)[:8]}...)")
    if weights and all(k.startswith("module.") for k in weights):
        return {k[len("module."):]: v for k, v in weights.items()}
    return dict(weights)


# -- saving and loading -------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: MedNeXt, **extra: Any) -> Path:
    """Save ``model``'s weights with its config (so the file rebuilds its own model) plus ``extra``
    entries (optimizer state, epoch, ...), with two SHA-256 per entry that
    :func:`load_checkpoint` verifies: one of its tensors (:func:`tensor_checksum`) and one of the
    rest (:func:`entry_checksum`: paths, numbers, settings, structure). The file is written
    through :func:`mednext_lite.safe_io.atomic_write`: a crash at any moment leaves the previous
    checkpoint or the new one, never a torn one, and a symlink at ``path`` is replaced, never
    written through."""
    if not isinstance(model, MedNeXt):
        raise TypeError(f"save_checkpoint needs a MedNeXt, got {type(model).__name__}")
    if CHECKSUM_KEY in extra:
        raise ValueError(f"{CHECKSUM_KEY!r} is reserved for the checkpoint's own checksum: rename that entry")
    payload = {"format": FORMAT, "config": model.config.to_dict(), "state_dict": model.state_dict(), **extra}
    payload[CHECKSUM_KEY] = {"sha256": _tensor_checksums(payload), "entries_sha256": _entry_checksums(payload)}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _unpickling_error(path: Path, err: pickle.UnpicklingError) -> CheckpointError:
    found = re.search(r"(unsupported GLOBAL [^\n]*|Unsupported global: [^\n]*)", str(err), flags=re.IGNORECASE)
    if found:
        return CheckpointError(
            f"checkpoint {path} was refused: it contains a pickled object outside the allowed set "
            f"({found[1].strip()}). Nothing from it was executed. Re-save it as a plain state dict, or, only "
            "if you trust its author, allow that class with torch.serialization.add_safe_globals.")
    return CheckpointError(f"checkpoint {path} is corrupt (not a readable PyTorch file): delete it and use the "
                           "previous one")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    allow_non_finite: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, verify its checksums, refuse non-finite weights.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, corrupt, holds
    a pickled object outside PyTorch's safe set, or has an entry that no longer matches its
    checksum (naming the entry), and naming the first tensor holding NaN/inf unless
    ``allow_non_finite`` (for inspection). Files without checksums (older ones, the reference's
    or MONAI's state dicts) are checked for readability and finiteness only.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder: pass the file in it, e.g. {path / 'best.pt'}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path (runs live under ./runs/<name>/)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, err) from None
    except Exception as err:  # noqa: BLE001 -- any other failure to unpickle means a damaged file, whatever the exception
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {str(err)[:200]}): "
            "it was probably cut off while being written; use the previous checkpoint (e.g. last.pt / best.pt)"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    _verify_checksums(obj, path)
    if not allow_non_finite:
        check_finite(obj, f"checkpoint {path}")
    return obj


def model_from_checkpoint(source: str | Path | Mapping[str, Any], map_location: str = "cpu", *,
                          allow_non_finite: bool = False) -> MedNeXt:
    """Rebuild the MedNeXt stored by :func:`save_checkpoint` (config + weights) from a path (read
    with :func:`load_checkpoint`) or an already loaded dict; weights holding NaN/inf are refused
    unless ``allow_non_finite``."""
    if isinstance(source, (str, Path)):
        ckpt = load_checkpoint(source, map_location, allow_non_finite=allow_non_finite)
    else:
        ckpt = source
        if not allow_non_finite:
            check_finite(ckpt)
    if "config" not in ckpt:
        raise CheckpointError(
            "this checkpoint has no embedded config: build the model yourself and use load_state_dict (for "
            "reference or MONAI files use mednext_lite.interop.load_foreign, which reads the config off the weights)"
        )
    model = MedNeXt(MedNeXtConfig.from_dict(ckpt["config"]))
    model.load_state_dict(state_dict_of(ckpt))
    return model
