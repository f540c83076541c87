"""The slice viewer draws what its controls say: check the matplotlib artists after each change."""

from __future__ import annotations

import numpy as np
import pytest

from mednext_lite import viz


@pytest.fixture
def volume():
    """A (x, y, z) = (20, 12, 8) volume with a distinct value per voxel and two labelled boxes."""
    image = np.arange(20 * 12 * 8, dtype=np.float32).reshape(20, 12, 8)
    label = np.zeros(image.shape, np.int64)
    label[2:6, 3:5, 5] = 1  # all of label 1 in axial slice 5
    label[10:12, 6:8, 2:4] = 2  # 4 voxels per slice: fewer than label 1 in slice 5
    prediction = np.roll(label, 1, axis=0)
    return image, label, prediction


def _image_artist(viewer, panel=0):
    return viewer.axes[panel].images[0]


def test_extract_slice_orientation(volume):
    image, _, _ = volume
    sl = viz.extract_slice(image, "axial", 3)
    assert sl.shape == (12, 20)  # rows = y, columns = x
    assert sl[4, 7] == image[7, 4, 3]
    assert viz.extract_slice(image, "coronal", 2).shape == (8, 20)
    assert viz.extract_slice(image, "sagittal", 2)[5, 1] == image[2, 1, 5]
    with pytest.raises(ValueError, match="outside the axial range 0..7"):
        viz.extract_slice(image, "axial", 8)
    with pytest.raises(ValueError, match="unknown plane"):
        viz.extract_slice(image, "transverse", 0)


def test_extent_and_aspect_follow_spacing():
    assert viz.plane_extent((20, 12, 8), (0.5, 1.0, 3.0), "axial") == (0.0, 10.0, 0.0, 12.0)
    assert viz.plane_extent((20, 12, 8), (0.5, 1.0, 3.0), "sagittal") == (0.0, 12.0, 0.0, 24.0)
    assert viz.slice_aspect((0.5, 1.0, 3.0), "coronal") == pytest.approx(6.0)


def test_windows():
    ct = np.linspace(-1000, 1000, 101)
    assert viz.window_limits(ct, "soft tissue", is_ct=True) == (-160.0, 240.0)
    assert viz.window_limits(ct, "lung", is_ct=True) == (-1350.0, 150.0)
    assert viz.window_limits(ct, "bone", is_ct=True) == (-500.0, 1300.0)
    assert viz.ct_window(-600, 1500) == (-1350.0, 150.0)
    with pytest.raises(ValueError, match="width=0 must be positive"):
        viz.ct_window(40, 0)
    mri = np.arange(101, dtype=float)
    assert viz.window_limits(mri, "5-95 %") == pytest.approx((5.0, 95.0))
    assert viz.window_limits(mri, (10, 20)) == (10.0, 20.0)
    with pytest.raises(ValueError, match="unknown window 'lung' for a non-CT"):
        viz.window_limits(mri, "lung")
    with pytest.raises(ValueError, match="vmax > vmin"):
        viz.window_limits(mri, (5, 5))


def test_initial_view_is_the_slice_with_most_foreground(volume):
    image, label, _ = volume
    viewer = viz.SliceViewer(image, label, spacing=(1.0, 2.0, 3.0))
    assert viewer.plane == "axial" and viewer.index == 5
    art = _image_artist(viewer)
    np.testing.assert_array_equal(art.get_array(), image[:, :, 5].T)
    assert tuple(art.get_extent()) == (0.0, 20.0, 0.0, 24.0)
    overlay = viewer.axes[0].images[1]
    assert overlay.get_alpha() == pytest.approx(0.4)
    assert int(np.ma.count(overlay.get_array())) == 8  # the 4x2 voxels of label 1; background masked


def test_widgets_drive_the_drawing(volume):
    image, label, prediction = volume
    viewer = viz.SliceViewer(image, label, prediction, spacing=(1.0, 2.0, 3.0), label_names={1: "a", 2: "b"})
    viewer.build_widgets()
    w = viewer.widgets
    assert viewer.mode == "side by side" and len(viewer.axes) == 2
    assert [ax.get_title().split("\n")[0] for ax in viewer.axes] == ["ground truth", "prediction"]

    w["index"].value = 2
    np.testing.assert_array_equal(_image_artist(viewer).get_array(), image[:, :, 2].T)

    w["plane"].value = "sagittal"
    assert w["index"].max == 19  # slider range follows the plane
    assert viewer.index == w["index"].value
    art = _image_artist(viewer)
    np.testing.assert_array_equal(art.get_array(), image[viewer.index].T)
    assert tuple(art.get_extent()) == (0.0, 24.0, 0.0, 24.0)
    assert viewer.axes[0].get_xlabel() == "y (mm)" and viewer.axes[0].get_ylabel() == "z (mm)"

    w["window"].value = "5-95 %"
    lo, hi = np.percentile(image, (5, 95))
    assert _image_artist(viewer).get_clim() == pytest.approx((lo, hi))

    w["alpha"].value = 0.8
    assert viewer.axes[1].images[1].get_alpha() == pytest.approx(0.8)

    w["plane"].value = "axial"
    w["index"].value = 5
    w["mode"].value = "contours"
    assert len(viewer.axes) == 1
    assert len(viewer.axes[0].images) == 1  # no filled overlay, only lines
    styles = [c.get_linestyle()[0][1] for c in viewer.axes[0].collections]
    assert len(viewer.axes[0].collections) == 2  # label 1: ground truth (solid) and prediction (dashed)
    assert styles[0] is None and styles[1] is not None


def test_ct_presets_set_clim(volume):
    _, label, _ = volume
    ct = np.full(label.shape, -1000.0)
    viewer = viz.SliceViewer(ct, label, is_ct=True)
    assert _image_artist(viewer).get_clim() == (-160.0, 240.0)
    viewer.build_widgets()
    assert "lung" in viewer.widgets["window"].options
    viewer.widgets["window"].value = "lung"
    assert _image_artist(viewer).get_clim() == (-1350.0, 150.0)


def test_bad_settings_name_the_fix(volume):
    image, label, _ = volume
    viewer = viz.SliceViewer(image, label)
    with pytest.raises(ValueError, match="pass prediction="):
        viewer.update(mode="contours")
    with pytest.raises(ValueError, match="opacity"):
        viewer.update(alpha=2)
    with pytest.raises(ValueError, match="resample"):
        viz.SliceViewer(image, label[:-1])
    with pytest.raises(TypeError, match="unknown viewer setting"):
        viewer.update(zoom=2)


def test_channel_first_images_get_a_channel_control(volume):
    image, label, _ = volume
    stack = np.stack([image, -image])
    viewer = viz.SliceViewer(stack, label)
    viewer.build_widgets()
    viewer.widgets["channel"].value = 1
    np.testing.assert_array_equal(_image_artist(viewer).get_array(), -image[:, :, 5].T)


def test_static_figure_matches_the_viewer(volume, monkeypatch):
    image, label, prediction = volume
    fig = viz.show_slices(image, label, prediction, spacing=(1.0, 2.0, 3.0))
    assert len(fig.axes) == 6  # 3 planes x (ground truth, prediction)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), image[:, :, 5].T)
    assert all(ax.get_title() and ax.get_xlabel().endswith("(mm)") for ax in fig.axes)
    monkeypatch.setenv(viz.HEADLESS_ENV_VAR, "1")
    assert not viz.has_widget_frontend()
    shown = viz.SliceViewer(image, label).show()
    assert len(shown.axes) == 3  # one panel per plane


def test_plot_curves():
    fig = viz.plot_curves([{"epoch": 1, "loss": 1.0, "dice": 0.1}, {"epoch": 2, "loss": 0.5, "dice": 0.4}],
                          baselines={"threshold": 0.3})
    loss_ax, metric_ax = fig.axes
    np.testing.assert_array_equal(loss_ax.lines[0].get_ydata(), [1.0, 0.5])
    assert metric_ax.lines[-1].get_ydata()[0] == 0.3
    assert loss_ax.get_xlabel() == "epoch"
    with pytest.raises(ValueError, match="no series"):
        viz.plot_curves({"epoch": [1, 2]})


def test_plot_curves_draws_sparse_validation_as_a_marked_line():
    # 30 epochs, validation every 5th: the metric is NaN (or missing) on the other 25 epochs.
    epochs = list(range(1, 31))
    dice = [0.1 + 0.02 * e if e % 5 == 0 else np.nan for e in epochs]
    curves = {"epoch": epochs, "train_loss": [1.0 / e for e in epochs], "selection cases": dice}
    fig = viz.plot_curves(curves, title="run", baselines={"threshold rule": 0.4},
                          ylabel={"metric": "mean foreground Dice"})
    loss_ax, metric_ax = fig.axes
    line = metric_ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [5, 10, 15, 20, 25, 30])
    np.testing.assert_allclose(line.get_ydata(), [0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert line.get_marker() not in (None, "None", "", " ") and line.get_linestyle() == "-"
    assert metric_ax.get_ylabel() == "mean foreground Dice" and metric_ax.get_xlabel() == "epoch"
    assert metric_ax.get_title() == "run\nmean foreground Dice" and loss_ax.get_title() == "run\nloss"
    assert metric_ax.get_ylim() == (0.0, 1.02)  # a Dice axis by its label, whatever the curve is called
    assert len(loss_ax.lines[0].get_xdata()) == 30  # the dense loss keeps every epoch
    assert metric_ax.lines[-1].get_label() == "threshold rule (0.400)"
    # the same history as per-epoch rows, validation keys absent between validations
    rows = [{"epoch": e, "train_loss": 1.0 / e, **({"val_dice_mean": d} if e % 5 == 0 else {})}
            for e, d in zip(epochs, dice)]
    sparse = viz.plot_curves(rows).axes[1]
    assert len(sparse.lines[0].get_xdata()) == 6 and sparse.get_ylabel() == "Dice"
    assert sparse.get_ylim() == (0.0, 1.02)


def test_plot_curves_with_no_values_yet_keeps_a_legend_entry():
    fig = viz.plot_curves({"epoch": [0], "train_loss": [np.nan], "val_dice": [None]})
    assert [len(ax.lines[0].get_xdata()) for ax in fig.axes] == [0, 0]
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "train_loss (no values yet)"


def test_initial_plane_starts_at_its_best_slice(volume):
    image, label, _ = volume
    viewer = viz.SliceViewer(image, label, plane="sagittal")
    assert viewer.plane == "sagittal" and viewer.index == 10  # x = 10, 11 hold 4 voxels of label 2 each
    np.testing.assert_array_equal(_image_artist(viewer).get_array(), image[10].T)


def _drawn_rgba(artist):
    """The colours an image artist paints: its data through its norm and colour map."""
    return artist.to_rgba(artist.get_array(), bytes=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_voxel_leaves_the_window_and_the_picture_alone(volume, bad):
    image, label, _ = volume
    spoilt = image.copy()
    spoilt[7, 4, 5] = bad  # inside the slice the viewer opens on (axial 5)
    finite = image[np.isfinite(spoilt)]  # the same volume without that voxel
    for window in viz.MRI_WINDOWS:
        limits = viz.window_limits(spoilt, window)
        assert limits == viz.window_limits(finite, window) and all(np.isfinite(limits))
    assert viz.window_limits(spoilt, "full range") == (0.0, float(image.max()))

    viewer = viz.SliceViewer(spoilt, label)
    clean = viz.SliceViewer(image, label, window=viewer.limits)  # same limits, no bad voxel
    drawn, expected = _drawn_rgba(_image_artist(viewer)), _drawn_rgba(_image_artist(clean))
    assert _image_artist(viewer).get_clim() == pytest.approx(viewer.limits)
    assert len(np.unique(drawn.reshape(-1, 4), axis=0)) > 50  # a picture, not one flat colour
    bad_pixel = (4, 7)  # rows = y, columns = x
    np.testing.assert_array_equal(np.delete(drawn.reshape(-1, 4), 4 * 20 + 7, axis=0),
                                  np.delete(expected.reshape(-1, 4), 4 * 20 + 7, axis=0))
    np.testing.assert_array_equal(drawn[bad_pixel], [0, 0, 0, 255])  # the lowest grey: black
    assert np.isfinite(viz.window_limits(np.full((3, 3, 3), np.nan), "1-99 %")).all()


def test_non_finite_explicit_windows_are_refused():
    with pytest.raises(ValueError, match=r"must be two finite numbers"):
        viz.window_limits(np.zeros(3), (0.0, np.inf))
    with pytest.raises(ValueError, match=r"must be two finite numbers"):
        viz.window_limits(np.zeros(3), (np.nan, 1.0))
    with pytest.raises(ValueError, match=r"level=nan must be a finite"):
        viz.ct_window(np.nan, 400)
    with pytest.raises(ValueError, match=r"width=inf must be positive and finite"):
        viz.ct_window(40, np.inf)


@pytest.mark.timeout(60)  # a colour per value up to 10**6 took minutes: fail instead of hanging
def test_large_and_sparse_label_values_get_one_colour_each(volume):
    image, label, _ = volume
    sparse = np.where(label == 2, 10**6, label)  # values {0, 1, 10**6}
    prediction = sparse.copy()
    prediction[0, 0, 5] = -1  # an ignore-style negative value
    viewer = viz.SliceViewer(image, sparse, prediction, label_names={1: "liver", 10**6: "tumour"})
    assert viewer.cmap.N == viewer.num_labels == 3
    assert viewer.label_names == {-1: "label -1", 1: "liver", 10**6: "tumour"}
    legend = viewer.figure.legends[0]
    assert [t.get_text() for t in legend.texts] == ["-1: label -1", "1: liver", "1000000: tumour"]

    viewer.update(plane="axial", index=2)  # holds 10**6 only
    for panel, source in ((0, sparse), (1, prediction)):
        overlay = viewer.axes[panel].images[1]
        assert int(np.ma.count(overlay.get_array())) == int((source[:, :, 2] != 0).sum()) == 4
        colour = overlay.to_rgba(overlay.get_array())[7, 10]  # voxel (10, 7, 2) is 10**6
        np.testing.assert_allclose(colour[:3], legend.legend_handles[2].get_facecolor()[:3])
    viewer.update(mode="contours")
    assert len(viewer.axes[0].collections) == 2  # 10**6 in ground truth and prediction

    many = np.arange(image.size).reshape(image.shape)  # a wrong file passed as labels: 1919 values
    crowded = viz.SliceViewer(image, many)
    assert crowded.cmap.N == 1919
    texts = [t.get_text() for t in crowded.figure.legends[0].texts]
    assert len(texts) == 24 and texts[-1] == "... and 1896 more"


def test_small_labels_keep_one_colour_per_value(volume):
    image, label, _ = volume
    gappy = np.where(label == 2, 3, label)  # {0, 1, 3}: colours by value, as in every other case
    viewer = viz.SliceViewer(image, gappy)
    assert viewer.num_labels == 3 and list(viewer.label_names) == [1, 3]
    viewer.update(index=2)
    overlay = viewer.axes[0].images[1]
    assert set(np.ma.compressed(overlay.get_array())) == {3}  # the data is the label value itself


def test_label_maps_must_hold_integers(volume):
    image, label, _ = volume
    with pytest.raises(ValueError, match=r"label holds nan, which is not an integer label.*np\.rint"):
        viz.SliceViewer(image, np.where(label == 1, np.nan, label.astype(float)))
    with pytest.raises(ValueError, match=r"prediction holds 0.5"):
        viz.SliceViewer(image, label, label + 0.5)
    viewer = viz.SliceViewer(image, label.astype(np.float32))  # whole numbers stored as floats are fine
    assert viewer.label_names == {1: "label 1", 2: "label 2"}
