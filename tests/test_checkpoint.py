"""Checkpoints rebuild their own model and load safely: an unsafe pickle is never run, a truncated,
corrupt or bit-flipped file and NaN/inf weights are refused, naming the file and the entry."""

import os

import pytest
import torch

from mednext_lite import MedNeXt, MedNeXtConfig
from mednext_lite.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from mednext_lite.interop import load_foreign, to_reference_state_dict


def small(**kw) -> MedNeXtConfig:
    base = {"in_channels": 2, "num_classes": 3, "base_width": 4, "block_counts": (1, 2, 1, 1, 1, 1, 1, 2, 1),
                "expansion_ratios": (2, 3, 4, 4, 4, 4, 4, 3, 2), "deep_supervision": True}
    base.update(kw)
    return MedNeXtConfig(**base)


def test_checkpoint_rebuilds_its_own_model(tmp_path):
    torch.manual_seed(0)
    model = MedNeXt(small(grn=True, enc_kernel_size=5))
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, epoch=7)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # temp file renamed away
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 7 and ckpt["format"] == "mednext_lite/1"
    rebuilt = model_from_checkpoint(path)
    assert rebuilt.config == model.config
    x = torch.randn(1, 2, 32, 32, 32)
    for a, b in zip(model(x), rebuilt(x)):
        assert torch.equal(a, b)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Exploit()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": evil}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt was refused: it contains a pickled object outside"):
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_truncated_and_missing_files_are_named(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", MedNeXt(small()))
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt is corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    for i, junk in enumerate([b"not a checkpoint at all", b"this is not a checkpoint", b"", b"\x80\x02}q"]):
        (tmp_path / f"junk{i}.pt").write_bytes(junk)
        with pytest.raises(CheckpointError, match=rf"junk{i}\.pt is corrupt"):
            load_checkpoint(tmp_path / f"junk{i}.pt")
    with pytest.raises(CheckpointError, match=r"nothere\.pt does not exist"):
        load_checkpoint(tmp_path / "nothere.pt")
    with pytest.raises(CheckpointError, match=r"is a folder: pass the file in it, e\.g\. .*best\.pt"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no embedded config"):
        model_from_checkpoint({"state_dict": MedNeXt(small()).state_dict()})


def flip_one_bit_in_tensor_data(path, record: str) -> None:
    """Flip the lowest bit of one byte inside the raw data of the zip record named ``record`` (e.g.
    ``data/0``) of a torch checkpoint; the file stays loadable."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/" + record))
        assert info.compress_type == zipfile.ZIP_STORED and info.file_size >= 8  # torch stores tensor bytes raw
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + (info.file_size // 8) * 4] ^= 1  # low mantissa bit of a float32: a finite, tiny change
    path.write_bytes(bytes(data))


def changed_entries(a: dict, b: dict) -> list[str]:
    """Top-level entries of two loaded checkpoints whose tensors differ."""
    from mednext_lite.checkpoint import _tensors_with_paths as tensors

    return sorted({where.split("]")[0] for (where, x), (_, y) in zip(tensors(a, ""), tensors(b, ""))
                   if not torch.equal(x, y)})


def one_step_trained() -> tuple[MedNeXt, torch.optim.Optimizer]:
    """A small seeded MedNeXt after one AdamW step, so its optimizer state holds tensors."""
    torch.manual_seed(0)
    model = MedNeXt(small())
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 2, 32, 32, 32))[0].sum().backward()
    opt.step()
    return model, opt


def test_save_load_round_trip_carries_a_checksum_per_entry(tmp_path):
    model, opt = one_step_trained()
    path = save_checkpoint(tmp_path / "last.pt", model, optimizer=opt.state_dict(), epoch=3)
    ckpt = load_checkpoint(path)
    assert set(ckpt["checksum"]["sha256"]) == {"state_dict", "optimizer"}  # the entries that hold tensors
    assert all(len(h) == 64 for h in ckpt["checksum"]["sha256"].values())
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v), k
    rebuilt = model_from_checkpoint(path)
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(model(x), rebuilt(x)):
            assert torch.equal(a, b)
    # a channels-last model saves the same values, hence the same checksum
    model.set_memory_format("channels_last")
    again = save_checkpoint(tmp_path / "cl.pt", model, optimizer=opt.state_dict(), epoch=3)
    assert load_checkpoint(again)["checksum"] == ckpt["checksum"]


@pytest.mark.parametrize("which", ["state_dict", "optimizer"])
def test_a_flipped_bit_in_tensor_data_is_refused(tmp_path, which):
    model, opt = one_step_trained()
    path = save_checkpoint(tmp_path / "best.pt", model, optimizer=opt.state_dict())
    before = torch.load(path, weights_only=True)
    # storages are numbered in pickling order: the weights' first, then the optimizer's
    flip_one_bit_in_tensor_data(path, f"data/{0 if which == 'state_dict' else len(before['state_dict']) + 5}")
    after = torch.load(path, weights_only=True)  # PyTorch itself reads the damaged file without a word
    assert changed_entries(before, after) == [f"['{which}'"]
    with pytest.raises(CheckpointError, match=rf"best\.pt is corrupt: the tensors of '{which}' do not match the SHA"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"best\.pt is corrupt"):
        model_from_checkpoint(path)


def test_non_finite_weights_are_refused_naming_the_first_bad_tensor(tmp_path):
    model = MedNeXt(small())
    with torch.no_grad():
        model.state_dict()["encoders.1.0.conv1.weight"].view(-1)[3] = float("nan")
        model.state_dict()["decoders.0.0.conv3.weight"].view(-1)[0] = float("inf")
    path = save_checkpoint(tmp_path / "nan.pt", model)  # a valid checksum over bad numbers
    with pytest.raises(CheckpointError, match=r"nan\.pt: weight 'encoders\.1\.0\.conv1\.weight' holds 1 NaN/inf value"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"encoders\.1\.0\.conv1\.weight"):
        model_from_checkpoint(path)
    ckpt = load_checkpoint(path, allow_non_finite=True)  # explicit, for inspection
    assert torch.isnan(ckpt["state_dict"]["encoders.1.0.conv1.weight"]).sum() == 1
    with pytest.raises(CheckpointError, match="encoders.1.0.conv1.weight"):
        model_from_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"weight 'enc_block_1\.0\.conv1\.weight' holds"):  # foreign layouts too
        load_foreign(to_reference_state_dict(ckpt["state_dict"]))


def test_files_without_a_checksum_still_load(tmp_path):
    torch.manual_seed(0)
    model = MedNeXt(small())
    torch.save({"state_dict": model.state_dict()}, tmp_path / "plain.pt")  # older or foreign: no checksum
    torch.save(to_reference_state_dict(model.state_dict()), tmp_path / "reference.pt")
    assert "checksum" not in load_checkpoint(tmp_path / "plain.pt")
    for name in ("plain.pt", "reference.pt"):
        rebuilt = load_foreign(tmp_path / name)
        for k, v in model.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[k], v), (name, k)


def test_a_flipped_byte_in_a_stored_setting_is_refused(tmp_path):
    # The checksum used to cover tensors only: a damaged task path, epoch or history loaded cleanly.
    task = "/data/Task42_SomewhereUnique"
    path = save_checkpoint(tmp_path / "last.pt", MedNeXt(small()), epoch=3,
                           train_config={"task_dir": task, "patch_size": (32, 32, 32), "lr": 1e-3})
    data = bytearray(path.read_bytes())
    assert data.count(task.encode()) == 1  # pickled as plain UTF-8 inside the (stored, uncompressed) zip
    at = data.index(task.encode()) + len("/data/Task42_Somewhere")
    data[at] ^= ord("U") ^ ord("V")  # "Unique" -> "Vnique": same length, still a valid pickle
    path.write_bytes(bytes(data))
    loaded = torch.load(path, weights_only=True)  # PyTorch reads it without a word
    assert loaded["train_config"]["task_dir"] == "/data/Task42_SomewhereVnique"
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt: its entry 'train_config' does not match the "
                                              r"SHA-256 written when it was saved"):
        load_checkpoint(path)


def test_entry_checksums_cover_what_load_returns_and_older_files_still_load(tmp_path):
    model, opt = one_step_trained()
    extra = {"optimizer": opt.state_dict(), "epoch": 3, "history": [{"loss": 0.5, "dice": float("nan")}],
             "train_config": {"patch_size": (32, 32, 32), "spacing": None, "resume": False}, "names": ("a", "b")}
    path = save_checkpoint(tmp_path / "a.pt", model, **extra)
    ckpt = load_checkpoint(path)  # tuples, NaN, None and int-keyed optimizer state hash alike after loading
    assert set(ckpt["checksum"]["entries_sha256"]) == {"format", "config", "state_dict", *extra}
    # Any change to a non-tensor entry is caught, naming it: a re-saved file keeping the old checksum.
    for key, value in (("epoch", 4), ("history", [{"loss": 0.5, "dice": 0.1}]), ("names", ["a", "c"])):
        changed = torch.load(path, weights_only=True)
        changed[key] = value
        torch.save(changed, tmp_path / "b.pt")
        with pytest.raises(CheckpointError, match=rf"b\.pt is corrupt: its entry '{key}' does not match"):
            load_checkpoint(tmp_path / "b.pt")
    changed = torch.load(path, weights_only=True)
    changed["added"] = 1
    torch.save(changed, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"its entry 'added' was not there when it was saved"):
        load_checkpoint(tmp_path / "b.pt")
    # A file from before the entries were hashed (tensor checksums only) loads, tensors still checked.
    old = torch.load(path, weights_only=True)
    del old["checksum"]["entries_sha256"]
    old["epoch"] = 5
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["epoch"] == 5
