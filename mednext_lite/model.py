"""The MedNeXt network: a 4-level U with additive skips, built from a :class:`MedNeXtConfig`.

Stage index s = 0..8 runs enc0, enc1, enc2, enc3, bottleneck, dec3, dec2, dec1, dec0; the config's
``expansion_ratios`` and ``block_counts`` are indexed the same way. The down block after encoder
level i uses the ratio of stage i+1 and the up block feeding decoder level i the ratio of stage
8-i, exactly as in the reference implementation; the config's ``topology`` also builds MONAI's
and MedNeXt v2's variants of the down blocks (see :data:`TOPOLOGIES`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import NORMS, Head, MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock
from .fast.conv import pointwise_conv
from .fast.conv import set_kernels as _set_kernels
from .fast.layout import MEMORY_FORMATS, as_memory_format, resolve_memory_format

LEVELS = 4
NUM_STAGES = 2 * LEVELS + 1
DIVISOR = 2**LEVELS
STAGE_NAMES = ("enc0", "enc1", "enc2", "enc3", "bottleneck", "dec3", "dec2", "dec1", "dec0")
# How the four down blocks are built; everything else is the same in all three.
TOPOLOGIES = {
    "reference": "down block i expands by R[i+1]; with grn, every down block but the first has GRN "
                 "(MIC-DKFZ mednextv1)",
    "monai": "down block i expands by R[i]; no down block has GRN (monai.networks.nets.MedNeXt)",
    "v2": "down block i expands by R[i+1]; with grn, every down block has GRN (the MedNeXt v2 presets)",
}


#: What gradient checkpointing recomputes in the backward pass, per stage: the whole block
#: (``"block"``: only its input is kept) or only the part after its depthwise conv
#: (``"expansion"``: the norm, the R*C-wide 1x1 expansion, GELU, [GRN] and the 1x1 compression; the
#: depthwise conv's output is kept, so the conv is not run twice). ``None``: nothing recomputed.
CHECKPOINT_POLICIES = ("block", "expansion")


def checkpoint_policy(value: Any) -> tuple[str | None, ...]:
    """``value`` as one checkpointing entry per stage (None, ``"block"`` or ``"expansion"``).

    ``True`` is ``"block"`` everywhere, ``False``/``None`` nothing; one policy name applies to every
    stage; a sequence gives one entry per stage (NUM_STAGES of them, ``enc0`` .. ``dec0``).
    """
    if value is None or value is False:
        return (None,) * NUM_STAGES
    if value is True:
        return ("block",) * NUM_STAGES
    if isinstance(value, str):
        value = (value,) * NUM_STAGES
    try:
        entries = tuple(value)
    except TypeError:
        raise TypeError(f"grad checkpointing {value!r}: use True, False, one of {CHECKPOINT_POLICIES} or a sequence of "
                        f"{NUM_STAGES} entries None/{'/'.join(map(repr, CHECKPOINT_POLICIES))}") from None
    if len(entries) != NUM_STAGES:
        raise ValueError(f"grad checkpointing has {len(entries)} entries, expected {NUM_STAGES} (one per stage: "
                         f"{', '.join(STAGE_NAMES)}), each None, 'block' or 'expansion'")
    for stage, entry in zip(STAGE_NAMES, entries):
        if entry is not None and entry not in CHECKPOINT_POLICIES:
            raise ValueError(f"grad checkpointing of stage {stage} is {entry!r}: use None (off), 'block' or 'expansion'")
    return entries


def _per_stage(name: str, value: Any) -> tuple[int, ...]:
    """``value`` as one positive int per stage: an int repeated, or a sequence of exactly NUM_STAGES."""
    if isinstance(value, int):
        return (value,) * NUM_STAGES
    value = tuple(int(v) for v in value)
    if len(value) != NUM_STAGES:
        raise ValueError(
            f"{name} has {len(value)} entries, expected {NUM_STAGES} (one per stage: {', '.join(STAGE_NAMES)})"
        )
    if min(value) < 1:
        raise ValueError(f"{name}={value} must be positive in every stage")
    return value


@dataclass(frozen=True)
class MedNeXtConfig:
    """Everything that defines a MedNeXt, as plain data (a checkpoint stores it as a dict).

    Args:
        in_channels: input modalities.
        num_classes: output channels (classes including background).
        base_width: C, the width of level 0; level i has C*2^i channels.
        expansion_ratios: R per stage (9 entries, or one int for all).
        block_counts: B per stage (9 entries, or one int for all).
        enc_kernel_size: depthwise kernel of the encoder blocks and down blocks.
        dec_kernel_size: depthwise kernel of the bottleneck, up blocks and decoder blocks.
        spatial_dims: 2 or 3.
        deep_supervision: build the four extra heads (1/2 .. 1/16 resolution).
        residual: identity residual inside each MedNeXt block (the blocks' ``residual``).
        residual_up_down: 1x1 conv residual path in the down and up blocks (their ``conv_residual``).
        norm: ``"group"`` or ``"layer"``.
        grn: global response norm in every block (in the down blocks as ``topology`` says).
        topology: how the down blocks are built, one of :data:`TOPOLOGIES`: ``"reference"`` (the
            default), ``"monai"`` (to run weights trained with MONAI's MedNeXt) or ``"v2"``.
    """

    in_channels: int = 1
    num_classes: int = 2
    base_width: int = 32
    expansion_ratios: tuple[int, ...] = field(default=(2,) * NUM_STAGES)
    block_counts: tuple[int, ...] = field(default=(2,) * NUM_STAGES)
    enc_kernel_size: int = 3
    dec_kernel_size: int = 3
    spatial_dims: int = 3
    deep_supervision: bool = False
    residual: bool = True
    residual_up_down: bool = True
    norm: str = "group"
    grn: bool = False
    topology: str = "reference"

    def __post_init__(self) -> None:
        object.__setattr__(self, "expansion_ratios", _per_stage("expansion_ratios", self.expansion_ratios))
        object.__setattr__(self, "block_counts", _per_stage("block_counts", self.block_counts))
        for name in ("in_channels", "num_classes", "base_width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("enc_kernel_size", "dec_kernel_size"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name}={k} must be a positive odd number, e.g. 3 or 5")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={self.spatial_dims!r} is not supported: use 2 or 3")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} is not supported: use one of {NORMS}")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology={self.topology!r} is not one of {tuple(TOPOLOGIES)}: pick one of those "
                             "('reference' unless the weights come from MONAI's MedNeXt or are MedNeXt v2)")

    @property
    def kernel_size(self) -> int:
        """The kernel size when encoder and decoder agree (as in every preset)."""
        if self.enc_kernel_size != self.dec_kernel_size:
            raise ValueError(
                f"encoder and decoder kernels differ ({self.enc_kernel_size} vs {self.dec_kernel_size}): "
                "read enc_kernel_size / dec_kernel_size"
            )
        return self.enc_kernel_size

    def down_ratio(self, level: int) -> int:
        """Expansion ratio of the down block after encoder level ``level`` (0..3)."""
        return self.expansion_ratios[level if self.topology == "monai" else level + 1]

    def down_grn(self, level: int) -> bool:
        """Whether the down block after encoder level ``level`` has a GRN."""
        return self.grn and (self.topology == "v2" or (self.topology == "reference" and level > 0))

    def width(self, level: int) -> int:
        """Channels at resolution level ``level`` (0 = full resolution, 4 = bottleneck)."""
        return self.base_width * 2**level

    def replace(self, **changes: Any) -> MedNeXtConfig:
        """A copy with some fields changed (``kernel_size=`` sets both kernels)."""
        if "kernel_size" in changes:
            k = changes.pop("kernel_size")
            changes.setdefault("enc_kernel_size", k)
            changes.setdefault("dec_kernel_size", k)
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown MedNeXtConfig field(s) {sorted(unknown)}; valid: {[f.name for f in fields(self)]}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MedNeXtConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        return cls().replace(**dict(data))


class MedNeXt(nn.Module):
    """MedNeXt for 2D or 3D segmentation, faithful to the reference topology.

    ``forward(x)`` returns the full-resolution logits ``[N, num_classes, *spatial]``. When the
    config has ``deep_supervision=True`` and deep supervision is enabled (the default; see
    :meth:`set_deep_supervision`), it returns a list ``[full, 1/2, 1/4, 1/8, 1/16]`` in BOTH train
    and eval mode, so the output type never depends on ``model.training``; inference code turns the
    extra heads off with :meth:`set_deep_supervision` or the :meth:`full_resolution_only` context.
    """

    def __init__(self, config: MedNeXtConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        config = (config or MedNeXtConfig()).replace(**kwargs) if kwargs else (config or MedNeXtConfig())
        self.config = config
        c, r, b = config, config.expansion_ratios, config.block_counts
        common = {"spatial_dims": c.spatial_dims, "norm": c.norm, "grn": c.grn}

        def stage(level: int, s: int, k: int) -> nn.Sequential:
            return nn.Sequential(*(
                MedNeXtBlock(c.width(level), expansion_ratio=r[s], kernel_size=k, residual=c.residual, **common)
                for _ in range(b[s])
            ))

        self.stem = pointwise_conv(c.spatial_dims, c.in_channels, c.base_width)
        self.encoders = nn.ModuleList(stage(i, i, c.enc_kernel_size) for i in range(LEVELS))
        self.downs = nn.ModuleList(
            MedNeXtDownBlock(c.width(i), expansion_ratio=c.down_ratio(i), kernel_size=c.enc_kernel_size,
                             conv_residual=c.residual_up_down, **{**common, "grn": c.down_grn(i)})
            for i in range(LEVELS)
        )
        self.bottleneck = stage(LEVELS, LEVELS, c.dec_kernel_size)
        # ups[i] and decoders[i] produce level i; they belong to stage 8 - i.
        self.ups = nn.ModuleList(
            MedNeXtUpBlock(c.width(i + 1), expansion_ratio=r[8 - i], kernel_size=c.dec_kernel_size,
                           conv_residual=c.residual_up_down, **common)
            for i in range(LEVELS)
        )
        self.decoders = nn.ModuleList(stage(i, 8 - i, c.dec_kernel_size) for i in range(LEVELS))
        self.head = Head(c.base_width, c.num_classes, c.spatial_dims)
        # ds_heads[i-1] reads level i (i = 1..4, level 4 being the bottleneck).
        self.ds_heads = (
            nn.ModuleList(Head(c.width(i), c.num_classes, c.spatial_dims) for i in range(1, LEVELS + 1))
            if c.deep_supervision else None
        )
        self.checkpoint_policy: tuple[str | None, ...] = (None,) * NUM_STAGES
        self.deep_supervision = c.deep_supervision
        self.memory_format = "auto"
        self.kernels = "pytorch"

    # -- switches ---------------------------------------------------------------------------
    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The blocks of stage ``stage`` (0..8): its MedNeXt blocks, with the down block feeding it
        (stages 1..4) or the up block opening it (stages 5..8), as the expansion ratios are assigned."""
        if not 0 <= stage < NUM_STAGES:
            raise ValueError(f"stage={stage!r} must be in 0..{NUM_STAGES - 1} ({', '.join(STAGE_NAMES)})")
        if stage < LEVELS:
            return ([self.downs[stage - 1]] if stage else []) + list(self.encoders[stage])
        if stage == LEVELS:
            return [self.downs[LEVELS - 1], *self.bottleneck]
        level = NUM_STAGES - 1 - stage
        return [self.ups[level], *self.decoders[level]]

    @property
    def grad_checkpointing(self) -> bool:
        """Whether any stage recomputes activations in the backward pass (see :attr:`checkpoint_policy`)."""
        return any(p is not None for p in self.checkpoint_policy)

    def set_grad_checkpointing(self, policy: Any = True) -> MedNeXt:
        """Recompute activations in the backward pass (non-reentrant checkpointing), per stage.

        ``policy``: ``True`` or ``"block"`` (each block keeps only its input), ``"expansion"`` (each
        block keeps its input and its depthwise conv's output, and recomputes the wide rest), ``False``
        or ``None`` (off), or one entry per stage (see :func:`checkpoint_policy`). Trades compute for
        memory; gradients are identical to the plain run. Measured: docs/performance.md.
        """
        self.checkpoint_policy = checkpoint_policy(policy)
        for stage, entry in enumerate(self.checkpoint_policy):
            for block in self.stage_modules(stage):
                block.checkpoint_expansion = entry == "expansion"
        return self

    def set_kernels(self, kernels: str = "pytorch") -> MedNeXt:
        """Run the depthwise convolutions on ``"pytorch"``'s kernels (the default), on the Triton kernels
        (``"triton"``, :mod:`mednext_lite.fast.triton_depthwise`; needs triton) or ``"auto"`` (Triton only
        on a GPU where ``benchmarks/gpu_check.sh`` measured them faster: :data:`mednext_lite.fast.conv.AUTO_TRITON`).

        The same maths up to float rounding. The Triton kernels run on CUDA tensors (or anywhere under
        ``TRITON_INTERPRET=1``); elsewhere, and with :func:`mednext_lite.fast.enabled` off, PyTorch's run.
        The down blocks' stride-2 depthwise convs keep PyTorch's kernel.
        """
        _set_kernels(self, kernels)
        self.kernels = kernels
        return self

    def set_deep_supervision(self, enabled: bool = True) -> MedNeXt:
        """Return all five outputs (``True``) or only full resolution (``False``).

        Enabling needs a model built with ``deep_supervision=True`` (the extra heads must exist).
        """
        if enabled and self.ds_heads is None:
            raise ValueError("this model has no deep-supervision heads: build it with deep_supervision=True")
        self.deep_supervision = bool(enabled)
        return self

    def set_memory_format(self, memory_format: str = "auto") -> MedNeXt:
        """Layout of the feature maps: ``"auto"`` (fastest for the input's device, see
        :mod:`mednext_lite.fast.layout`), ``"channels_last"`` or ``"contiguous"``.

        Only where numbers sit in memory changes, never the maths; outputs are always returned in
        the default contiguous layout.
        """
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format={memory_format!r} is not one of {MEMORY_FORMATS}: pick one of those")
        self.memory_format = memory_format
        return self

    @contextlib.contextmanager
    def full_resolution_only(self) -> Iterator[MedNeXt]:
        """Context in which ``forward`` returns a single tensor (for sliding-window inference)."""
        previous = self.deep_supervision
        self.deep_supervision = False
        try:
            yield self
        finally:
            self.deep_supervision = previous

    # -- forward ----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters (float32 unless the model was cast)."""
        return self.stem.weight.dtype

    @property
    def device(self) -> torch.device:
        """The device holding the parameters."""
        return self.stem.weight.device

    def _check_dtype_and_device(self, x: torch.Tensor) -> None:
        # Only tensor metadata is read here (no values), so the check never waits on the GPU and
        # torch.compile / torch.jit.trace see plain Python constants.
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"expected a torch.Tensor, got {type(x).__name__}: convert it with torch.as_tensor(x).float()"
            )
        if not x.is_floating_point():
            fix = "x.real.float() or x.abs().float()" if x.is_complex() else "x.float()"
            raise TypeError(
                f"input dtype {x.dtype} is not a floating-point type; the network takes float images: "
                f"convert it with {fix} (and scale it as in training, e.g. z-score normalisation)"
            )
        weight = self.stem.weight
        if x.device != weight.device:
            raise ValueError(
                f"input is on {x.device} but the model's parameters are on {weight.device}: "
                f"move the input with x.to({str(weight.device)!r}) or the model with model.to({str(x.device)!r})"
            )
        if x.dtype == weight.dtype:
            return
        # Autocast casts float16/bfloat16/float32 operands per op, so mixed dtypes are its job;
        # it never casts float64, which would reach the convolutions unconverted.
        autocast = x.device.type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(x.device.type)
        if autocast and torch.float64 not in (x.dtype, weight.dtype):
            return
        raise TypeError(
            f"input dtype {x.dtype} differs from the model's parameter dtype {weight.dtype}"
            + (" (autocast does not cast float64)" if autocast else "")
            + f": cast the input with x.to(model.dtype) (here x.to({weight.dtype})), cast the model with "
            f"model.to({x.dtype}), or run float16/bfloat16 inputs inside torch.autocast({x.device.type!r})"
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise an error naming the problem and the fix when ``x`` cannot enter the network.

        A TypeError for a non-tensor, an integer/bool/complex tensor, or a floating dtype that
        differs from the parameters' outside autocast (float16/bfloat16 input is fine inside
        ``torch.autocast``; float64 never is, since autocast does not cast it); a ValueError for a
        wrong device, rank, channel count or spatial size. Only shapes, dtypes and devices are read,
        never values, so the check costs no host-device synchronisation; for the same reason NaN
        or inf voxels are not looked for here: the data loaders (training) and
        :mod:`mednext_lite.predict_guard` (prediction) refuse non-finite images before they reach the
        network.
        """
        self._check_dtype_and_device(x)
        c = self.config
        if x.ndim != c.spatial_dims + 2:
            layout = "N, C, H, W" if c.spatial_dims == 2 else "N, C, D, H, W"
            raise ValueError(
                f"expected a {c.spatial_dims + 2}D input ({layout}) for spatial_dims={c.spatial_dims}, "
                f"got shape {tuple(x.shape)}; add the batch/channel axes with x[None] or check spatial_dims"
            )
        if x.shape[1] != c.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channels but the model expects in_channels={c.in_channels}: "
                f"build the model with in_channels={x.shape[1]} or fix the input's channel axis (dim 1)"
            )
        for axis, n in enumerate(x.shape[2:]):
            if n % DIVISOR or n == 0:
                up = (n // DIVISOR + 1) * DIVISOR
                down = (n // DIVISOR) * DIVISOR
                fix = f"pad to {up}" + (f" or crop to {down}" if down else "")
                raise ValueError(
                    f"spatial size {n} (axis {axis + 2} of shape {tuple(x.shape)}) is not divisible by "
                    f"{DIVISOR}: {fix}"
                )
        # A list, not a generator: torch.compile cannot trace a generator passed to math.prod.
        bottleneck_voxels = x.shape[0] * math.prod([n // DIVISOR for n in x.shape[2:]])
        if c.norm == "group" and bottleneck_voxels == 1:
            raise ValueError(
                f"input shape {tuple(x.shape)} leaves one voxel per channel at the 1/{DIVISOR} bottleneck, where "
                "GroupNorm (one group per channel) has nothing to normalise: use a batch of 2 or more, "
                f"or at least {2 * DIVISOR} voxels along one axis"
            )

    def _run(self, module: nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
        if self.checkpoint_policy[stage] == "block" and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)  # with "expansion" the block checkpoints its own wide part

    def _stage(self, blocks: nn.Sequential, x: torch.Tensor, stage: int) -> torch.Tensor:
        for block in blocks:
            x = self._run(block, x, stage)
        return x

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder features per level: ``[dec0, dec1, dec2, dec3, bottleneck]`` (full to 1/16)."""
        self.check_input(x)
        # Every later layer keeps the layout it is given, so choosing it once here puts the whole
        # network on the fast path (channels-last on CPU; measured in docs/performance.md).
        layout = resolve_memory_format(self.memory_format, x.device, self.config.spatial_dims)
        # The input changes layout, not the stem's wider output: the stem then writes that layout itself.
        x = self.stem(as_memory_format(x, layout)).contiguous(memory_format=layout)
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs)):
            x = self._stage(encoder, x, level)
            skips.append(x)
            x = self._run(down, x, level + 1)
        x = self._stage(self.bottleneck, x, LEVELS)
        features = [x]
        for level in reversed(range(LEVELS)):
            stage = NUM_STAGES - 1 - level
            x = self._run(self.ups[level], x, stage) + skips[level]
            x = self._stage(self.decoders[level], x, stage)
            features.append(x)
        return features[::-1]

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Logits from :meth:`forward_features`' output (a list with deep supervision)."""
        # Logits leave in the default layout whatever the feature layout, so callers may .view() them.
        full = self.head(features[0]).contiguous()
        if not self.deep_supervision:
            return full
        return [full] + [head(f).contiguous() for head, f in zip(self.ds_heads, features[1:])]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        c = self.config
        return (f"spatial_dims={c.spatial_dims}, C={c.base_width}, R={list(c.expansion_ratios)}, "
                f"B={list(c.block_counts)}, k=({c.enc_kernel_size}, {c.dec_kernel_size}), "
                f"deep_supervision={c.deep_supervision}")
