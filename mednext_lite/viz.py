"""Looking at volumes: a three-plane slice viewer (ipywidgets) with a static twin for headless runs.

:class:`SliceViewer` holds a volume, an optional ground-truth label map and an optional prediction,
and draws one slice of one plane (axial, coronal, sagittal) with the labels overlaid, side by side
or as contours. Its state lives in plain attributes and every change goes through :meth:`update`,
so the ipywidgets controls, a unit test and a headless papermill run all drive the same code. The
figures are :class:`matplotlib.figure.Figure` objects created without pyplot, so no GUI backend is
needed and nothing leaks between figures. Axes are in millimetres (extent = voxels x spacing), which
is what makes anisotropic MRI look right. Training curves (:func:`plot_curves`) live here too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, to_rgba_array
from matplotlib.figure import Figure

__all__ = [
    "CT_WINDOWS",
    "HEADLESS_ENV_VAR",
    "MODES",
    "MRI_WINDOWS",
    "PLANES",
    "SliceViewer",
    "ct_window",
    "extract_slice",
    "figure_png",
    "has_widget_frontend",
    "label_colormap",
    "plane_extent",
    "plot_curves",
    "show_slices",
    "slice_aspect",
    "window_limits",
]

#: Plane name -> the array axis held fixed. Volumes are indexed (x, y, z) as nibabel reads them.
PLANES: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}

#: CT windows as (level, width) in Hounsfield units: the radiology reading-room defaults.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
}

#: MRI has no absolute unit, so windows are percentiles of the whole volume's intensities.
MRI_WINDOWS: dict[str, tuple[float, float]] = {
    "1-99 %": (1.0, 99.0),
    "0.5-99.5 %": (0.5, 99.5),
    "5-95 %": (5.0, 95.0),
    "full range": (0.0, 100.0),
}

#: How ground truth and prediction are shown: one overlay, two panels, or contours on one panel.
MODES = ("overlay", "side by side", "contours")

#: Set to 1 to force static figures (the notebook runner does this for papermill runs).
HEADLESS_ENV_VAR = "MEDNEXT_LITE_HEADLESS"

_LABEL_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]

# NaN and inf voxels are masked by imshow and drawn in the "bad" colour, which is transparent by
# default; painting them the lowest grey (black) keeps the slice an unbroken picture.
_IMAGE_CMAP = colormaps["gray"].with_extremes(bad=colormaps["gray"](0.0))

# Label values up to this keep one fixed colour per value (the same in every case of a task);
# larger or negative ones get consecutive colours in sorted order, so a label 10**6 costs one entry.
_DENSE_LABELS = 64

# More legend entries than this are summarised as "... and N more" (a legend of thousands hangs).
_MAX_LEGEND = 24


def ct_window(level: float, width: float) -> tuple[float, float]:
    """Display limits ``(vmin, vmax)`` of a CT window given as level (its centre) and width (its
    whole span), both in Hounsfield units."""
    if not (width > 0 and math.isfinite(width)):
        raise ValueError(f"CT window width={width!r} must be positive and finite, e.g. 400 for soft tissue")
    if not math.isfinite(level):
        raise ValueError(f"CT window level={level!r} must be a finite number of HU, e.g. 40 for soft tissue")
    return level - width / 2, level + width / 2


def _finite_values(volume: np.ndarray) -> np.ndarray:
    """The volume's values without NaN and inf (the volume itself when it has none)."""
    array = np.asarray(volume)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            return array[finite]
    return array


def window_limits(volume: np.ndarray, window: str | tuple[float, float], *, is_ct: bool = False) -> tuple[float, float]:
    """Display limits ``(vmin, vmax)`` for a named window or an explicit ``(vmin, vmax)`` pair.

    CT names (:data:`CT_WINDOWS`) are level/width in Hounsfield units, fixed by physics, so they do
    not look at the data. MRI names (:data:`MRI_WINDOWS`) are percentiles of the WHOLE volume, so the
    brightness does not jump while scrolling through slices. Percentiles ignore NaN and inf voxels
    (one of them would otherwise turn the limits into NaN and the slice into one flat colour); a
    volume with no finite voxel gets ``(0, 1)``. Explicit limits must be finite.
    """
    if isinstance(window, str):
        if is_ct and window in CT_WINDOWS:
            return ct_window(*CT_WINDOWS[window])
        if window in MRI_WINDOWS:
            values = _finite_values(volume)
            if values.size == 0:
                return 0.0, 1.0
            lo, hi = np.percentile(values.astype(np.float64, copy=False), MRI_WINDOWS[window])
            return float(lo), float(hi) if hi > lo else float(lo) + 1.0
        names = list(CT_WINDOWS) + list(MRI_WINDOWS) if is_ct else list(MRI_WINDOWS)
        raise ValueError(f"unknown window {window!r} for a {'CT' if is_ct else 'non-CT'} image: "
                         f"use one of {names} or an explicit (vmin, vmax) pair")
    try:
        vmin, vmax = (float(v) for v in window)
    except (TypeError, ValueError):
        raise TypeError(f"window={window!r} must be a preset name or a (vmin, vmax) pair of numbers") from None
    if not (math.isfinite(vmin) and math.isfinite(vmax)):
        raise ValueError(f"window {window!r} must be two finite numbers, e.g. (0, 1000)")
    if not vmax > vmin:
        raise ValueError(f"window {window!r} needs vmax > vmin, e.g. ({vmin}, {vmin + 100})")
    return vmin, vmax


def _plane_axis(plane: str) -> int:
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}: use one of {list(PLANES)}")
    return PLANES[plane]


def extract_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice ``index`` of ``plane``, transposed for ``imshow(origin="lower")``.

    Rows of the result run along the second remaining axis (y for axial, z otherwise), columns
    along the first, so the patient's head is up in coronal and sagittal views.
    """
    axis = _plane_axis(plane)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume (x, y, z), got shape {volume.shape}; pick a channel first")
    n = volume.shape[axis]
    if not 0 <= index < n:
        raise ValueError(f"slice index {index} is outside the {plane} range 0..{n - 1}")
    return np.take(volume, index, axis=axis).T


def plane_extent(shape: Sequence[int], spacing: Sequence[float], plane: str) -> tuple[float, float, float, float]:
    """``imshow`` extent in millimetres ``(0, width, 0, height)`` of ``plane`` for a volume ``shape``."""
    axis = _plane_axis(plane)
    (n0, s0), (n1, s1) = [(shape[a], spacing[a]) for a in range(3) if a != axis]
    return 0.0, float(n0 * s0), 0.0, float(n1 * s1)


def slice_aspect(spacing: Sequence[float], plane: str) -> float:
    """Height/width of one displayed pixel: the voxel spacing ratio of the plane's two axes."""
    axis = _plane_axis(plane)
    s0, s1 = [float(spacing[a]) for a in range(3) if a != axis]
    return s1 / s0


def label_colormap(num_labels: int) -> ListedColormap:
    """A qualitative colour map with ``num_labels`` entries, one per label drawn (background is
    masked, so transparent); the colours repeat every eight. :class:`SliceViewer` asks for one entry
    per label value it shows, so sparse values such as {1, 10**6} cost two entries, not a million."""
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 0:
        raise ValueError(f"num_labels={num_labels!r} must be a non-negative integer (the number of labels drawn)")
    # Tiled as an array: a list of a million colour names would take seconds to parse.
    colours = np.resize(to_rgba_array(_LABEL_COLOURS), (max(1, int(num_labels)), 4))
    return ListedColormap(colours, name="labels")


def _label_values(label: np.ndarray, name: str) -> set[int]:
    """The distinct values of a label map, refusing one that holds anything but class numbers."""
    # Deferred: the data package pulls in MONAI, which drawing a slice does not otherwise need.
    from .data.dataset import label_problem

    problem = label_problem(label)
    if problem is not None:
        raise (ValueError if label.dtype.kind == "f" else TypeError)(
            f"{name} {problem}: label maps hold integers (pass np.rint({name}).astype(int), and replace NaN/inf "
            "first)")
    return {int(v) for v in np.unique(label)}


def figure_png(fig: Figure, dpi: int = 90) -> Any:
    """An ``IPython.display.Image`` of ``fig``: pyplot-free figures have no inline display hook of
    their own, and a PNG shows the same in Jupyter, Colab, papermill outputs and nbviewer."""
    import io

    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return Image(data=buffer.getvalue(), format="png")


def has_widget_frontend() -> bool:
    """Whether interactive widgets can be shown: an IPython kernel, ipywidgets installed, and not
    headless (the :data:`HEADLESS_ENV_VAR` variable, set by the papermill runner, forces False)."""
    if os.environ.get(HEADLESS_ENV_VAR, "").strip().lower() in ("1", "true", "yes"):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _as_volume(array: np.ndarray | None, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    if array.ndim == 2:  # a 2D image is shown as a one-slice volume
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"{name} has shape {array.shape}: expected (x, y, z) or (x, y); "
                         "for channel-first images pass image[channel]")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape} but the image has {shape}: resample one onto the other")
    return array


class SliceViewer:
    """Browse a volume slice by slice with label overlays; interactive in Jupyter, static elsewhere.

    Args:
        image: (x, y, z) or channel-first (c, x, y, z) array (a (x, y) image works too).
        label: ground-truth label map of the same spatial shape (optional).
        prediction: predicted label map (optional); enables "side by side" and "contours".
        spacing: voxel size in mm per axis; the axes are drawn in mm so proportions are true.
        is_ct: use Hounsfield-unit windows (soft tissue, bone, lung) instead of percentiles.
        label_names: value -> name, for the legend (background 0 is never drawn). Labels 1..64 keep
            one colour per value; sparse or large values (say {1, 10**6}) get consecutive colours,
            one colour-map entry per value present, and the legend keeps their real values.
        plane, index, window, alpha, mode, channel: the initial view (index defaults to the slice
            with the most foreground, or the middle slice).
        title: figure title prefix.

    NaN and inf voxels of the image do not move the percentile windows and are drawn black (the
    lowest grey); label maps must hold integers (float maps of whole numbers are fine).
    """

    def __init__(
        self,
        image: np.ndarray,
        label: np.ndarray | None = None,
        prediction: np.ndarray | None = None,
        *,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        is_ct: bool = False,
        label_names: Mapping[int, str] | None = None,
        plane: str = "axial",
        index: int | None = None,
        window: str | tuple[float, float] | None = None,
        alpha: float = 0.4,
        mode: str | None = None,
        channel: int = 0,
        title: str = "",
    ) -> None:
        image = np.asarray(image)
        self.channels = image if image.ndim == 4 else None
        self.image = _as_volume(image[channel] if image.ndim == 4 else image, "image")
        shape = self.image.shape
        self.label = _as_volume(label, "label", shape)
        self.prediction = _as_volume(prediction, "prediction", shape)
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) == 2:
            spacing = spacing + (1.0,)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing={spacing} must be three positive sizes in mm, e.g. (1.0, 1.0, 2.5)")
        self.spacing = spacing
        self.is_ct = bool(is_ct)
        present: set[int] = set()
        for lab, name in ((self.label, "label"), (self.prediction, "prediction")):
            if lab is not None:
                present |= _label_values(lab, name)
        try:
            names = {int(k): str(v) for k, v in dict(label_names or {}).items()}
        except (TypeError, ValueError):
            raise TypeError(f"label_names={label_names!r} must map integer label values to names, "
                            "e.g. {1: 'tumour'}") from None
        shown = sorted((present | set(names)) - {0}) or [1]
        #: value -> legend name, for every non-zero value present or named.
        self.label_names = {v: names.get(v, f"label {v}") for v in shown}
        # The label value drawn by each colour-map entry, sorted.
        self._colour_values = (np.arange(1, shown[-1] + 1) if shown[0] >= 1 and shown[-1] <= _DENSE_LABELS
                              else np.asarray(shown, dtype=np.int64))
        self.num_labels = len(self._colour_values)
        self.cmap = label_colormap(self.num_labels)
        self.title = title
        _plane_axis(plane)
        self.plane = plane
        self.channel = channel
        self.window: str | tuple[float, float] = window or ("soft tissue" if self.is_ct else "1-99 %")
        self.alpha = float(alpha)
        self.mode = mode or ("side by side" if self.prediction is not None else "overlay")
        self.index = 0
        self.figure = Figure(figsize=(10, 5), layout="constrained")
        self.widgets: dict[str, Any] = {}
        self._output = None
        self._syncing = False
        self._live = True
        self._limits: dict[tuple, tuple[float, float]] = {}
        self.update(index=index, window=self.window, alpha=self.alpha, mode=self.mode)

    # -- state --------------------------------------------------------------------------------
    def num_slices(self, plane: str | None = None) -> int:
        """Number of slices along ``plane`` (the current plane by default)."""
        return self.image.shape[_plane_axis(plane or self.plane)]

    def best_index(self, plane: str | None = None) -> int:
        """The slice with the most ground-truth foreground (the middle slice when there is none)."""
        plane = plane or self.plane
        axis = _plane_axis(plane)
        source = self.label if self.label is not None else self.prediction
        if source is not None and source.any():
            other = tuple(a for a in range(3) if a != axis)
            return int(np.argmax((source != 0).sum(axis=other)))
        return self.num_slices(plane) // 2

    @property
    def limits(self) -> tuple[float, float]:
        """Current display limits (vmin, vmax) of the image.

        Memoised per (channel, window): percentile windows scan the whole volume, which would
        otherwise happen on every slider move.
        """
        key = (self.channel, tuple(self.window) if not isinstance(self.window, str) else self.window)
        if key not in self._limits:
            self._limits[key] = window_limits(self.image, self.window, is_ct=self.is_ct)
        return self._limits[key]

    @property
    def window_names(self) -> list[str]:
        """The window presets that apply to this image."""
        return list(CT_WINDOWS) + list(MRI_WINDOWS) if self.is_ct else list(MRI_WINDOWS)

    @property
    def modes(self) -> list[str]:
        """The display modes available (side by side and contours need a prediction)."""
        return list(MODES) if self.prediction is not None else ["overlay"]

    def update(self, **changes: Any) -> SliceViewer:
        """Change any of plane, index, window, alpha, mode, channel, then redraw.

        Changing the plane without an index keeps the same relative position (the middle stays the
        middle). Invalid values raise ValueError naming the valid ones.
        """
        unknown = set(changes) - {"plane", "index", "window", "alpha", "mode", "channel"}
        if unknown:
            raise TypeError(f"unknown viewer setting(s) {sorted(unknown)}: use plane, index, window, alpha, mode, channel")
        if "channel" in changes and changes["channel"] is not None and self.channels is not None:
            c = int(changes["channel"])
            if not 0 <= c < len(self.channels):
                raise ValueError(f"channel {c} is outside 0..{len(self.channels) - 1}")
            self.channel, self.image = c, self.channels[c]
        if "plane" in changes and changes["plane"] is not None and changes["plane"] != self.plane:
            plane = changes["plane"]
            _plane_axis(plane)
            fraction = (self.index + 0.5) / self.num_slices()
            self.plane = plane
            if changes.get("index") is None:
                changes["index"] = min(int(fraction * self.num_slices()), self.num_slices() - 1)
        if "index" in changes:
            index = changes["index"]
            index = self.best_index() if index is None else int(index)
            if not 0 <= index < self.num_slices():
                raise ValueError(f"slice index {index} is outside the {self.plane} range 0..{self.num_slices() - 1}")
            self.index = index
        if "window" in changes and changes["window"] is not None:
            previous, self.window = self.window, changes["window"]
            try:
                _ = self.limits  # validates, and memoises the percentiles for the redraw
            except (TypeError, ValueError):
                self.window = previous
                raise
        if "alpha" in changes and changes["alpha"] is not None:
            alpha = float(changes["alpha"])
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"alpha={alpha} is the overlay opacity: use a value in [0, 1]")
            self.alpha = alpha
        if "mode" in changes and changes["mode"] is not None:
            if changes["mode"] not in self.modes:
                raise ValueError(f"mode {changes['mode']!r} is not available here: use one of {self.modes}"
                                 + ("" if self.prediction is not None else " (pass prediction= for the others)"))
            self.mode = changes["mode"]
        if self._live:
            self.render()
        self._sync_widgets()
        return self

    # -- drawing ------------------------------------------------------------------------------
    def _panels(self) -> list[tuple[str, np.ndarray | None, str]]:
        """(title, label map, style) per panel for the current mode."""
        if self.mode == "side by side":
            return [("ground truth", self.label, "fill"), ("prediction", self.prediction, "fill")]
        if self.mode == "contours":
            return [("ground truth (solid) vs prediction (dashed)", None, "contours")]
        label = self.label if self.label is not None else self.prediction
        return [("ground truth" if self.label is not None else ("prediction" if label is not None else "image"),
                 label, "fill")]

    def _colour_index(self, label: np.ndarray) -> np.ndarray:
        """1-based colour-map entry of each value of ``label`` (0 for background and unknown values);
        equal to the label itself when the labels are 1..N with N <= 64."""
        label = np.asarray(label)
        pos = np.minimum(np.searchsorted(self._colour_values, label), self.num_labels - 1)
        hit = (self._colour_values[pos] == label) & (label != 0)
        return np.where(hit, pos + 1, 0)

    def _label_colour(self, value: int) -> tuple[float, float, float, float]:
        """The RGBA colour of label ``value`` in every panel and in the legend."""
        return self.cmap(int(self._colour_index(np.asarray([value]))[0]) - 1)

    def _draw_labels(self, ax: Any, label: np.ndarray, extent: tuple, style: str, linestyle: str = "solid") -> None:
        sl = extract_slice(label, self.plane, self.index)
        if style == "fill":
            ax.imshow(np.ma.masked_equal(self._colour_index(sl), 0), cmap=self.cmap, vmin=0.5,
                      vmax=self.num_labels + 0.5, alpha=self.alpha, origin="lower", extent=extent,
                      interpolation="nearest")
            return
        # Contours on the voxel-centre grid, so a one-voxel structure still gets a closed line.
        ny, nx = sl.shape
        x = np.linspace(extent[0], extent[1], nx, endpoint=False) + (extent[1] - extent[0]) / (2 * nx)
        y = np.linspace(extent[2], extent[3], ny, endpoint=False) + (extent[3] - extent[2]) / (2 * ny)
        for value in np.unique(sl):  # only the values in this slice, however large they are
            if value != 0:
                ax.contour(x, y, (sl == value).astype(float), levels=[0.5], colors=[self._label_colour(value)],
                           linestyles=linestyle, linewidths=1.5)

    def draw_on(self, axes: Sequence[Any]) -> None:
        """Draw the current state onto ``axes`` (one per panel); used by the widget figure and by
        :func:`show_slices`, so interactive and static views cannot drift apart."""
        extent = plane_extent(self.image.shape, self.spacing, self.plane)
        vmin, vmax = self.limits
        image = extract_slice(self.image, self.plane, self.index)
        for ax, (name, label, style) in zip(axes, self._panels()):
            ax.imshow(image, cmap=_IMAGE_CMAP, vmin=vmin, vmax=vmax, origin="lower", extent=extent,
                      interpolation="nearest")
            if style == "contours":
                if self.label is not None:
                    self._draw_labels(ax, self.label, extent, "contours", "solid")
                self._draw_labels(ax, self.prediction, extent, "contours", "dashed")
            elif label is not None:
                self._draw_labels(ax, label, extent, "fill")
            ax.set_aspect("equal")  # the extent is in mm, so equal aspect = true proportions
            h, v = {"axial": ("x", "y"), "coronal": ("x", "z"), "sagittal": ("y", "z")}[self.plane]
            ax.set_xlabel(f"{h} (mm)")
            ax.set_ylabel(f"{v} (mm)")
            ax.set_title(f"{name}\n{self.plane} slice {self.index}/{self.num_slices() - 1}", fontsize=10)

    def _decorate(self, fig: Figure) -> None:
        vmin, vmax = self.limits
        window = self.window if isinstance(self.window, str) else "custom"
        fig.suptitle(f"{self.title + ': ' if self.title else ''}window {window} [{vmin:.0f}, {vmax:.0f}]",
                     fontsize=11)
        if self.label is not None or self.prediction is not None:
            from matplotlib.patches import Patch

            items = list(self.label_names.items())
            keep = items if len(items) <= _MAX_LEGEND else items[:_MAX_LEGEND - 1]
            handles = [Patch(color=self._label_colour(k), label=f"{k}: {n}") for k, n in keep]
            if len(keep) < len(items):
                handles.append(Patch(color="none", label=f"... and {len(items) - len(keep)} more"))
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=9)

    def render(self) -> Figure:
        """Redraw the figure for the current state and return it."""
        fig = self.figure
        fig.clear()
        axes = fig.subplots(1, len(self._panels()), squeeze=False)[0]
        self.draw_on(axes)
        self._decorate(fig)
        return fig

    @property
    def axes(self) -> list[Any]:
        """The image axes currently drawn (one per panel; the legend is not an axes)."""
        return list(self.figure.axes)

    # -- widgets ------------------------------------------------------------------------------
    def build_widgets(self) -> Any:
        """Create the ipywidgets controls (plane, slice, opacity, window, mode, channel) and return
        the whole viewer as one VBox. Changing a control calls :meth:`update`."""
        import ipywidgets as w

        self.widgets = {
            "plane": w.ToggleButtons(options=list(PLANES), value=self.plane, description="plane"),
            "index": w.IntSlider(value=self.index, min=0, max=self.num_slices() - 1, description="slice",
                                 continuous_update=False),
            "alpha": w.FloatSlider(value=self.alpha, min=0.0, max=1.0, step=0.05, description="opacity"),
            "window": w.Dropdown(options=self.window_names,
                                 value=self.window if isinstance(self.window, str) else None, description="window"),
            "mode": w.ToggleButtons(options=self.modes, value=self.mode, description="labels"),
        }
        if self.channels is not None:
            self.widgets["channel"] = w.Dropdown(options=list(range(len(self.channels))), value=self.channel,
                                                 description="channel")
        for name, widget in self.widgets.items():
            widget.observe(lambda change, name=name: self._on_widget(name, change["new"]), names="value")
        self._output = w.Output()
        self._refresh_output()
        return w.VBox([w.HBox([self.widgets["plane"], self.widgets["mode"]]),
                       w.HBox([self.widgets["index"], self.widgets["alpha"], self.widgets["window"]]
                              + ([self.widgets["channel"]] if "channel" in self.widgets else [])),
                       self._output])

    def _on_widget(self, name: str, value: Any) -> None:
        if self._syncing or value is None:
            return
        self.update(**{name: value})

    def _sync_widgets(self) -> None:
        """Push the state back into the controls (e.g. the slider range after a plane change)."""
        if not self.widgets:
            return
        self._syncing = True
        try:
            slider = self.widgets["index"]
            slider.max = max(slider.min, self.num_slices() - 1)
            slider.value = self.index
            self.widgets["plane"].value = self.plane
            self.widgets["alpha"].value = self.alpha
            self.widgets["mode"].value = self.mode
            if isinstance(self.window, str):
                self.widgets["window"].value = self.window
        finally:
            self._syncing = False
        self._refresh_output()

    def _refresh_output(self) -> None:
        if self._output is None:
            return
        from IPython.display import display

        self._output.clear_output(wait=True)
        with self._output:
            display(figure_png(self.figure))

    def show(self, interactive: bool | None = None) -> Any:
        """Display the viewer: widgets when a front end exists (``interactive=None`` decides), else
        the static three-plane figure. Returns what was displayed (VBox or Figure)."""
        interactive = has_widget_frontend() if interactive is None else interactive
        if interactive:  # (in Colab, the lessons' install cell readies its front end for ipywidgets 8)
            from IPython.display import display

            box = self.build_widgets()
            display(box)
            return box
        fig = self.static_figure()
        try:
            from IPython.display import display

            display(figure_png(fig))
        except ImportError:
            pass
        return fig

    def static_figure(self, planes: Sequence[str] = tuple(PLANES)) -> Figure:
        """The headless twin of the widget: one row per plane at its best slice, with the current
        window, opacity and mode, as one Figure (what papermill and CI store)."""
        return show_slices(self.image, self.label, self.prediction, spacing=self.spacing, is_ct=self.is_ct,
                           label_names=self.label_names, window=self.window, alpha=self.alpha, mode=self.mode,
                           planes=planes, title=self.title)


def show_slices(
    image: np.ndarray,
    label: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    is_ct: bool = False,
    label_names: Mapping[int, str] | None = None,
    window: str | tuple[float, float] | None = None,
    alpha: float = 0.4,
    mode: str | None = None,
    planes: Sequence[str] = tuple(PLANES),
    title: str = "",
) -> Figure:
    """A static figure: one row per plane, each at the slice with the most foreground, drawn exactly
    as :class:`SliceViewer` draws it (the viewer's panels are copied, so the two cannot drift)."""
    viewer = SliceViewer(image, label, prediction, spacing=spacing, is_ct=is_ct, label_names=label_names,
                         window=window, alpha=alpha, mode=mode, title=title)
    viewer._live = False  # draw only into the grid below
    n_cols = len(viewer._panels())
    if n_cols == 1:  # one panel per plane: lay the planes out side by side
        fig = Figure(figsize=(4.0 * len(planes), 4.2), layout="constrained")
        grid = fig.subplots(1, len(planes), squeeze=False).T
    else:
        fig = Figure(figsize=(4.2 * n_cols, 3.6 * len(planes)), layout="constrained")
        grid = fig.subplots(len(planes), n_cols, squeeze=False)
    for row, plane in zip(grid, planes):
        viewer.update(plane=plane, index=viewer.best_index(plane))
        viewer.draw_on(row)
    viewer._decorate(fig)
    return fig


#: Curves with at most this many drawn points get a marker on every point; denser ones are lines
#: only, except where a curve has gaps (a value every few epochs), which always keeps its markers.
_MARKER_LIMIT = 60


def _finite_points(xs: Sequence[Any], values: Sequence[Any]) -> tuple[list[float], list[float]]:
    """The (x, y) pairs of a curve whose y is a finite number: None, NaN and inf are gaps."""
    px, py = [], []
    for xv, yv in zip(xs, values):
        try:
            y = float(yv)
        except (TypeError, ValueError):
            continue
        if math.isfinite(y):
            px.append(float(xv))
            py.append(y)
    return px, py


def plot_curves(
    history: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]],
    *,
    x: str = "epoch",
    title: str = "training curves",
    ylabel: Mapping[str, str] | None = None,
    baselines: Mapping[str, float] | None = None,
) -> Figure:
    """Plot training curves: one panel for losses (any key containing "loss") and one for the
    rest (Dice etc.). ``history`` is a dict of lists or a list of per-epoch dicts; ``baselines``
    draws labelled horizontal lines (e.g. the threshold baseline's Dice) on the metric panel.

    A value that is missing, ``None``, NaN or inf is a gap, not a point: validation that runs every
    few epochs is drawn at the epochs that have it, with a marker on each, joined by a line across
    the epochs in between. ``ylabel`` maps ``"loss"`` and ``"metric"`` to axis labels; by default
    the metric axis reads "Dice" when every metric's name mentions Dice and "value" otherwise; a
    Dice axis (by names or by label) spans 0..1. Each panel's title is ``title`` over its axis name;
    the x axis is labelled ``x`` and gets whole-number ticks.
    """
    from matplotlib.ticker import MaxNLocator

    if isinstance(history, Mapping):
        series = {k: list(v) for k, v in history.items()}
    else:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        series = {k: [row.get(k, np.nan) for row in history] for k in keys}
    xs = series.pop(x, None)
    if not series:
        raise ValueError(f"history has no series besides {x!r}: pass e.g. {{'epoch': [...], 'loss': [...]}}")
    losses = {k: v for k, v in series.items() if "loss" in k}
    metrics = {k: v for k, v in series.items() if "loss" not in k}
    all_dice = bool(metrics) and all("dice" in k.lower() for k in metrics)
    labels = {"loss": "loss", "metric": "Dice" if all_dice else "value", **dict(ylabel or {})}
    dice_axis = all_dice or "dice" in labels["metric"].lower()
    groups = [(g, n) for g, n in ((losses, "loss"), (metrics, "metric")) if g]
    fig = Figure(figsize=(5.5 * len(groups), 3.8), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (group, kind) in zip(axes, groups):
        for name, values in group.items():
            xv = list(xs) if xs is not None and len(xs) == len(values) else list(range(1, len(values) + 1))
            px, py = _finite_points(xv, values)
            if not px:  # nothing measured yet: keep the legend entry, draw no point
                ax.plot([], [], label=f"{name} (no values yet)")
                continue
            gaps = len(px) < len(values)
            marker = "o" if gaps or len(px) <= _MARKER_LIMIT else None
            ax.plot(px, py, marker=marker, markersize=4, label=name)
        if kind == "metric" and baselines:
            for name, value in baselines.items():
                ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=f"{name} ({value:.3f})")
        if kind == "metric" and dice_axis:
            ax.set_ylim(0.0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x)
        ax.set_ylabel(labels[kind])
        ax.set_title(f"{title}\n{labels[kind]}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
