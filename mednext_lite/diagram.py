"""The whole MedNeXt drawn from the module itself: the U of stages, down/up blocks, additive skips and heads.

:func:`network_parts` builds the network on the ``meta`` device (no memory, no arithmetic) and reads
every label off it: blocks per stage and expansion ratios from the built blocks, feature-map shapes
from a forward pass of an empty input, deep-supervision loss weights from the function the trainer's
loss uses. :func:`draw_network` lays those parts out as a U; nothing in the picture is typed by hand.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, Patch, Rectangle

from .losses import deep_supervision_weights
from .model import LEVELS, STAGE_NAMES, MedNeXt, MedNeXtConfig
from .profile import count_parameters
from .variants import describe, preset_config, preset_names

__all__ = ["draw_network", "format_stage_table", "network_parts", "preset_stage_rows", "shape_text"]


def shape_text(shape: tuple[int, ...]) -> str:
    """``(32, 128, 128, 128)`` -> ``"32×128³"``; unequal axes are written out (``"32×96×128×64"``)."""
    c, *spatial = shape
    if len(set(spatial)) == 1:
        return f"{c}×{spatial[0]}{'²' if len(spatial) == 2 else '³'}"
    return "×".join(str(n) for n in shape)


def network_parts(model_or_config: MedNeXt | MedNeXtConfig, input_size: int | tuple[int, ...] = 128) -> list[dict]:
    """Every drawn part of the network, read from a ``meta``-device build of its config.

    Each part is a dict with ``kind`` (input, stem, stage, down, up, add, head), ``name``, ``level``
    (0 = full resolution .. 4 = bottleneck), ``shape`` (channels and spatial size of its output, batch
    left out) and, where they apply, ``blocks`` (B), ``ratio`` (R) and ``weight`` (loss weight of a head).
    """
    config = model_or_config if isinstance(model_or_config, MedNeXtConfig) else model_or_config.config
    size = (input_size,) * config.spatial_dims if isinstance(input_size, int) else tuple(input_size)
    with torch.device("meta"):
        net = MedNeXt(config).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    # A stage's blocks are called one by one (not as a Sequential), so its last block gives its shape.
    named = {"stem": net.stem, "bottleneck": net.bottleneck[-1], "head": net.head}
    for i in range(LEVELS):
        named |= {f"enc{i}": net.encoders[i][-1], f"down{i}": net.downs[i], f"up{i}": net.ups[i],
                  f"dec{i}": net.decoders[i][-1]}
    for i, head in enumerate(net.ds_heads or [], start=1):
        named[f"ds{i}"] = head
    hooks = [m.register_forward_hook(lambda _m, _a, out, key=key: shapes.__setitem__(key, tuple(out.shape[1:])))
             for key, m in named.items()]
    x = torch.empty(1, config.in_channels, *size, device="meta")
    with torch.no_grad():
        net(x)  # also checks the input size (divisible by 16) with the model's own message
    for h in hooks:
        h.remove()

    def ratio(block: torch.nn.Module) -> int:  # R is how much wider the 1x1 expansion is than its input
        return block.conv2.out_channels // block.conv2.in_channels

    n_out = 1 + len(net.ds_heads or [])
    weights = deep_supervision_weights(n_out)  # what make_loss() applies to [full, 1/2, ..., 1/16]
    parts = [{"kind": "input", "name": "input", "level": 0, "shape": tuple(x.shape[1:])},
             {"kind": "stem", "name": "stem", "level": 0, "shape": shapes["stem"]}]
    stages = [*net.encoders, net.bottleneck, *reversed(net.decoders)]
    for s, (name, blocks) in enumerate(zip(STAGE_NAMES, stages)):
        parts.append({"kind": "stage", "name": name, "level": min(s, 2 * LEVELS - s), "shape": shapes[name],
                      "blocks": len(blocks), "ratio": ratio(blocks[0])})
    for i in range(LEVELS):
        parts.append({"kind": "down", "name": f"down{i}", "level": i, "shape": shapes[f"down{i}"],
                      "ratio": ratio(net.downs[i])})
        parts.append({"kind": "up", "name": f"up{i}", "level": i, "shape": shapes[f"up{i}"],
                      "ratio": ratio(net.ups[i])})
        parts.append({"kind": "add", "name": f"add{i}", "level": i, "shape": shapes[f"enc{i}"]})
    for i in range(n_out):
        parts.append({"kind": "head", "name": "head" if i == 0 else f"ds{i}", "level": i,
                      "shape": shapes["head" if i == 0 else f"ds{i}"], "weight": weights[i]})
    return parts


def draw_network(model_or_config: MedNeXt | MedNeXtConfig, input_size: int | tuple[int, ...] = 128,
                 ax: Any = None) -> Figure:
    """Draw the network as a U (encoder left, bottleneck at the bottom, decoder right, heads far right).

    Every label comes from :func:`network_parts`; each text carries a ``gid`` (``"stage:enc0"``,
    ``"down:0"``, ``"up:0"``, ``"add:0"``, ``"head:0"``, ...) so tests can read the picture back.
    """
    config = model_or_config if isinstance(model_or_config, MedNeXtConfig) else model_or_config.config
    parts = network_parts(config, input_size)
    if ax is None:
        fig = Figure(figsize=(16, 7.6), layout="constrained")
        ax = fig.subplots()
    fig = ax.figure
    colours = {"stage_enc": "#cfe2f3", "stage_bottleneck": "#d9d2e9", "stage_dec": "#fce5cd",
               "updown": "#eeeeee", "head": "#d9ead3", "io": "#ffffff"}

    def y(level: float) -> float:
        return -1.7 * level

    def place(p: dict) -> tuple[float, float, float, float]:  # centre x, centre y, width, height
        level, kind = p["level"], p["kind"]
        if kind == "input":
            return -1.7, y(0), 1.3, 0.7
        if kind == "stem":
            return 0.2, y(0), 1.2, 0.7
        if kind == "stage":
            s = STAGE_NAMES.index(p["name"])
            return (2 + 1.6 * s if s <= LEVELS else 14.8 - 1.6 * level), y(level), 1.45, 0.95
        if kind == "down":
            return 2.8 + 1.6 * level, y(level + 0.5), 0.9, 0.5
        if kind == "up":
            return 14.8 - 1.6 * level - 1.375, y(level + 0.5), 0.9, 0.5
        if kind == "add":
            return 14.8 - 1.6 * level - 1.15, y(level), 0.42, 0.42
        return 17.9, y(level), 1.7, 0.8  # heads: one column, one row per resolution

    boxes = {}
    for p in parts:
        cx, cy, w, h = place(p)
        kind, gid = p["kind"], f"{p['kind']}:{p['name'] if p['kind'] == 'stage' else p['level']}"
        if kind == "add":
            boxes[p["name"]] = ax.add_patch(Circle((cx, cy), w / 2, fc="white", ec="black", lw=1.2, zorder=2))
            ax.text(cx, cy, "+", ha="center", va="center", fontsize=13, weight="bold", gid=gid, zorder=3)
            continue
        if kind == "stage":
            fill = colours["stage_enc" if p["name"].startswith("enc") else
                           "stage_bottleneck" if p["name"] == "bottleneck" else "stage_dec"]
            text = f"{p['name']}\nB={p['blocks']}  R={p['ratio']}\n{shape_text(p['shape'])}"
        elif kind in ("down", "up"):
            fill = colours["updown"]
            text = f"{'down' if kind == 'down' else 'up'} ×2\nR={p['ratio']}"
        elif kind == "head":
            fill, frac = colours["head"], Fraction(p["weight"]).limit_denominator(1000)
            what = "output head" if p["level"] == 0 else f"DS head 1/{2 ** p['level']}"
            text = f"{what}\n{shape_text(p['shape'])}\nloss w={frac} ({p['weight']:.3f})"
        else:
            fill = colours["io"]
            text = f"{p['kind']}{' 1x1 conv' if kind == 'stem' else ''}\n{shape_text(p['shape'])}"
        boxes[p["name"]] = ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fc=fill, ec="black",
                                                  lw=0.8, zorder=2))
        ax.text(cx, cy, text, ha="center", va="center", fontsize=8 if kind != "down" and kind != "up" else 7,
                gid=gid, zorder=3, linespacing=1.25)

    def arrow(a: str, b: str, **style: Any) -> None:
        pa, pb = boxes[a], boxes[b]
        ca = pa.center if isinstance(pa, Circle) else (pa.get_x() + pa.get_width() / 2, pa.get_y() + pa.get_height() / 2)
        cb = pb.center if isinstance(pb, Circle) else (pb.get_x() + pb.get_width() / 2, pb.get_y() + pb.get_height() / 2)
        ax.add_patch(FancyArrowPatch(ca, cb, patchA=pa, patchB=pb, arrowstyle="-|>", mutation_scale=10,
                                     lw=style.pop("lw", 1.0), zorder=1, **style))

    arrow("input", "stem"), arrow("stem", "enc0")
    for i in range(LEVELS):
        arrow(f"enc{i}", f"down{i}"), arrow(f"down{i}", STAGE_NAMES[i + 1])
        arrow(STAGE_NAMES[2 * LEVELS - i - 1], f"up{i}"), arrow(f"up{i}", f"add{i}")
        arrow(f"enc{i}", f"add{i}", color="#3d85c6", ls="--", lw=1.3)
        arrow(f"add{i}", f"dec{i}")
    for p in parts:
        if p["kind"] == "head":
            arrow(STAGE_NAMES[2 * LEVELS - p["level"]], p["name"], color="#38761d")
    ax.set_xlim(-2.5, 19)
    ax.set_ylim(y(LEVELS) - 1.0, 0.8)
    ax.axis("off")
    ax.set_title(f"MedNeXt {describe(config)} on a {shape_text(parts[0]['shape'])} input "
                 "(channels × spatial size after each part; B = blocks, R = expansion ratio)", fontsize=11)
    ax.legend(handles=[
        Patch(fc=colours["stage_enc"], ec="black", label="encoder stage (B blocks, ratio R)"),
        Patch(fc=colours["stage_bottleneck"], ec="black", label="bottleneck stage"),
        Patch(fc=colours["stage_dec"], ec="black", label="decoder stage"),
        Patch(fc=colours["updown"], ec="black", label="2x down / up block (R of the stage it feeds)"),
        Patch(fc="white", ec="#3d85c6", ls="--", label="skip: encoder output ADDED (+), not concatenated"),
        Patch(fc=colours["head"], ec="black", label="1x1 head; w = its weight in the loss"),
    ], loc="lower left", fontsize=8, frameon=False)
    return fig


def preset_stage_rows(kernel_size: int = 3, spatial_dims: int = 3, in_channels: int = 1,
                      num_classes: int = 3, family: str = "v1") -> list[dict]:
    """One row per published preset of ``family`` (``"v1"``, ``"v2"`` or ``"all"``): R, B and width for
    each of the 9 stages, and the parameter count (no deep supervision; 1 input channel and 3 classes,
    as in the paper's table)."""
    rows = []
    for name in preset_names(family):
        config = preset_config(name, in_channels, num_classes, kernel_size, spatial_dims)
        rows.append({"variant": name, "kernel": kernel_size, "spatial_dims": spatial_dims,
                     "R": config.expansion_ratios, "B": config.block_counts,
                     "widths": tuple(config.width(min(s, 2 * LEVELS - s)) for s in range(len(STAGE_NAMES))),
                     "params": count_parameters(config)})
    return rows


def format_stage_table(rows: list[dict]) -> str:
    """The rows of :func:`preset_stage_rows` as a Markdown table: one column per stage, R/B per preset."""
    lines = ["| preset | " + " | ".join(STAGE_NAMES) + " | parameters |", "|---" * (len(STAGE_NAMES) + 2) + "|",
             "| width | " + " | ".join(str(w) for w in rows[0]["widths"]) + " | |"]
    for r in rows:
        cells = " | ".join(f"R{ratio} B{b}" for ratio, b in zip(r["R"], r["B"]))
        name = r["variant"] if r["widths"] == rows[0]["widths"] else f"{r['variant']} (C={r['widths'][0]})"
        lines.append(f"| {name} | {cells} | {r['params']:,} |")
    return "\n".join(lines)
