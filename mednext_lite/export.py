"""Turn a trained network into a file other runtimes load: ONNX, TorchScript or a torch.export program.

:func:`export` takes a MedNeXt or a trainer checkpoint and writes one of three formats, each with
the same metadata (config, the training facts prediction repeats, exporter and versions):

* ``"onnx"``: PyTorch's torch.export-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``,
  onnxscript's operator library), fed with a non-strict :func:`torch.export.export` program (the
  capture that exporter makes by default; a strict capture took twice as long and is kept for
  the exported-program format), opset 18 by default. Chosen over the TorchScript-based exporter,
  which PyTorch 2.13 deprecates and which can only declare an axis dynamic, not "a multiple of
  16". That older exporter runs faster (see ``docs/export.md``), which matters once per file.
* ``"exported-program"``: a strict ``torch.export`` program (``torch.export.save``, a .pt2
  file), for ``torch.export.load(path).module()``, AOTInductor or ExecuTorch.
* ``"torchscript"``: ``torch.jit.trace`` (``torch.jit.load``), for C++ runtimes that still read it;
  PyTorch 2.13 deprecates TorchScript, so prefer one of the other two.

Every export runs the network's plain PyTorch path (``fast.enabled(False)`` and the contiguous
layout: stock kernels only), in eval mode and float32 on the CPU, with deep supervision off: the extra heads serve
training only, so the file returns full-resolution logits. Batch and spatial sizes stay free in
the ONNX and exported-program files: any batch, every spatial size a multiple of 16 and at least
32 (``16 * Dim(min=2)``; at 16 an axis would leave a single voxel at the 1/16 bottleneck, where
PyTorch's shape tracing does not follow). A traced TorchScript module accepts other sizes as well,
but the size checks of ``MedNeXt.check_input`` are not in it. Each file is written to a temporary
name, loaded back, run on one input against PyTorch, and only then renamed into place
(:func:`mednext_lite.safe_io.atomic_write`): a crash or a failed check never leaves a file.

:class:`OnnxPredictor` runs an exported .onnx file through ONNX Runtime as a callable
``x -> logits`` that the sliding-window prediction takes in place of a network. Measured parity and
the limits are in ``docs/export.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import DIVISOR, MedNeXt, MedNeXtConfig
from .safe_io import atomic_write

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "MIN_SPATIAL_SIZE",
    "ExportReport",
    "OnnxPredictor",
    "add_export_subcommand",
    "export",
    "read_metadata",
]

#: The formats :func:`export` writes, with the file ending each usually gets.
FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
#: Opset the ONNX export writes unless told otherwise: the one onnxscript's operator library
#: implements natively (newer opsets go through the ONNX version converter).
DEFAULT_OPSET = 18
#: Smallest spatial size per axis the dynamic export accepts (two voxels at the 1/16 bottleneck).
MIN_SPATIAL_SIZE = 2 * DIVISOR
#: Name of the metadata entry (ONNX ``metadata_props`` key; extra file ``<key>.json`` otherwise).
METADATA_KEY = "mednext_lite"
_INSTALL = "pip install 'mednext_lite[export]' (onnx, onnxruntime, onnxscript)"
_MAX_DIM = 4096  # upper bound of the symbolic sizes: 4096 windows per batch, 65,536 voxels per axis


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote and how closely the reloaded file matched PyTorch."""

    path: Path
    format: str
    exporter: str
    opset: int | None
    example_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    deep_supervision_dropped: bool

    def __str__(self) -> str:
        shape = " x ".join(map(str, self.example_shape))
        dropped = "; deep-supervision heads left out (training only)" if self.deep_supervision_dropped else ""
        return (f"wrote {self.path} ({self.format}, {self.exporter}); reloaded and run on a {shape} input: "
                f"max abs diff {self.max_abs_diff:.2e} from PyTorch (tolerance {self.tolerance:.1e}){dropped}")


def _require(module: str, what: str) -> Any:
    """Import an optional package, or raise an ImportError naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{what} needs the optional package {module}, which is not installed: {_INSTALL}",
                          name=module) from err


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' chatter (deprecation notes, tracer warnings, torchvision notices)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


# -- what is exported ---------------------------------------------------------------------------

def _source_model(source: Any) -> tuple[MedNeXt, dict[str, Any]]:
    """The MedNeXt to export and the training facts (task, patch size, spacing) a checkpoint records."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .inference import _stored_training

    if isinstance(source, (str, os.PathLike)):
        ckpt = load_checkpoint(source)
        return model_from_checkpoint(ckpt), _stored_training(ckpt, f"checkpoint {source}")
    if isinstance(source, Mapping):
        return model_from_checkpoint(source), _stored_training(source, "the checkpoint")
    net = getattr(source, "module", source)  # DDP
    net = getattr(net, "_orig_mod", net)  # torch.compile
    if not isinstance(net, MedNeXt):
        raise TypeError(f"export takes a MedNeXt, a checkpoint path or a checkpoint dict, got {type(source).__name__}: "
                        "build the network with mednext_lite (or convert its weights with mednext_lite.interop)")
    return net, {}


def _plain_copy(net: MedNeXt) -> MedNeXt:
    """A float32 CPU copy in eval mode without deep-supervision heads, on the plain PyTorch path."""
    tensors = list(net.state_dict().items())
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise ValueError(f"the model has no weights ({meta[0]} is on the meta device): load a checkpoint into it "
                         "first, or export the checkpoint itself")
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"weight {name} holds NaN or inf, so every output would too: export a checkpoint from "
                             "before training diverged (e.g. best.pt)")
    copy = MedNeXt(net.config.replace(deep_supervision=False))
    copy.load_state_dict({name: t.detach().to("cpu", torch.float32) for name, t in tensors
                          if not name.startswith("ds_heads.")})
    return copy.eval().set_memory_format("contiguous")


@contextlib.contextmanager
def _plain_pytorch() -> Iterator[None]:
    """The fast paths off (:func:`mednext_lite.fast.enabled`, a process-wide switch) for the call:
    an exported graph holds PyTorch's stock operators, never a hand-written autograd function."""
    from . import fast

    previous = fast.enabled(False)
    try:
        yield
    finally:
        fast.enabled(previous)


def _example_size(spatial_size: int | Sequence[int] | None, stored_patch: Sequence[int] | None,
                  spatial_dims: int) -> tuple[int, ...]:
    """The spatial size traced and verified at: as given, else the training patch, else 64 per axis."""
    if spatial_size is None:
        size = tuple(stored_patch) if stored_patch and len(stored_patch) == spatial_dims else (64,) * spatial_dims
    elif isinstance(spatial_size, int):
        size = (spatial_size,) * spatial_dims
    else:
        size = tuple(int(s) for s in spatial_size)
    if len(size) != spatial_dims:
        raise ValueError(f"spatial_size {size} has {len(size)} entries but this is a {spatial_dims}D model: give "
                         f"{spatial_dims}, e.g. {(size[0],) * spatial_dims}")
    for n in size:
        if n < MIN_SPATIAL_SIZE or n % DIVISOR:
            up = max(MIN_SPATIAL_SIZE, math.ceil(n / DIVISOR) * DIVISOR)
            down = n // DIVISOR * DIVISOR
            fix = f"use {up}" + (f" or {down}" if down >= MIN_SPATIAL_SIZE and down != up else "")
            raise ValueError(f"spatial size {n} in {size} is not a multiple of {DIVISOR} of at least "
                             f"{MIN_SPATIAL_SIZE}: {fix}")
    return size


def _dynamic_shapes(spatial_dims: int) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    axes: dict[int, Any] = {0: Dim("batch", min=1, max=_MAX_DIM)}
    for i, name in enumerate("xyz"[:spatial_dims]):
        axes[2 + i] = DIVISOR * Dim(name, min=MIN_SPATIAL_SIZE // DIVISOR, max=_MAX_DIM)
    return {"x": axes}


def _exported_program(net: MedNeXt, example: torch.Tensor, strict: bool) -> torch.export.ExportedProgram:
    """``torch.export`` with free batch and spatial sizes; strict: TorchDynamo reads the Python code
    itself, non-strict: the code runs on fake tensors. The example batch is 2, since strict export
    specialises a size-1 example axis to 1."""
    with torch.no_grad():
        return torch.export.export(net, (example,), dynamic_shapes=_dynamic_shapes(net.config.spatial_dims),
                                   strict=strict)


# -- the three writers and their readers ---------------------------------------------------------

def _write_onnx(net: MedNeXt, example: torch.Tensor, tmp: Path, opset: int, meta: str) -> None:
    program = torch.onnx.export(_exported_program(net, example, strict=False), (example,), None, dynamo=True,
                                input_names=["image"], output_names=["logits"], opset_version=opset,
                                external_data=False, verbose=False)
    shape = program.model.graph.inputs[0].shape
    names = {shape[0]: "batch", **{shape[2 + i]: f"{DIVISOR}*{a}" for i, a in enumerate("xyz"[:example.ndim - 2])}}
    program.rename_axes(names)
    program.model.metadata_props[METADATA_KEY] = meta
    program.model.doc_string = "MedNeXt exported by mednext_lite: input 'image' [N, C, *spatial], output 'logits'"
    program.save(tmp, external_data=False)


def _write_torchscript(net: MedNeXt, example: torch.Tensor, tmp: Path, meta: str) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)  # the reloaded file is checked instead
    torch.jit.save(traced, str(tmp), _extra_files={f"{METADATA_KEY}.json": meta})


def _write_program(net: MedNeXt, example: torch.Tensor, tmp: Path, meta: str) -> None:
    torch.export.save(_exported_program(net, example, strict=True), tmp, extra_files={f"{METADATA_KEY}.json": meta})


def _run_file(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """Load an exported file back and run it on ``x`` (CPU)."""
    if fmt == "onnx":
        ort = _require("onnxruntime", "checking an ONNX export")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")(x)
        return torch.export.load(path).module()(x)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata :func:`export` stored in an .onnx, TorchScript or .pt2 file (format by content).

    Keys: ``config`` (the :class:`MedNeXtConfig` as a dict), ``train_config`` (task_dir,
    patch_size, spacing, when the export came from a trainer checkpoint), ``spatial_size`` (the
    verified example size), ``format``, ``exporter``, ``opset``, ``torch``, ``mednext_lite``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"exported file {path} does not exist: write one with `mednext-lite export`")
    with open(path, "rb") as f:
        head = f.read(4)
    text = None
    if head.startswith(b"PK"):  # TorchScript and .pt2 files are zip archives
        extra = {f"{METADATA_KEY}.json": ""}
        with _quiet():
            try:
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            except Exception:  # noqa: BLE001 -- not TorchScript: the other zip format is tried next
                try:
                    torch.export.load(path, extra_files=extra)
                except Exception as err:  # noqa: BLE001 -- neither loader reads it: a foreign or damaged file
                    raise ValueError(f"{path}: neither a TorchScript nor a .pt2 file mednext_lite exported "
                                     f"({type(err).__name__}): export it again with `mednext-lite export`") from None
        text = extra[f"{METADATA_KEY}.json"] or None
    else:
        onnx = _require("onnx", "reading an ONNX file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # noqa: BLE001 -- onnx raises protobuf's DecodeError among others
            raise ValueError(f"{path}: not a readable ONNX, TorchScript or .pt2 file ({type(err).__name__}): "
                             "export it again with `mednext-lite export`") from None
        text = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if not text:
        raise ValueError(f"{path} holds no {METADATA_KEY} metadata (it was not written by mednext_lite's export): "
                         "export the checkpoint with `mednext-lite export`")
    return json.loads(text)


# -- the export ------------------------------------------------------------------------------------

def export(
    source: nn.Module | str | os.PathLike | Mapping[str, Any],
    out: str | os.PathLike,
    format: str = "onnx",
    *,
    spatial_size: int | Sequence[int] | None = None,
    opset: int | None = None,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Write a MedNeXt (or the one in a trainer checkpoint) to ``out`` as ``format``.

    Args:
        source: a MedNeXt (DDP/compile wrappers are unwrapped), a checkpoint path or a loaded
            checkpoint dict; a checkpoint's task, patch size and spacing are stored with the file,
            so that ``mednext-lite predict --backend onnxruntime`` repeats the preprocessing.
        out: the file to write (replaced atomically if it exists).
        format: ``"onnx"``, ``"torchscript"`` or ``"exported-program"`` (see :data:`FORMATS`).
        spatial_size: the example size traced and verified at (each a multiple of 16, at least 32);
            default the checkpoint's training patch, else 64 per axis. ONNX and exported-program
            files accept other sizes (multiples of 16, from 32) and any batch.
        opset: ONNX opset (default :data:`DEFAULT_OPSET`, 18 or newer); ONNX only.
        tolerance: the largest max abs diff between the reloaded file and PyTorch accepted, per
            unit of the largest logit magnitude (at least 1).

    A model with deep supervision is exported without its extra heads (say so in the report
    rather than refuse: they serve training only). Refused with the fix named: an unknown format,
    a size that is not a multiple of 16 or below 32, an opset below 18 or given for another
    format, a model without weights or with non-finite ones, and a missing onnx/onnxruntime/
    onnxscript (``pip install 'mednext_lite[export]'``).
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not supported: use one of {', '.join(FORMATS)}")
    if format == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            _require(module, "the ONNX export")
        opset = DEFAULT_OPSET if opset is None else opset
        if isinstance(opset, bool) or not isinstance(opset, int) or opset < DEFAULT_OPSET:
            raise ValueError(f"opset {opset!r} is not supported: the torch.export-based ONNX exporter writes opset "
                             f"{DEFAULT_OPSET} or newer; use {DEFAULT_OPSET}")
    elif opset is not None:
        raise ValueError(f"opset={opset} applies to the ONNX format only, not {format!r}: leave it out")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance={tolerance!r} must be a positive number, e.g. 1e-4")
    net, stored = _source_model(source)
    dropped = bool(net.config.deep_supervision)
    plain = _plain_copy(net)
    config = plain.config
    size = _example_size(spatial_size, stored.get("patch_size"), config.spatial_dims)
    example = torch.randn(2, config.in_channels, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), _plain_pytorch():
        reference = plain(example)
    exporter = {"onnx": f"torch.onnx.export(dynamo=True) of a torch.export program, opset {opset}",
                "exported-program": "torch.export.export(strict=True)",
                "torchscript": "torch.jit.trace"}[format]
    from . import __version__

    meta = json.dumps({
        "config": config.to_dict(),
        "train_config": {k: list(v) if isinstance(v, tuple) else v for k, v in stored.items()},
        "spatial_size": list(size), "format": format, "exporter": exporter, "opset": opset,
        "torch": torch.__version__, "mednext_lite": __version__,
        "input": "image [N, in_channels, *spatial] float32", "output": "logits [N, num_classes, *spatial] float32",
    }, sort_keys=True)
    found: dict[str, float] = {}

    def write(tmp: Path) -> None:
        with _quiet(), _plain_pytorch():
            if format == "onnx":
                _write_onnx(plain, example, tmp, opset, meta)
            elif format == "torchscript":
                _write_torchscript(plain, example, tmp, meta)
            else:
                _write_program(plain, example, tmp, meta)
            got = _run_file(tmp, format, example)
        if got.shape != reference.shape:
            raise RuntimeError(f"the exported {format} file returned shape {tuple(got.shape)}, PyTorch "
                               f"{tuple(reference.shape)}: this is a bug in mednext_lite's export; please report it")
        diff = float((got - reference).abs().max())
        allowed = tolerance * max(1.0, float(reference.abs().max()))
        if not diff <= allowed:
            raise RuntimeError(f"the exported {format} file differs from PyTorch by up to {diff:.3g} on the example "
                               f"input (allowed {allowed:.3g}), so nothing was written: this is a bug in the exporter "
                               "or mednext_lite; try another format or report it")
        found["diff"], found["allowed"] = diff, allowed

    path = atomic_write(out, write, suffix=FORMATS[format])
    return ExportReport(path=path, format=format, exporter=exporter, opset=opset, example_shape=tuple(example.shape),
                        max_abs_diff=found["diff"], tolerance=found["allowed"], deep_supervision_dropped=dropped)


# -- running an .onnx file -------------------------------------------------------------------------

def _providers(ort: Any, device: str) -> list[Any]:
    """ONNX Runtime's execution providers for a device name (``cpu``, ``cuda``, ``cuda:N``, ``auto``)."""
    text = str(device).strip()
    available = ort.get_available_providers()
    if text == "auto":
        text = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if text == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = text.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise ValueError(f"device={device!r} is not a device name: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if "CUDAExecutionProvider" not in available:
        raise ValueError(f"device={device!r} but this onnxruntime has no CUDA provider (it has "
                         f"{', '.join(available)}): pip install onnxruntime-gpu, or use --device cpu")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


class OnnxPredictor:
    """An exported .onnx file run by ONNX Runtime, as a callable ``x -> logits`` (torch tensors).

    ``config`` is the exported network's :class:`MedNeXtConfig` and ``train_config`` the training
    facts stored with it (task_dir, patch_size, spacing; empty when the export came from a bare
    model), read from the file's metadata, so :func:`mednext_lite.inference.predict_files` and
    ``predict_from_checkpoint`` take this in place of a network. ``device`` picks ONNX Runtime's
    provider: ``"cpu"``, ``"cuda"`` / ``"cuda:N"`` (needs the onnxruntime-gpu package) or
    ``"auto"`` (CUDA when that provider is installed). Windows are computed in float32 and the
    logits come back on the input's device.
    """

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None) -> None:
        ort = _require("onnxruntime", "predicting with an ONNX file")
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"ONNX file {self.path} does not exist: write one with "
                             "`mednext-lite export --checkpoint best.pt --format onnx --out model.onnx`")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_providers(ort, device))
        except Exception as err:  # noqa: BLE001 -- onnxruntime's own exception classes (InvalidProtobuf, Fail)
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200] if str(err) else ''}): pass the .onnx file "
                             "`mednext-lite export --format onnx` wrote (a trainer checkpoint takes --backend "
                             "pytorch)") from None
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if not text:
            raise ValueError(f"{self.path} holds no {METADATA_KEY} metadata (it was not written by mednext_lite's "
                             "export), so its network and preprocessing are unknown: export the checkpoint with "
                             "`mednext-lite export --format onnx`")
        self.metadata: dict[str, Any] = json.loads(text)
        self.config = MedNeXtConfig.from_dict(self.metadata["config"])
        self.train_config: dict[str, Any] = dict(self.metadata.get("train_config") or {})
        self.input_name = self.session.get_inputs()[0].name

    def check_input(self, x: torch.Tensor) -> None:
        """Raise an error naming the problem and the fix when ``x`` does not fit the exported network."""
        c = self.config
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"expected a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}: "
                            "convert it with torch.as_tensor(x).float()")
        if x.ndim != c.spatial_dims + 2 or x.shape[1] != c.in_channels:
            raise ValueError(f"input shape {tuple(x.shape)} does not fit {self.path.name}: it takes "
                             f"[N, {c.in_channels}, {', '.join(['size'] * c.spatial_dims)}] ({c.spatial_dims}D, "
                             f"{c.in_channels} channel(s))")
        for n in x.shape[2:]:
            if n % DIVISOR or n < MIN_SPATIAL_SIZE:
                raise ValueError(f"spatial size {n} of input {tuple(x.shape)} is not a multiple of {DIVISOR} of at "
                                 f"least {MIN_SPATIAL_SIZE}, which the exported file needs: pad or crop to "
                                 f"{max(MIN_SPATIAL_SIZE, math.ceil(n / DIVISOR) * DIVISOR)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(logits).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxPredictor({str(self.path)!r}, providers={self.session.get_providers()})"


# -- command line ------------------------------------------------------------------------------------

def add_export_subcommand(subparsers: Any) -> Any:
    """Register ``mednext-lite export`` on an argparse subparsers object."""
    import argparse

    p = subparsers.add_parser(
        "export", help="write a checkpoint as ONNX, TorchScript or a torch.export program",
        description="Export the network of a trainer checkpoint (deep supervision off, eval mode, float32) and check "
                    "the written file against PyTorch on one input. ONNX and exported-program files take any batch "
                    "and spatial sizes that are multiples of 16 (at least 32); see docs/export.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `mednext-lite train` (best.pt/last.pt)")
    p.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="file format")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx, model.pt (TorchScript), model.pt2")
    p.add_argument("--size", type=int, nargs="+", default=None,
                   help="example spatial size traced and checked at (multiples of 16, at least 32; default: the "
                        "training patch, else 64)")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.set_defaults(handler=_export_command)
    return p


def _export_command(args: Any) -> int:
    size = None if not args.size else (args.size[0] if len(args.size) == 1 else tuple(args.size))
    report = export(args.checkpoint, args.out, args.format, spatial_size=size, opset=args.opset)
    print(report)
    return 0
