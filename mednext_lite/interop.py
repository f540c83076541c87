"""Checkpoints that rebuild their own model, loaded safely, and conversion from the peers' layouts.

* :func:`save_checkpoint` writes atomically (temp file + rename), embeds the model config, a
  SHA-256 of every tensor it holds, and one of every entry's other contents (settings, paths,
  epoch, history) in a canonical text.
* :func:`load_checkpoint` uses ``torch.load(weights_only=True)``: a pickled object outside
  PyTorch's allowed set is refused with a message and never executed. It then recomputes the
  checksums (``torch.load`` itself reads a flipped bit in tensor data or a stored string without
  complaint) and
  refuses weights holding NaN or inf.
* :func:`convert_reference_state_dict` / :func:`to_reference_state_dict` translate the reference
  implementation's key layout (MIC-DKFZ ``mednextv1``); :func:`convert_monai_state_dict` translates
  MONAI's ``MedNeXt``, refusing checkpoints whose topology differs from the reference.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .model import LEVELS, MedNeXt, MedNeXtConfig
from .safe_io import atomic_write

FORMAT = "mednext_lite/1"
CHECKSUM_KEY = "checksum"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, unsafe, non-finite, or of a layout we cannot convert."""


# -- checksums ----------------------------------------------------------------------------

def _tensors(obj: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside ``obj`` (dicts in their stored order, lists, tuples) with its path."""
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{where}[{i}]")


def tensor_checksum(obj: Any) -> str | None:
    """SHA-256 over the tensors inside ``obj``: each one's path, dtype, shape and bytes (in
    row-major order, so a channels-last copy of the same values hashes the same); ``None`` when
    ``obj`` holds no tensor."""
    digest, found = hashlib.sha256(), False
    for where, tensor in _tensors(obj, ""):
        found = True
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{where}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest() if found else None


def _canonical(obj: Any, out: list[str]) -> None:
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
            _canonical(key, out)
            out.append(":")
            _canonical(value, out)
            out.append(",")
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for value in obj:
            _canonical(value, out)
            out.append(",")
        out.append("]")
    elif isinstance(obj, (set, frozenset)):
        items = []
        for value in obj:
            part: list[str] = []
            _canonical(value, part)
            items.append("".join(part))
        out.append("set[" + ",".join(sorted(items)) + "]")
    else:  # dtypes, devices and other objects torch's safe loader allows: their repr is stable
        out.append(f"<{type(obj).__name__} {obj!r}>")


def entry_checksum(obj: Any) -> str:
    """SHA-256 of everything in ``obj`` but its tensors' bytes: names, numbers, strings, structure
    (:func:`tensor_checksum` covers the tensors). A flipped byte in a stored path, epoch or
    setting changes it."""
    out: list[str] = []
    _canonical(obj, out)
    return hashlib.sha256("".join(out).encode("utf-8", "surrogatepass")).hexdigest()


def _entry_checksums(payload: Mapping[str, Any]) -> dict[str, str]:
    return {str(key): entry_checksum(value) for key, value in payload.items() if key != CHECKSUM_KEY}


def _checksums(payload: Mapping[str, Any]) -> dict[str, str]:
    # One digest per top-level entry, so a mismatch can say whether the weights or the training
    # state (optimizer, RNG) were damaged.
    sums = {key: tensor_checksum(value) for key, value in payload.items() if key != CHECKSUM_KEY}
    return {key: value for key, value in sums.items() if value is not None}


def _verify_checksums(obj: Mapping[str, Any], path: Path) -> None:
    stored = obj.get(CHECKSUM_KEY)
    if stored is None:
        return  # older files and foreign state dicts carry none: nothing to compare against
    if not isinstance(stored, Mapping) or not isinstance(stored.get("sha256"), Mapping):
        raise CheckpointError(f"checkpoint {path} is corrupt: its checksum entry is unreadable ({stored!r:.80}); "
                              "use the previous checkpoint (last.pt / best.pt)")
    actual = _checksums(obj)
    expected = dict(stored["sha256"])
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) != actual.get(key):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: the tensors of {key!r} do not match the SHA-256 written when it "
                "was saved (damaged on disk or in transfer); use the previous checkpoint (last.pt / best.pt) or "
                "copy the file again")
    entries = stored.get("entries_sha256")
    if entries is None:
        return  # written before the other entries were hashed: their tensors were checked above
    if not isinstance(entries, Mapping):
        raise CheckpointError(f"checkpoint {path} is corrupt: its checksum entry is unreadable ({stored!r:.80}); "
                              "use the previous checkpoint (last.pt / best.pt)")
    actual = _entry_checksums(obj)
    for key in sorted(set(entries) | set(actual)):
        if entries.get(key) != actual.get(key):
            what = "is missing" if key not in actual else ("was not there when it was saved" if key not in entries
                                                           else "does not match the SHA-256 written when it was saved")
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its entry {key!r} {what} (damaged on disk or in transfer: a "
                "stored path, number or setting changed); use the previous checkpoint (last.pt / best.pt) or copy "
                "the file again")


def _weights(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights inside a checkpoint dict, or an empty dict when it holds none we recognise."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj if obj and all(isinstance(v, torch.Tensor) for v in obj.values()) else {}


def check_finite(obj: Mapping[str, Any], source: str = "this checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first weight of ``obj`` (a checkpoint dict or a
    state dict) that holds NaN or inf: such a model predicts garbage (typically all background)."""
    for key, value in _weights(obj).items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value.detach())).sum())
            if bad:
                raise CheckpointError(
                    f"{source}: weight {key!r} holds {bad} NaN/inf value(s) of {value.numel()}: the run that wrote "
                    "it diverged; use an earlier checkpoint (e.g. best.pt) or retrain with a lower --lr")


# -- saving and loading -------------------------------------------------------------------

def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``
    (:func:`mednext_lite.safe_io.atomic_write`).

    A crash at any moment leaves either the previous file or the new one, never a torn one; a
    symlink at ``path`` is replaced, never written through.
    """
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path: str | Path, model: MedNeXt, **extra: Any) -> Path:
    """Save ``model``'s weights with its config (so the file rebuilds its own model) plus ``extra``
    entries (optimizer state, epoch, ...), atomically, with two SHA-256 per entry that
    :func:`load_checkpoint` verifies: one of its tensors (:func:`tensor_checksum`) and one of the
    rest (:func:`entry_checksum`: paths, numbers, settings, structure)."""
    if not isinstance(model, MedNeXt):
        raise TypeError(f"save_checkpoint needs a MedNeXt, got {type(model).__name__}")
    if CHECKSUM_KEY in extra:
        raise ValueError(f"{CHECKSUM_KEY!r} is reserved for the checkpoint's own checksum: rename that entry")
    payload = {"format": FORMAT, "config": model.config.to_dict(), "state_dict": model.state_dict(), **extra}
    payload[CHECKSUM_KEY] = {"sha256": _checksums(payload), "entries_sha256": _entry_checksums(payload)}
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    allow_non_finite: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, verify its checksum, refuse non-finite weights.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated or corrupt, when
    an entry's tensors or other contents do not match the SHA-256 stored at save time (naming the
    entry), when it holds pickled objects outside
    PyTorch's safe set (which are never executed), or when a weight holds NaN/inf (naming the first
    such tensor; ``allow_non_finite=True`` loads it anyway, for inspection). Files without a
    checksum (written before checksums existed, or foreign state dicts from the reference code or
    MONAI) still load: only their readability and finiteness are checked; files whose checksum
    covers tensors only (written before the other contents were hashed) have their tensors checked.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder: pass the file in it, e.g. {path / 'best.pt'}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path (runs live under ./runs/<name>/)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"(unsupported GLOBAL [^\n]*|Unsupported global: [^\n]*)", text, flags=re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"checkpoint {path} was refused: it contains a pickled object outside the allowed set "
                f"({found[1].strip()}). Nothing from it was executed. Re-save it as a plain state dict, or, only "
                "if you trust its author, allow that class with torch.serialization.add_safe_globals."
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt (not a readable PyTorch file): delete it and use the previous one"
        ) from None
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


def state_dict_of(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint dict (``state_dict`` / ``model`` key), or ``obj`` itself,
    with a DDP ``module.`` prefix removed."""
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(f"entry {bad!r} is not a tensor: this is not a state dict (keys: {list(obj)[:8]}...)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def model_from_checkpoint(source: str | Path | Mapping[str, Any], map_location: str = "cpu", *,
                          allow_non_finite: bool = False) -> MedNeXt:
    """Rebuild the MedNeXt stored by :func:`save_checkpoint` (config + weights).

    A path is read with :func:`load_checkpoint` (checksum verified); for a path or an already
    loaded dict, weights holding NaN/inf are a :class:`CheckpointError` naming the first bad
    tensor unless ``allow_non_finite``.
    """
    if isinstance(source, (str, Path)):
        ckpt = load_checkpoint(source, map_location, allow_non_finite=allow_non_finite)
    else:
        ckpt = source
        if not allow_non_finite:
            check_finite(ckpt)
    if "config" not in ckpt:
        raise CheckpointError(
            "this checkpoint has no embedded config: build the model yourself and use load_state_dict "
            "(for reference or MONAI files use convert_reference_state_dict / convert_monai_state_dict)"
        )
    model = MedNeXt(MedNeXtConfig.from_dict(ckpt["config"]))
    model.load_state_dict(state_dict_of(ckpt))
    return model


# -- key layouts --------------------------------------------------------------------------
# Each rule maps a regex on the foreign key to our key; ``None`` drops the tensor.

_BLOCK_PARAMS = {"grn_gamma": "grn.gamma", "grn_beta": "grn.beta",
                 "global_resp_gamma": "grn.gamma", "global_resp_beta": "grn.beta"}


def _block_suffix(rest: str) -> str:
    return _BLOCK_PARAMS.get(rest, rest)


def _reference_rules() -> list[tuple[re.Pattern, Callable[[re.Match], str | None]]]:
    return [
        (re.compile(r"^dummy_tensor$"), lambda m: None),
        (re.compile(r"^stem\.(.+)$"), lambda m: f"stem.{m[1]}"),
        (re.compile(r"^enc_block_(\d)\.(\d+)\.(.+)$"), lambda m: f"encoders.{m[1]}.{m[2]}.{_block_suffix(m[3])}"),
        (re.compile(r"^down_(\d)\.(.+)$"), lambda m: f"downs.{m[1]}.{_block_suffix(m[2])}"),
        (re.compile(r"^bottleneck\.(\d+)\.(.+)$"), lambda m: f"bottleneck.{m[1]}.{_block_suffix(m[2])}"),
        (re.compile(r"^up_(\d)\.(.+)$"), lambda m: f"ups.{m[1]}.{_block_suffix(m[2])}"),
        (re.compile(r"^dec_block_(\d)\.(\d+)\.(.+)$"), lambda m: f"decoders.{m[1]}.{m[2]}.{_block_suffix(m[3])}"),
        (re.compile(r"^out_0\.conv_out\.(.+)$"), lambda m: f"head.conv.{m[1]}"),
        (re.compile(r"^out_([1-4])\.conv_out\.(.+)$"), lambda m: f"ds_heads.{int(m[1]) - 1}.conv.{m[2]}"),
    ]


def _monai_rules() -> list[tuple[re.Pattern, Callable[[re.Match], str | None]]]:
    last = LEVELS - 1  # MONAI numbers decoder stages from the bottleneck down
    return [
        (re.compile(r"^stem\.(.+)$"), lambda m: f"stem.{m[1]}"),
        (re.compile(r"^enc_stages\.(\d)\.(\d+)\.(.+)$"), lambda m: f"encoders.{m[1]}.{m[2]}.{_block_suffix(m[3])}"),
        (re.compile(r"^down_blocks\.(\d)\.(.+)$"), lambda m: f"downs.{m[1]}.{_block_suffix(m[2])}"),
        (re.compile(r"^bottleneck\.(\d+)\.(.+)$"), lambda m: f"bottleneck.{m[1]}.{_block_suffix(m[2])}"),
        (re.compile(r"^up_blocks\.(\d)\.(.+)$"), lambda m: f"ups.{last - int(m[1])}.{_block_suffix(m[2])}"),
        (re.compile(r"^dec_stages\.(\d)\.(\d+)\.(.+)$"),
         lambda m: f"decoders.{last - int(m[1])}.{m[2]}.{_block_suffix(m[3])}"),
        (re.compile(r"^out_0\.conv_out\.(.+)$"), lambda m: f"head.conv.{m[1]}"),
        (re.compile(r"^out_blocks\.(\d)\.conv_out\.(.+)$"), lambda m: f"ds_heads.{last - int(m[1])}.conv.{m[2]}"),
    ]


def _is_head_weight(key: str) -> bool:
    return key.endswith(".weight") and key.startswith(("head.", "ds_heads."))


def _rename(sd: Mapping[str, torch.Tensor], rules, layout: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        for pattern, target in rules:
            m = pattern.match(key)
            if m:
                new = target(m)
                if new is not None:
                    # Heads are 1x1 transposed convs there ([in, out, 1..]); ours are plain ([out, in, 1..]).
                    out[new] = value.transpose(0, 1).contiguous() if _is_head_weight(new) else value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) do not belong to the {layout} MedNeXt layout, e.g. {unknown[:5]}: "
            f"is this really a {layout} checkpoint?"
        )
    return out


def infer_config(sd: Mapping[str, torch.Tensor], **overrides: Any) -> MedNeXtConfig:
    """Read a :class:`MedNeXtConfig` off a state dict in OUR layout (widths, depths, ratios, kernels).

    What weights cannot tell (``norm``: GroupNorm and LayerNorm have the same parameters;
    ``residual``) defaults to the paper's choice and can be given in ``overrides``.
    """
    stem = sd["stem.weight"]
    spatial_dims = stem.ndim - 2
    width = stem.shape[0]

    def stage_stats(prefix: str) -> tuple[int, int, int]:
        idx = {int(k.split(".")[len(prefix.split("."))]) for k in sd if k.startswith(prefix + ".")}
        if not idx:
            raise CheckpointError(f"no blocks under {prefix!r}: the state dict is incomplete")
        conv2 = sd[f"{prefix}.0.conv2.weight"]
        return len(idx), conv2.shape[0] // conv2.shape[1], sd[f"{prefix}.0.conv1.weight"].shape[-1]

    enc = [stage_stats(f"encoders.{i}") for i in range(LEVELS)]
    bott = stage_stats("bottleneck")
    dec = [stage_stats(f"decoders.{i}") for i in reversed(range(LEVELS))]
    stages = enc + [bott] + dec
    config = MedNeXtConfig(
        in_channels=stem.shape[1], num_classes=sd["head.conv.weight"].shape[0], base_width=width,
        expansion_ratios=tuple(s[1] for s in stages), block_counts=tuple(s[0] for s in stages),
        enc_kernel_size=enc[0][2], dec_kernel_size=dec[-1][2], spatial_dims=spatial_dims,
        deep_supervision="ds_heads.0.conv.weight" in sd,
        residual_up_down="downs.0.res_conv.weight" in sd,
        grn="encoders.0.0.grn.gamma" in sd,
    )
    return config.replace(**overrides) if overrides else config


def _check_against(sd: dict[str, torch.Tensor], config: MedNeXtConfig, layout: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only: no memory for e.g. MedNeXt-L's 62M weights
        expected = MedNeXt(config).state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    wrong = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:4]}" if missing else "",
            f"unexpected {extra[:4]}" if extra else "",
            ", ".join(f"{k}: {list(sd[k].shape)} vs {list(expected[k].shape)}" for k in wrong[:4]),
        ]))
        raise CheckpointError(f"the {layout} weights do not fit the MedNeXt topology of config {config}: {detail}")
    return sd


def convert_reference_state_dict(
    sd: Mapping[str, Any], config: MedNeXtConfig | None = None, **overrides: Any
) -> tuple[dict[str, torch.Tensor], MedNeXtConfig]:
    """Translate a reference-implementation state dict (or its training checkpoint) to ours.

    Returns ``(state_dict, config)``; the config is read off the weights unless given.
    """
    ours = _rename(state_dict_of(sd), _reference_rules(), "reference")
    config = config or infer_config(ours, **overrides)
    return _check_against(ours, config, "reference"), config


def to_reference_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate our state dict to the reference implementation's key layout (heads transposed)."""
    inverse = [
        (r"^encoders\.(\d)\.", r"enc_block_\1."), (r"^downs\.(\d)\.", r"down_\1."),
        (r"^ups\.(\d)\.", r"up_\1."), (r"^decoders\.(\d)\.", r"dec_block_\1."),
        (r"^head\.conv\.", "out_0.conv_out."),
    ]
    out = {}
    for key, value in state_dict_of(sd).items():
        new = key
        m = re.match(r"^ds_heads\.(\d)\.conv\.(.+)$", key)
        if m:
            new = f"out_{int(m[1]) + 1}.conv_out.{m[2]}"
        for pattern, repl in inverse:
            new = re.sub(pattern, repl, new)
        new = new.replace(".grn.gamma", ".grn_gamma").replace(".grn.beta", ".grn_beta")
        out[new] = value.transpose(0, 1).contiguous() if _is_head_weight(key) else value
    out["dummy_tensor"] = torch.tensor([1.0])
    return out


def convert_monai_state_dict(
    sd: Mapping[str, Any], config: MedNeXtConfig | None = None, **overrides: Any
) -> tuple[dict[str, torch.Tensor], MedNeXtConfig]:
    """Translate a ``monai.networks.nets.MedNeXt`` state dict to ours; returns ``(state_dict, config)``.

    MONAI's down block after encoder level i uses that level's expansion ratio, where the reference
    (and we) use the next stage's. The two agree only when those ratios are equal (the S preset);
    otherwise the weights belong to a different network and the conversion is refused.
    """
    raw = state_dict_of(sd)
    ours = _rename(raw, _monai_rules(), "MONAI")
    for i in range(LEVELS):
        down = ours.get(f"downs.{i}.conv2.weight")
        nxt = ours.get(f"encoders.{i + 1}.0.conv2.weight" if i + 1 < LEVELS else "bottleneck.0.conv2.weight")
        if down is None or nxt is None:
            continue
        r_down, r_next = down.shape[0] // down.shape[1], nxt.shape[0] // nxt.shape[1]
        if r_down != r_next:
            raise CheckpointError(
                f"MONAI's down block {i} expands by {r_down} but the stage it feeds uses {r_next}: MONAI builds "
                "down blocks with the ratio of the stage they leave, the reference with the stage they enter, "
                "so these weights (MONAI B/M/L-style ratios) belong to a different network and cannot be "
                "converted exactly. Only checkpoints whose ratios agree across each down block (e.g. the S "
                "preset) convert; retrain with mednext_lite or keep using MONAI's class for this one."
            )
    config = config or infer_config(ours, **overrides)
    return _check_against(ours, config, "MONAI"), config


def load_foreign(sd_or_path: str | Path | Mapping[str, Any], layout: str = "auto") -> MedNeXt:
    """Build a MedNeXt from a reference, MONAI or mednext_lite checkpoint (``layout="auto"`` guesses)."""
    if isinstance(sd_or_path, (str, Path)):
        obj = load_checkpoint(sd_or_path)
    else:
        obj = sd_or_path
        check_finite(obj)
    if "config" in obj and layout in ("auto", "ours"):
        return model_from_checkpoint(obj)
    keys = state_dict_of(obj).keys()
    if layout == "auto":
        layout = "monai" if any(k.startswith("enc_stages.") for k in keys) else (
            "reference" if any(k.startswith("enc_block_") for k in keys) else "ours")
    converters = {"reference": convert_reference_state_dict, "monai": convert_monai_state_dict}
    if layout == "ours":
        sd = state_dict_of(obj)
        config = infer_config(sd)
    elif layout in converters:
        sd, config = converters[layout](obj)
    else:
        raise ValueError(f"layout={layout!r}: use 'auto', 'ours', 'reference' or 'monai'")
    model = MedNeXt(config)
    model.load_state_dict(sd)
    return model


__all__ = [
    "CheckpointError",
    "atomic_torch_save",
    "check_finite",
    "convert_monai_state_dict",
    "convert_reference_state_dict",
    "entry_checksum",
    "infer_config",
    "load_checkpoint",
    "load_foreign",
    "model_from_checkpoint",
    "save_checkpoint",
    "state_dict_of",
    "tensor_checksum",
    "to_reference_state_dict",
]
