"""Export to ONNX, TorchScript and torch.export: parity with PyTorch (2D and 3D), free batch and
spatial sizes, the metadata prediction needs, and every refusal."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest
import torch

from mednext_lite.export import OnnxPredictor, export, read_metadata
from mednext_lite.model import MedNeXt, MedNeXtConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PARITY = 1e-4  # max abs diff accepted on the logits


def _net(spatial_dims: int, **changes) -> MedNeXt:
    torch.manual_seed(spatial_dims)
    net = MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=3, spatial_dims=spatial_dims, **changes))
    with torch.no_grad():  # non-zero norm shifts and GRN-free blocks: every weight matters
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def _pytorch(net: MedNeXt, x: torch.Tensor) -> torch.Tensor:
    """Logits of the network as the package runs it (fast paths on, full resolution)."""
    with torch.no_grad(), net.full_resolution_only():
        return net(x)


@pytest.fixture(scope="module")
def net2d() -> MedNeXt:
    return _net(2, deep_supervision=True)


@pytest.fixture(scope="module")
def onnx2d(net2d, tmp_path_factory):
    return export(net2d, tmp_path_factory.mktemp("onnx2d") / "m2.onnx", spatial_size=32)


@pytest.fixture(scope="module")
def checkpoint3d(tmp_path_factory):
    """A synthetic task and a 3D checkpoint whose train_config names it, as the trainer writes."""
    from mednext_lite.checkpoint import save_checkpoint
    from mednext_lite.data.synthetic import make_synthetic_task

    root = tmp_path_factory.mktemp("ckpt3d")
    task = make_synthetic_task(root / "data", n_train=2, n_test=1, shape=(40, 36, 30), progress=False)
    ckpt = save_checkpoint(root / "best.pt", _net(3), train_config={"task_dir": str(task), "patch_size": [32, 32, 32]})
    return task, ckpt


@pytest.fixture(scope="module")
def onnx3d(checkpoint3d) -> tuple[Path, str]:
    """The 3D checkpoint exported by `mednext-lite export` (example size: the stored training
    patch), and the line the command printed."""
    from mednext_lite.cli import main

    _, ckpt = checkpoint3d
    out, printed = ckpt.parent / "m3.onnx", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    return out, printed.getvalue()


def _one_line(capsys) -> str:
    """The error output of a failed command: exactly one line, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_onnx_2d_matches_pytorch_at_other_batches_and_sizes(net2d, onnx2d):
    import onnx

    assert onnx2d.max_abs_diff <= PARITY, f"max abs diff {onnx2d.max_abs_diff:.2e} at export"
    assert onnx2d.deep_supervision_dropped and "deep-supervision heads left out" in str(onnx2d)
    assert onnx2d.example_shape == (2, 1, 32, 32) and onnx2d.opset == 18
    proto = onnx.load(str(onnx2d.path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    predictor = OnnxPredictor(onnx2d.path, threads=1)
    assert predictor.session.get_inputs()[0].shape == ["batch", 1, "16*x", "16*y"]
    assert predictor.config == net2d.config.replace(deep_supervision=False)
    for shape in [(1, 1, 32, 32), (2, 1, 48, 64), (3, 1, 64, 32)]:
        x = torch.randn(*shape)
        got, ref = predictor(x), _pytorch(net2d, x)
        assert got.shape == ref.shape == (shape[0], 3, *shape[2:])
        diff = (got - ref).abs().max().item()
        assert diff <= PARITY, f"2D ONNX vs PyTorch at {shape}: max abs diff {diff:.2e}"


def test_onnx_3d_from_a_checkpoint_matches_pytorch_and_keeps_its_training_facts(checkpoint3d, onnx3d):
    from mednext_lite.checkpoint import model_from_checkpoint

    task, ckpt = checkpoint3d
    path, printed = onnx3d
    found = re.search(r"run on a 2 x 1 x 32 x 32 x 32 input: max abs diff (\S+) from PyTorch", printed)
    assert found and float(found[1]) <= PARITY, printed
    assert "deep-supervision" not in printed
    predictor = OnnxPredictor(path, threads=1)
    assert predictor.train_config == {"task_dir": str(task), "patch_size": [32, 32, 32]}
    assert read_metadata(path)["spatial_size"] == [32, 32, 32]
    net = model_from_checkpoint(ckpt).eval()
    x = torch.randn(2, 1, 48, 32, 64)
    diff = (predictor(x) - _pytorch(net, x)).abs().max().item()
    assert diff <= PARITY, f"3D ONNX vs PyTorch at {tuple(x.shape)}: max abs diff {diff:.2e}"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_and_exported_program_round_trip(net2d, tmp_path):
    x = torch.randn(1, 1, 48, 64)
    ref = _pytorch(net2d, x)
    ts = export(net2d, tmp_path / "m.pt", "torchscript", spatial_size=(32, 32))
    ep = export(net2d, tmp_path / "m.pt2", "exported-program", spatial_size=(32, 32))
    traced = torch.jit.load(str(ts.path))
    program = torch.export.load(ep.path).module()
    with torch.no_grad():
        for name, got in (("torchscript", traced(x)), ("exported-program", program(x))):
            diff = (got - ref).abs().max().item()
            assert diff <= PARITY, f"{name} vs PyTorch at {tuple(x.shape)}: max abs diff {diff:.2e}"
        with pytest.raises(Exception, match="16"):  # the program keeps the multiple-of-16 constraint
            program(torch.randn(1, 1, 40, 64))
    assert read_metadata(ts.path)["exporter"] == "torch.jit.trace"
    assert read_metadata(ep.path)["exporter"] == "torch.export.export(strict=True)"
    assert read_metadata(ep.path)["config"]["deep_supervision"] is False


def _no_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_what_cannot_be_exported_is_refused_with_the_fix(net2d, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="'tflite' is not supported: use one of onnx, torchscript, exported-program"):
        export(net2d, out, "tflite")
    with pytest.raises(ValueError, match="spatial size 40 .* not a multiple of 16 .*: use 48 or 32"):
        export(net2d, out, spatial_size=40)
    with pytest.raises(ValueError, match="spatial size 16 .* at least 32: use 32"):
        export(net2d, out, spatial_size=(16, 32))
    with pytest.raises(ValueError, match=r"has 3 entries but this is a 2D model: give 2"):
        export(net2d, out, spatial_size=(32, 32, 32))
    with pytest.raises(ValueError, match="opset 17 is not supported: .* use 18"):
        export(net2d, out, opset=17)
    with pytest.raises(ValueError, match="applies to the ONNX format only"):
        export(net2d, tmp_path / "m.pt", "torchscript", opset=18)
    with pytest.raises(TypeError, match="export takes a MedNeXt, a checkpoint path or a checkpoint dict, got Conv2d"):
        export(torch.nn.Conv2d(1, 3, 1), out)
    with torch.device("meta"):
        ghost = MedNeXt(net2d.config)
    with pytest.raises(ValueError, match="no weights .* meta device"):
        export(ghost, out)
    broken = _net(2)
    with torch.no_grad():
        broken.head.conv.weight[0] = float("nan")
    with pytest.raises(ValueError, match=r"weight head\.conv\.weight holds NaN"):
        export(broken, out)
    assert _no_files(tmp_path) == []


def test_missing_onnx_packages_name_the_pip_command(net2d, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImportError, match=r"onnxruntime, which is not installed: pip install 'mednext_lite\[export\]'"):
        export(net2d, tmp_path / "m.onnx")
    with pytest.raises(ImportError, match=r"pip install 'mednext_lite\[export\]'"):
        OnnxPredictor(tmp_path / "m.onnx")
    assert _no_files(tmp_path) == []


def test_a_file_that_fails_its_check_is_never_left_behind(net2d, tmp_path, monkeypatch):
    import mednext_lite.export as ex
    from mednext_lite import fast

    out = tmp_path / "m.pt"
    out.write_bytes(b"the previous export")
    real, fast_paths_during_check = ex._run_file, []

    def off_by_a_hundredth(path, fmt, x):
        fast_paths_during_check.append(fast.enabled())
        return real(path, fmt, x) + 1e-2

    monkeypatch.setattr(ex, "_run_file", off_by_a_hundredth)
    with pytest.raises(RuntimeError, match=r"differs from PyTorch by up to 0\.01.* nothing was written"):
        export(net2d, out, "torchscript", spatial_size=32)
    assert _no_files(tmp_path) == ["m.pt"] and out.read_bytes() == b"the previous export"
    assert fast_paths_during_check == [False] and fast.enabled() is True  # off for the export, then restored


def test_the_predictor_refuses_files_and_inputs_it_cannot_run(onnx2d, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    with pytest.raises(ValueError, match="does not exist: write one with `mednext-lite export"):
        OnnxPredictor(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it"):
        OnnxPredictor(tmp_path / "junk.onnx")
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "identity",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 32, 32])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="holds no mednext_lite metadata"):
        OnnxPredictor(tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="holds no mednext_lite metadata"):
        read_metadata(tmp_path / "foreign.onnx")
    predictor = OnnxPredictor(onnx2d.path, threads=1)
    with pytest.raises(ValueError, match=r"does not fit m2\.onnx: it takes \[N, 1, size, size\]"):
        predictor(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="spatial size 40 .* pad or crop to 48"):
        predictor(torch.randn(1, 1, 40, 32))
    with pytest.raises(TypeError, match="floating-point"):
        predictor(torch.zeros(1, 1, 32, 32, dtype=torch.int64))



def test_predict_through_onnxruntime_writes_what_pytorch_writes(checkpoint3d, onnx3d, tmp_path):
    import nibabel as nib
    import numpy as np

    from mednext_lite.checkpoint import model_from_checkpoint
    from mednext_lite.cli import main
    from mednext_lite.inference import sliding_window_logits

    task, ckpt = checkpoint3d
    path, _ = onnx3d
    (image,) = sorted((task / "imagesTs").glob("*.nii.gz"))
    common = ["--input", str(image), "--no-progress", "--sw-batch-size", "2", "--overlap", "0.25"]
    assert main(["predict", "--checkpoint", str(ckpt), "--output", str(tmp_path / "pytorch"), *common]) == 0
    assert main(["predict", "--backend", "onnxruntime", "--checkpoint", str(path), "--threads", "1",
                 "--output", str(tmp_path / "onnxruntime"), *common]) == 0
    source = nib.load(str(image))
    ref, got = (nib.load(str(tmp_path / backend / image.name)) for backend in ("pytorch", "onnxruntime"))
    assert ref.shape == got.shape == source.shape == (40, 36, 30)
    assert np.array_equal(ref.affine, got.affine) and np.allclose(got.affine, source.affine, atol=1e-6)
    a, b = np.asanyarray(ref.dataobj), np.asanyarray(got.dataobj)
    assert len(np.unique(a)) > 1, "the network predicts one class everywhere: the comparison would say nothing"
    assert np.array_equal(a, b), f"{int((a != b).sum())} of {a.size} voxels differ between the backends"
    # The window logits behind those labels, stitched both ways on the same volume:
    volume = torch.randn(1, 1, 40, 36, 30)
    logits = [sliding_window_logits(model, volume, 32, overlap=0.25)
              for model in (model_from_checkpoint(ckpt), OnnxPredictor(path, threads=1))]
    diff = (logits[0] - logits[1]).abs().max().item()
    assert diff <= PARITY, f"sliding-window logits, PyTorch vs ONNX Runtime: max abs diff {diff:.2e}"


def test_the_commands_refuse_what_they_cannot_do_in_one_line(checkpoint3d, onnx3d, tmp_path, capsys, monkeypatch):
    from mednext_lite.cli import main

    task, ckpt = checkpoint3d
    path, _ = onnx3d
    inputs = ["--input", str(task / "imagesTs"), "--output", str(tmp_path / "p"), "--no-progress"]
    assert main(["predict", "--checkpoint", str(path), *inputs]) == 2
    assert "is an ONNX file: pass --backend onnxruntime" in _one_line(capsys)
    assert main(["predict", "--backend", "onnxruntime", "--checkpoint", str(ckpt), *inputs]) == 2
    assert "ONNX Runtime cannot load it" in _one_line(capsys)
    assert main(["predict", "--backend", "onnxruntime", "--checkpoint", str(path), "--amp", *inputs]) == 2
    assert "--amp applies to the PyTorch backend only" in _one_line(capsys)
    assert main(["predict", "--backend", "onnxruntime", "--checkpoint", str(path), "--device", "cuda", *inputs]) == 2
    assert "pip install onnxruntime-gpu" in _one_line(capsys)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--size", "40"]) == 2
    assert "spatial size 40" in _one_line(capsys)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'mednext_lite[export]'" in _one_line(capsys)
    assert not (tmp_path / "p").exists() and not (tmp_path / "m.onnx").exists()
