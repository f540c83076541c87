"""MONAI pipelines by modality, cached datasets, and the inspect/synthesize command doors."""

from __future__ import annotations

import argparse
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader

from mednext_lite.data import (
    get_transforms,
    load_task,
    make_dataset,
    make_synthetic_task,
)
from mednext_lite.data.commands import (
    add_data_subcommands,
    inspect_main,
    save_montage,
    summarize_task,
    synthesize_main,
)
from mednext_lite.data.transforms import default_cache_dir, file_state_hash
from mednext_lite.safe_io import UnsafePathError


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tx")
    return {fl: load_task(make_synthetic_task(root, n_train=4, n_test=1, flavour=fl, shape=(32, 32, 32),
                                              progress=False)) for fl in ("mri", "ct", "mri4d")}


def test_train_pipeline_patches_and_positive_sampling(tasks):
    info = tasks["mri"]
    tx = get_transforms(info, mode="train", patch_size=16, num_samples=6, pos_ratio=1.0, augment=True)
    tx.set_random_state(0)
    out = tx(info.training[0])
    assert len(out) == 6
    for sample in out:
        assert sample["image"].shape == (1, 16, 16, 16) and sample["image"].dtype == torch.float32
        assert sample["label"].shape == (1, 16, 16, 16)
        assert sample["label"].sum() > 0  # pos_ratio=1: every patch is centred on foreground
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0, 2.0}


@pytest.mark.parametrize("patch", [(32, 16, 16), (16, 32, 8), (16, 16, 1)])
def test_non_cubic_patches_keep_their_shape_under_augmentation(tasks, patch):
    # 90-degree turns are limited to a square plane of the patch, so every sample stacks.
    info = tasks["mri"]
    tx = get_transforms(info, mode="train", patch_size=patch, num_samples=4, augment=True)
    for seed in range(4):
        tx.set_random_state(seed)
        shapes = {tuple(s["image"].shape[1:]) for s in tx(info.training[seed % 4])}
        assert shapes == {patch}


def test_mri_zscore_on_nonzero_and_crop(tasks):
    info = tasks["mri"]
    out = get_transforms(info, mode="val", patch_size=16)(info.training[0])
    img = out["image"].numpy()[0]
    nz = img != 0
    assert abs(img[nz].mean()) < 1e-3 and abs(img[nz].std() - 1.0) < 1e-3
    assert out["label"].shape == out["image"].shape[:0] + (1,) + img.shape
    # The body crop removed air but no foreground.
    raw = np.asanyarray(__import__("nibabel").load(str(info.training[0]["label"])).dataobj)
    assert int((out["label"] > 0).sum()) == int((raw > 0).sum())
    assert img.size <= raw.size


def test_ct_window_and_scale(tasks):
    info = tasks["ct"]
    out = get_transforms(info, mode="val", patch_size=16, ct_window=(-100.0, 200.0))(info.training[0])
    img, lbl = out["image"].numpy(), out["label"].numpy()
    assert img.min() >= 0.0 and img.max() <= 1.0
    # Object (about 140 HU) maps near (140 + 100) / 300 = 0.8; tissue (40 HU) near 0.47.
    assert 0.7 < np.median(img[lbl > 0]) < 0.9
    assert 0.35 < np.median(img[(lbl == 0) & (img > 0.05)]) < 0.6
    with pytest.raises(ValueError, match="ct_window"):
        get_transforms(info, mode="val", ct_window=(200.0, -100.0))


def test_4d_becomes_channel_first_and_infer_has_no_label(tasks):
    info = tasks["mri4d"]
    out = get_transforms(info, mode="val", patch_size=16)(info.training[0])
    assert out["image"].shape[0] == 2 and out["image"].shape[1:] == out["label"].shape[1:]
    inf = get_transforms(info, mode="infer", patch_size=16)({"image": info.test[0]})
    assert inf["image"].shape[0] == 2 and "label" not in inf


def test_spacing_resample(tasks):
    info = tasks["mri"]
    out = get_transforms(info, mode="val", patch_size=8, spacing=2.0, crop_foreground=False)(info.training[0])
    # 32 voxels x 1 mm -> 16 at 2 mm; 32 x 1.25 mm = 40 mm -> 20 at 2 mm.
    assert tuple(out["image"].shape[1:]) == (16, 16, 20)
    assert np.allclose(out["image"].pixdim.tolist(), [2.0, 2.0, 2.0])
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0}  # nearest neighbour


def test_bad_arguments_name_the_value(tasks):
    info = tasks["mri"]
    with pytest.raises(ValueError, match="mode='test'"):
        get_transforms(info, mode="test")
    with pytest.raises(ValueError, match="patch_size"):
        get_transforms(info, patch_size=(16, 16))
    with pytest.raises(ValueError, match="cache='ram'"):
        make_dataset(info.training, get_transforms(info, mode="val"), cache="ram")


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_datasets_and_loader(tasks, tmp_path, cache):
    info = tasks["mri"]
    tx = get_transforms(info, mode="train", patch_size=16, num_samples=2)
    ds = make_dataset(info.training, tx, cache=cache, cache_dir=tmp_path / "cache")
    assert len(ds) == 4
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False)))
    assert batch["image"].shape == (4, 1, 16, 16, 16)  # 2 cases x 2 patches
    if cache == "disk":
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # filled lazily, one file per case seen
        _ = [ds[i] for i in range(len(ds))]
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 4
        # A second dataset over the same files reuses the cache files rather than adding any.
        make_dataset(info.training, tx, cache="disk", cache_dir=tmp_path / "cache")[0]
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 4
        # A changed pipeline (another spacing) never reads the stale files.
        other = get_transforms(info, mode="train", patch_size=16, spacing=2.0)
        make_dataset(info.training, other, cache="disk", cache_dir=tmp_path / "cache")[0]
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 5
        # Validation over a case training already cached gets its own file (its chain differs).
        val_tx = get_transforms(info, mode="val", patch_size=16)
        miss = make_dataset(info.training, val_tx, cache="disk", cache_dir=tmp_path / "cache")[0]
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 6
        hit = make_dataset(info.training, val_tx, cache="disk", cache_dir=tmp_path / "cache")[0]
        assert {k: type(v) for k, v in miss.items()} == {k: type(v) for k, v in hit.items()}
        assert torch.equal(miss["image"], hit["image"])


def test_summary_montage_and_doors(tasks, tmp_path, capsys):
    info = tasks["mri4d"]
    text = summarize_task(info)
    assert "4 training, 1 test" in text and "[0] T1w" in text and "[1] T2w" in text
    assert "label 2     tail" in text and "in 4/4 cases" in text
    png = save_montage(info, tmp_path / "m.png", n_cases=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert synthesize_main(["--data-dir", str(tmp_path), "--flavour", "ct", "--n-train", "2", "--n-test", "0",
                            "--shape", "16", "16", "16", "--no-progress"]) == 0
    assert inspect_main(["Task91_SyntheticCT", "--data-dir", str(tmp_path), "--montage", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "[CT: HU window]" in out and "ready to train" in out and (tmp_path / "c.png").exists()
    (tmp_path / "Task91_SyntheticCT" / "labelsTr" / "synct_000.nii.gz").unlink()
    assert inspect_main([str(tmp_path / "Task91_SyntheticCT")]) == 2  # a task with errors: exit 2
    assert "synct_000.nii.gz" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    add_data_subcommands(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["synthesize", "--flavour", "mri4d", "--n-train", "1"])
    assert args.handler.__name__ == "_run_synthesize" and args.flavour == "mri4d" and args.n_train == 1



# ----------------------------------------------------------------------------- disk cache


@pytest.fixture
def small_task(tmp_path):
    root = tmp_path / "root"
    return load_task(make_synthetic_task(root, n_train=2, n_test=0, flavour="mri", shape=(16, 16, 16),
                                         progress=False))


def _rewrite(path, seed):
    # Same name, new voxels: what regenerating a task in place does.
    img = nib.load(str(path))
    values = np.random.default_rng(seed).uniform(1.0, 100.0, img.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(values, img.affine), str(path))


def test_disk_cache_sees_an_image_rewritten_in_place(small_task, tmp_path):
    tx = get_transforms(small_task, mode="val", patch_size=8)
    files = small_task.training[:1]
    first = make_dataset(files, tx, cache="disk", cache_dir=tmp_path / "cache")[0]["image"]
    _rewrite(files[0]["image"], seed=1)
    again = make_dataset(files, tx, cache="disk", cache_dir=tmp_path / "cache")[0]["image"]
    fresh = tx(dict(files[0]))["image"]
    assert not torch.equal(torch.as_tensor(first), torch.as_tensor(again))  # the old image is not served
    assert torch.equal(torch.as_tensor(again), torch.as_tensor(fresh))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    # Unchanged files keep their entry: a third dataset adds nothing.
    make_dataset(files, tx, cache="disk", cache_dir=tmp_path / "cache")[0]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_cache_key_follows_size_mtime_and_inode(tmp_path):
    path = tmp_path / "a.nii"
    path.write_bytes(b"1" * 100)
    item = {"image": str(path), "label": 3}
    key = file_state_hash(item)
    assert file_state_hash(dict(item)) == key  # stable
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same bytes, same size, other mtime
    assert file_state_hash(item) != key
    key = file_state_hash(item)
    same_time = path.stat().st_mtime_ns
    other = tmp_path / "b.nii"
    other.write_bytes(b"2" * 100)
    os.utime(other, ns=(same_time, same_time))
    os.replace(other, path)  # same size and mtime, but a new file renamed over the old one
    assert path.stat().st_mtime_ns == same_time and file_state_hash(item) != key


def test_default_cache_dir_is_under_the_tasks_data_root(small_task, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDNEXT_DATA", str(tmp_path / "env_root"))
    monkeypatch.chdir(tmp_path / "root")
    files = small_task.training[:1]
    expected = (tmp_path / "root" / ".cache" / "persistent").absolute()
    assert default_cache_dir(files) == expected
    ds = make_dataset(files, get_transforms(small_task, mode="val", patch_size=8), cache="disk")
    ds[0]
    assert len(list(expected.glob("*.pt"))) == 1
    assert not (tmp_path / "env_root").exists() and not (tmp_path / "root" / "data").exists()
    loose = tmp_path / "loose.nii.gz"
    with pytest.raises(ValueError, match="dataset.json.*cache_dir"):
        default_cache_dir([{"image": str(loose)}])


def test_disk_cache_batch_mixing_hits_and_misses(small_task, tmp_path):
    # --cache disk after an interrupted first epoch: one case is on disk, the other is not.
    tx = get_transforms(small_task, mode="train", patch_size=8, num_samples=1)
    cache = tmp_path / "cache"
    make_dataset(small_task.training[:1], tx, cache="disk", cache_dir=cache)[0]
    assert len(list(cache.glob("*.pt"))) == 1
    ds = make_dataset(small_task.training, tx, cache="disk", cache_dir=cache)
    hit, miss = ds._cachecheck(ds.data[0]), ds._cachecheck(ds.data[1])
    assert {k: type(v) for k, v in hit.items()} == {k: type(v) for k, v in miss.items()}
    assert all(isinstance(v, torch.Tensor) for v in miss.values())
    ds = make_dataset(small_task.training, tx, cache="disk", cache_dir=tmp_path / "cache2")
    ds[0]  # case 0 cached, case 1 not: the first batch holds one of each
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False, num_workers=0)))
    assert batch["image"].shape == (2, 1, 8, 8, 8) and batch["label"].shape == (2, 1, 8, 8, 8)
    assert batch["foreground_start_coord"].shape == (2, 3)
    assert len(list((tmp_path / "cache2").glob("*.pt"))) == 2


@pytest.mark.parametrize("dangling", [False, True])
def test_disk_cache_never_reads_or_writes_through_a_symlink(small_task, tmp_path, dangling):
    tx = get_transforms(small_task, mode="val", patch_size=8)
    files = small_task.training[:1]
    cache = tmp_path / "cache"
    make_dataset(files, tx, cache="disk", cache_dir=cache)[0]
    (entry,) = cache.glob("*.pt")
    outside = tmp_path / "precious.pt"
    if not dangling:
        outside.write_bytes(b"the user's file")
    entry.unlink()
    entry.symlink_to(outside)
    with pytest.raises(UnsafePathError, match="cache file.*symlink"):
        make_dataset(files, tx, cache="disk", cache_dir=cache)[0]
    assert entry.is_symlink()
    if dangling:
        assert not outside.exists()
    else:
        assert outside.read_bytes() == b"the user's file"
