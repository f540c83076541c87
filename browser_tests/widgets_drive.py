"""Run by test_ipywidgets_lines.py inside a throwaway venv that holds one ipywidgets line: drive the
viewer through its widgets' Python API, then run the lessons' install cell as Colab and as elsewhere.

Usage: ``python widgets_drive.py <ipywidgets version prefix> <install cell file>``. Prints one JSON
line of what it saw; a failed check raises (non-zero exit).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import ipywidgets
import numpy as np

from mednext_lite import viz

prefix, cell_file = sys.argv[1], sys.argv[2]
assert ipywidgets.__version__.startswith(prefix), (ipywidgets.__version__, prefix, ipywidgets.__file__)


def drawn(viewer: viz.SliceViewer) -> np.ndarray:
    return np.asarray(viewer.axes[0].images[0].get_array())


image = np.random.default_rng(0).normal(size=(12, 10, 8)).astype(np.float32)
label = np.zeros(image.shape, dtype=np.int64)
label[3:8, 2:6, 2:6] = 1
label[6:10, 5:9, 4:7] = 2
viewer = viz.SliceViewer(image, label, np.roll(label, 1, axis=0), spacing=(1.0, 1.5, 2.0))
box = viewer.build_widgets()
w = viewer.widgets
assert isinstance(box, ipywidgets.VBox) and isinstance(w["plane"], ipywidgets.ToggleButtons)
assert list(w["plane"].options) == ["axial", "coronal", "sagittal"] and w["index"].max == 7
assert viewer.mode == "side by side" and w["mode"].value == "side by side"

w["index"].value = 2  # the slider drives the drawing
assert viewer.index == 2 and np.array_equal(drawn(viewer), viz.extract_slice(image, "axial", 2))
w["plane"].value = "sagittal"  # a plane change re-ranges the slider and keeps the relative position
assert viewer.plane == "sagittal" and w["index"].max == 11 and w["index"].value == viewer.index == 3
w["index"].value = 11
assert np.array_equal(drawn(viewer), viz.extract_slice(image, "sagittal", 11))
w["alpha"].value = 0.9
assert viewer.alpha == 0.9 and viewer.axes[1].images[1].get_alpha() == 0.9
w["window"].value = "5-95 %"
assert viewer.window == "5-95 %" and viewer.axes[0].images[0].get_clim() == viz.window_limits(image, "5-95 %")
w["index"].value = 6  # through both labels
w["mode"].value = "contours"
assert len(viewer.axes) == 1 and len(viewer.axes[0].collections) >= 2
viewer.update(plane="coronal", index=4)  # and the Python side drives the controls back
assert (w["plane"].value, w["index"].max, w["index"].value) == ("coronal", 9, 4)
shown = viewer.show(interactive=True)
assert shown is box or isinstance(shown, ipywidgets.VBox)


def run_install_cell(in_colab: bool) -> tuple[list[str], list[str]]:
    """Run the install cell with mednext_lite 'missing', pip recorded instead of run, and (in_colab)
    a stand-in google.colab; returns (pip command, Colab calls made)."""
    calls: list[str] = []
    commands: list[list[str]] = []
    saved = {k: sys.modules.get(k) for k in ("google", "google.colab")}
    real_find_spec, real_run = importlib.util.find_spec, subprocess.run
    if in_colab:
        colab = types.ModuleType("google.colab")
        colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append("custom widget manager"))
        sys.modules["google.colab"] = colab
        sys.modules.setdefault("google", types.ModuleType("google"))
    importlib.util.find_spec = lambda name, *a: None if name == "mednext_lite" else real_find_spec(name, *a)
    subprocess.run = lambda cmd, **kw: commands.append(list(cmd))
    try:
        # running the lessons' own install cell is what is being checked
        exec(compile(Path(cell_file).read_text(), "install cell", "exec"), {"__name__": "__main__"})  # noqa: S102
    finally:
        importlib.util.find_spec, subprocess.run = real_find_spec, real_run
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module
    assert len(commands) == 1, commands
    return commands[0], calls


colab_pip, colab_calls = run_install_cell(True)
local_pip, local_calls = run_install_cell(False)
major = int(ipywidgets.__version__.split(".")[0])
assert not any("ipywidgets" in a or "upgrade" in a.lower() for a in colab_pip), colab_pip
assert any(a.startswith("mednext_lite[colab] @ git+https://github.com/") for a in colab_pip), colab_pip
assert colab_calls == (["custom widget manager"] if major >= 8 else []), colab_calls
assert any(a.startswith("mednext_lite[notebooks] @ git+") for a in local_pip) and local_calls == [], local_pip
print(json.dumps({"ipywidgets": ipywidgets.__version__, "from": ipywidgets.__file__, "colab_pip": colab_pip,
                  "colab_calls": colab_calls}))
