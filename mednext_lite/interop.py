"""Conversion between mednext_lite's state dicts and those of the reference (MIC-DKFZ) and MONAI.

Each foreign layout is a table of key prefixes: :func:`convert_reference_state_dict` /
:func:`to_reference_state_dict` translate the reference implementation's ``mednextv1`` keys,
:func:`convert_monai_state_dict` MONAI's ``MedNeXt`` keys (its B/M/L build the down blocks
differently: the config's ``topology="monai"``). :func:`load_foreign` builds a model from any of the three.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    CheckpointError,
    check_finite,
    load_checkpoint,
    model_from_checkpoint,
    state_dict_of,
)
from .model import LEVELS, TOPOLOGIES, MedNeXt, MedNeXtConfig

__all__ = [
    "convert_monai_state_dict",
    "convert_reference_state_dict",
    "infer_config",
    "load_foreign",
    "to_reference_state_dict",
]


# -- key layouts --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """How one project names MedNeXt's tensors, as rules from its keys to another layout's.

    ``stages`` pairs a regex of a key's stage prefix (one group at most: the stage number) with the
    other layout's prefix, or ``None`` to drop the tensor; ``{i}`` in it is the stage number,
    ``{i_minus_1}`` / ``{i_plus_1}`` its neighbours and ``{mirrored}`` ``LEVELS - 1 - i`` (counted from
    the bottleneck down). ``params`` renames a block's own parameters (the last part of the key).
    """

    name: str
    stages: tuple[tuple[str, str | None], ...]
    params: Mapping[str, str]


_REFERENCE = _Layout("reference", stages=(
    (r"dummy_tensor", None),
    (r"stem", "stem"),
    (r"enc_block_(\d)", "encoders.{i}"),
    (r"down_(\d)", "downs.{i}"),
    (r"bottleneck", "bottleneck"),
    (r"up_(\d)", "ups.{i}"),
    (r"dec_block_(\d)", "decoders.{i}"),
    (r"out_0\.conv_out", "head.conv"),
    (r"out_([1-4])\.conv_out", "ds_heads.{i_minus_1}.conv"),
), params={"grn_gamma": "grn.gamma", "grn_beta": "grn.beta"})

_TO_REFERENCE = _Layout("mednext_lite", stages=(
    (r"stem", "stem"),
    (r"encoders\.(\d)", "enc_block_{i}"),
    (r"downs\.(\d)", "down_{i}"),
    (r"bottleneck", "bottleneck"),
    (r"ups\.(\d)", "up_{i}"),
    (r"decoders\.(\d)", "dec_block_{i}"),
    (r"head\.conv", "out_0.conv_out"),
    (r"ds_heads\.(\d)\.conv", "out_{i_plus_1}.conv_out"),
), params={"grn.gamma": "grn_gamma", "grn.beta": "grn_beta"})

# MONAI numbers the decoder stages, up blocks and deep-supervision heads from the bottleneck down.
_MONAI = _Layout("MONAI", stages=(
    (r"stem", "stem"),
    (r"enc_stages\.(\d)", "encoders.{i}"),
    (r"down_blocks\.(\d)", "downs.{i}"),
    (r"bottleneck", "bottleneck"),
    (r"up_blocks\.(\d)", "ups.{mirrored}"),
    (r"dec_stages\.(\d)", "decoders.{mirrored}"),
    (r"out_0\.conv_out", "head.conv"),
    (r"out_blocks\.(\d)\.conv_out", "ds_heads.{mirrored}.conv"),
), params={"global_resp_gamma": "grn.gamma", "global_resp_beta": "grn.beta"})


def _is_head_weight(key: str) -> bool:
    return key.endswith(".weight") and key.startswith(("head.", "ds_heads."))


def _translate(key: str, layout: _Layout) -> tuple[bool, str | None]:
    """``(matched, new_key)``: whether a rule of ``layout`` covers ``key``, and the key it becomes
    (``None``: dropped)."""
    for prefix, target in layout.stages:
        found = re.fullmatch(prefix if target is None else rf"{prefix}\.(?P<rest>.+)", key)
        if found is None:
            continue
        if target is None:
            return True, None
        stage = int(found[1]) if found.re.groups > 1 else 0  # a prefix without a number has only `rest`
        rest = found["rest"]
        for theirs, ours in layout.params.items():
            if rest == theirs or rest.endswith("." + theirs):
                rest = rest[: len(rest) - len(theirs)] + ours
                break
        new = target.format(i=stage, i_minus_1=stage - 1, i_plus_1=stage + 1, mirrored=LEVELS - 1 - stage)
        return True, f"{new}.{rest}"
    return False, None


def _rename(sd: Mapping[str, torch.Tensor], layout: _Layout) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        matched, new = _translate(key, layout)
        if not matched:
            unknown.append(key)
        elif new is not None:
            # The heads are 1x1 transposed convs there ([in, out, 1..]), plain convs here ([out, in, 1..]).
            out[new] = value.transpose(0, 1).contiguous() if _is_head_weight(key) or _is_head_weight(new) else value
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) do not belong to the {layout.name} MedNeXt layout, e.g. {unknown[:5]}: "
            f"is this really a {layout.name} checkpoint?"
        )
    return out


# -- conversions --------------------------------------------------------------------------

def _down_topology(sd: Mapping[str, torch.Tensor], config: MedNeXtConfig) -> str:
    """The topology whose down blocks have the ratios and GRNs found in ``sd`` (the first of
    :data:`~mednext_lite.model.TOPOLOGIES` when several build the same network)."""
    found = []
    for i in range(LEVELS):
        conv2 = sd.get(f"downs.{i}.conv2.weight")
        if conv2 is None:
            raise CheckpointError(f"no weights for down block {i} ('downs.{i}.conv2.weight'): the state dict is "
                                  "incomplete")
        found.append((conv2.shape[0] // conv2.shape[1], f"downs.{i}.grn.gamma" in sd))
    for topology in TOPOLOGIES:
        candidate = config.replace(topology=topology)
        if found == [(candidate.down_ratio(i), candidate.down_grn(i)) for i in range(LEVELS)]:
            return topology
    shown = ", ".join(f"down block {i}: R={r}{' +GRN' if g else ''}" for i, (r, g) in enumerate(found))
    raise CheckpointError(
        f"the down blocks ({shown}) fit none of the topologies {tuple(TOPOLOGIES)} for stage ratios "
        f"{config.expansion_ratios} (grn={config.grn}): {'; '.join(f'{k}: {v}' for k, v in TOPOLOGIES.items())}")


def infer_config(sd: Mapping[str, torch.Tensor], **overrides: Any) -> MedNeXtConfig:
    """Read a :class:`MedNeXtConfig` off a state dict in OUR layout (widths, depths, ratios, kernels,
    GRN, and the down-block ``topology``).

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
    config = config.replace(topology=_down_topology(sd, config))
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
    ours = _rename(state_dict_of(sd), _REFERENCE)
    config = config or infer_config(ours, **overrides)
    return _check_against(ours, config, "reference"), config


def to_reference_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate our state dict to the reference implementation's key layout (heads transposed,
    plus the ``dummy_tensor`` its modules carry). Only the reference topology has a reference
    equivalent; MONAI- or v2-style down blocks are refused."""
    sd = state_dict_of(sd)
    topology = infer_config(sd).topology
    if topology != "reference":
        raise CheckpointError(
            f"these weights have {topology!r} down blocks ({TOPOLOGIES[topology]}), which the reference "
            f"implementation cannot build (it has {TOPOLOGIES['reference']}): keep them in the mednext_lite "
            "format (save_checkpoint)")
    out = _rename(sd, _TO_REFERENCE)
    out["dummy_tensor"] = torch.tensor([1.0])
    return out


def convert_monai_state_dict(
    sd: Mapping[str, Any], config: MedNeXtConfig | None = None, **overrides: Any
) -> tuple[dict[str, torch.Tensor], MedNeXtConfig]:
    """Translate a ``monai.networks.nets.MedNeXt`` state dict to ours; returns ``(state_dict, config)``.

    MONAI builds the down block after encoder level i with that level's ratio R[i] (the reference:
    R[i+1]) and never gives a down block a GRN; the config read off the weights says so with
    ``topology="monai"`` wherever that differs from the reference (B/M/L, or any GRN model; the S
    preset without GRN is the reference's network). One MONAI flag switches the residual of the
    blocks and of the up/down blocks together, so ``residual`` follows the up/down blocks' 1x1 path.
    MONAI's ``norm_type="layer"`` (an ``nn.LayerNorm`` over channels and a k^d window) has no
    equivalent here and is refused.
    """
    ours = _rename(state_dict_of(sd), _MONAI)
    windowed = next((k for k, v in ours.items() if k.endswith(".norm.weight") and v.ndim > 1), None)
    if windowed is not None:
        raise CheckpointError(
            f"MONAI weight {windowed!r} has shape {list(ours[windowed].shape)}: MONAI's norm_type='layer' normalises "
            "over the channels and a kernel-sized spatial window (nn.LayerNorm), which neither the reference nor "
            "mednext_lite builds (norm='layer' here normalises each voxel over its channels); only "
            "norm_type='group' checkpoints convert")
    overrides.setdefault("residual", "downs.0.res_conv.weight" in ours)
    config = config or infer_config(ours, **overrides)
    return _check_against(ours, config, "MONAI"), config


_CONVERTERS = {"reference": convert_reference_state_dict, "monai": convert_monai_state_dict}


def _guess_layout(keys: Any) -> str:
    if any(k.startswith("enc_stages.") for k in keys):
        return "monai"
    return "reference" if any(k.startswith("enc_block_") for k in keys) else "ours"


def load_foreign(sd_or_path: str | Path | Mapping[str, Any], layout: str = "auto") -> MedNeXt:
    """Build a MedNeXt from a reference, MONAI or mednext_lite checkpoint or state dict (a path is
    read with :func:`~mednext_lite.checkpoint.load_checkpoint`); ``layout="auto"`` guesses it from
    the keys, and the config is read off the weights unless the file embeds one."""
    if layout not in ("auto", "ours", *_CONVERTERS):
        raise ValueError(f"layout={layout!r}: use 'auto', 'ours', 'reference' or 'monai'")
    if isinstance(sd_or_path, (str, Path)):
        obj = load_checkpoint(sd_or_path)
    else:
        obj = sd_or_path
        check_finite(obj)
    if "config" in obj and layout in ("auto", "ours"):
        return model_from_checkpoint(obj)
    if layout == "auto":
        layout = _guess_layout(state_dict_of(obj).keys())
    if layout == "ours":
        sd = state_dict_of(obj)
        config = infer_config(sd)
    else:
        sd, config = _CONVERTERS[layout](obj)
    model = MedNeXt(config)
    model.load_state_dict(sd)
    return model
