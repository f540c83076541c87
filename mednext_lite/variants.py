"""The published presets (v1 S/B/M/L, v2 V2-B/V2-W) as data, and compound scaling as functions on configs.

MedNeXt scales along three axes: depth (blocks per stage), width (expansion ratio R, and the base
width C) and receptive field (kernel size k). Each function here takes a :class:`MedNeXtConfig`
and returns a new one, so ablations are a few lines of data, never a new constructor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import NUM_STAGES, MedNeXt, MedNeXtConfig


@dataclass(frozen=True)
class Preset:
    """A published MedNeXt size: ratios and block counts per stage, width, GRN and down-block topology,
    the kernel sizes it was published with, and the paper's own figures (``None`` where it printed none)."""

    name: str
    expansion_ratios: tuple[int, ...]
    block_counts: tuple[int, ...]
    grad_checkpointing: bool
    paper_params_m: tuple[float, ...] | None  # one per kernel size, millions, as printed in the paper
    paper_gflops: tuple[float, ...] | None  # one per kernel size at 1x128^3, as printed in the paper
    family: str = "v1"  # "v1": MICCAI 2023 (arXiv 2303.09975); "v2": arXiv 2512.17774
    base_width: int = 32
    grn: bool = False
    topology: str = "reference"
    kernel_sizes: tuple[int, ...] = (3, 5)


_L_RATIOS = _L_BLOCKS = (3, 4, 8, 8, 8, 8, 8, 4, 3)

PRESETS: dict[str, Preset] = {
    "S": Preset("S", (2,) * 9, (2,) * 9, False, (5.6, 5.9), (130, 169)),
    "B": Preset("B", (2, 3, 4, 4, 4, 4, 4, 3, 2), (2,) * 9, False, (10.5, 11.0), (170, 208)),
    "M": Preset("M", (2, 3, 4, 4, 4, 4, 4, 3, 2), (3, 4, 4, 4, 4, 4, 4, 4, 3), True, (17.6, 18.3), (248, 308)),
    "L": Preset("L", _L_RATIOS, _L_BLOCKS, True, (61.8, 63.0), (500, 564)),
    # MedNeXt v2: v1-L's blocks and ratios with GRN in every block, k3, at base width 32 and 64.
    "V2-B": Preset("V2-B", _L_RATIOS, _L_BLOCKS, True, None, None, family="v2", base_width=32, grn=True,
                   topology="v2", kernel_sizes=(3,)),
    "V2-W": Preset("V2-W", _L_RATIOS, _L_BLOCKS, True, None, None, family="v2", base_width=64, grn=True,
                   topology="v2", kernel_sizes=(3,)),
}
FAMILIES = ("v1", "v2")


def preset_names(family: str = "v1") -> tuple[str, ...]:
    """The preset names of one family (``"v1"``: S/B/M/L, ``"v2"``: V2-B/V2-W) or of ``"all"``."""
    if family != "all" and family not in FAMILIES:
        raise ValueError(f"family={family!r}: use one of {FAMILIES} or 'all'")
    return tuple(n for n, p in PRESETS.items() if family in ("all", p.family))


def get_preset(variant: str) -> Preset:
    """Look a preset up by name (case-insensitive), with an error listing the valid names."""
    key = str(variant).strip().upper()
    if key not in PRESETS:
        raise ValueError(f"unknown MedNeXt variant {variant!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[key]


def preset_config(
    variant: str,
    in_channels: int = 1,
    num_classes: int = 2,
    kernel_size: int = 3,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    **overrides: Any,
) -> MedNeXtConfig:
    """The config of a published preset; ``overrides`` replace any :class:`MedNeXtConfig` field
    (e.g. ``topology="monai"`` for weights trained with MONAI's B/M/L)."""
    p = get_preset(variant)
    config = MedNeXtConfig(
        in_channels=in_channels, num_classes=num_classes, base_width=p.base_width,
        expansion_ratios=p.expansion_ratios, block_counts=p.block_counts,
        enc_kernel_size=kernel_size, dec_kernel_size=kernel_size, spatial_dims=spatial_dims,
        deep_supervision=deep_supervision, residual=True, residual_up_down=True, grn=p.grn, topology=p.topology,
    )
    return config.replace(**overrides) if overrides else config


def create_mednext(
    variant: str,
    in_channels: int = 1,
    num_classes: int = 2,
    kernel_size: int = 3,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    **overrides: Any,
) -> MedNeXt:
    """Build a published preset (S, B, M, L, V2-B or V2-W) in 2D or 3D.

    Gradient checkpointing is switched on for M, L and the v2 presets, as in the papers; turn it off with
    ``model.set_grad_checkpointing(False)``. ``overrides`` replace config fields, e.g.
    ``base_width=16`` or ``norm="layer"``.
    """
    config = preset_config(variant, in_channels, num_classes, kernel_size, spatial_dims, deep_supervision, **overrides)
    return MedNeXt(config).set_grad_checkpointing(get_preset(variant).grad_checkpointing)


# -- compound scaling -------------------------------------------------------------------------

def scale_depth(config: MedNeXtConfig, factor: float) -> MedNeXtConfig:
    """Multiply the blocks per stage by ``factor`` (rounded, at least one block per stage)."""
    if factor <= 0:
        raise ValueError(f"depth factor {factor} must be > 0")
    return config.replace(block_counts=tuple(max(1, round(b * factor)) for b in config.block_counts))


def scale_width(config: MedNeXtConfig, factor: float, *, axis: str = "expansion") -> MedNeXtConfig:
    """Widen the network by ``factor``: along the expansion ratio R (the paper's width axis) or
    the base width C (``axis="base"``). Results are rounded, never below 1."""
    if factor <= 0:
        raise ValueError(f"width factor {factor} must be > 0")
    if axis == "expansion":
        return config.replace(expansion_ratios=tuple(max(1, round(r * factor)) for r in config.expansion_ratios))
    if axis == "base":
        return config.replace(base_width=max(1, round(config.base_width * factor)))
    raise ValueError(f"axis={axis!r}: use 'expansion' (ratio R) or 'base' (base width C)")


def scale_kernel(config: MedNeXtConfig, kernel_size: int, *, where: str = "both") -> MedNeXtConfig:
    """Set the depthwise kernel size in the encoder, the decoder, or both."""
    if where not in ("both", "encoder", "decoder"):
        raise ValueError(f"where={where!r}: use 'both', 'encoder' or 'decoder'")
    changes = {}
    if where in ("both", "encoder"):
        changes["enc_kernel_size"] = kernel_size
    if where in ("both", "decoder"):
        changes["dec_kernel_size"] = kernel_size
    return config.replace(**changes)


def compound_scale(
    config: MedNeXtConfig, *, depth: float = 1.0, width: float = 1.0, kernel_size: int | None = None
) -> MedNeXtConfig:
    """Scale depth, width and kernel size together (each axis is independent and optional)."""
    config = scale_depth(config, depth) if depth != 1.0 else config
    config = scale_width(config, width) if width != 1.0 else config
    return scale_kernel(config, kernel_size) if kernel_size is not None else config


def describe(config: MedNeXtConfig) -> str:
    """One line naming the preset a config equals (if any) and its axes."""
    name = next((n for n, p in PRESETS.items()
                 if (p.expansion_ratios, p.block_counts, p.base_width, p.grn, p.topology)
                 == (config.expansion_ratios, config.block_counts, config.base_width, config.grn, config.topology)),
                "custom")
    k = (config.enc_kernel_size if config.enc_kernel_size == config.dec_kernel_size
         else f"{config.enc_kernel_size}/{config.dec_kernel_size}")
    return (f"{name} {config.spatial_dims}D k{k} C={config.base_width} "
            f"depth={sum(config.block_counts)} blocks mean R={sum(config.expansion_ratios) / NUM_STAGES:.2f}"
            f"{' +DS' if config.deep_supervision else ''}")


__all__ = [
    "FAMILIES",
    "PRESETS",
    "Preset",
    "compound_scale",
    "create_mednext",
    "describe",
    "get_preset",
    "preset_config",
    "preset_names",
    "scale_depth",
    "scale_kernel",
    "scale_width",
]
