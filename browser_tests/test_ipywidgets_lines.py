"""The viewer's Python side and the lessons' install cell on the two ipywidgets lines: 7.7 (the one
Colab ships) and 8 (what JupyterLab 4 uses), each in a throwaway venv that gets that ipywidgets from
PyPI and sees everything else through a .pth naming this interpreter's site-packages."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
from conftest import REPO_ROOT

# (what pip installs with --no-deps, the version prefix expected): 7.7.1 is Colab's pin; 8.0.0 is
# the oldest 8; the newest 8 is what a fresh `pip install` gets.
LINES = [
    (["ipywidgets==7.7.1", "ipython_genutils"], "7.7.1"),
    (["ipywidgets==8.0.0"], "8.0.0"),
    (["ipywidgets>=8,<9"], "8."),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("packages", "prefix"), LINES, ids=[p for _, p in LINES])
def test_viewer_and_install_cell_on_an_ipywidgets_line(tmp_path, packages, prefix):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    outer = dict.fromkeys([str(REPO_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(purelib) / "outer.pth").write_text("\n".join(outer) + "\n")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--ignore-installed",
                          "--disable-pip-version-check", *packages], capture_output=True, text=True, check=False)
    if pip.returncode != 0:
        pytest.fail(f"pip could not install {packages} from PyPI into {venv} (this test needs PyPI):\n"
                    f"{pip.stdout[-2000:]}{pip.stderr[-2000:]}", pytrace=False)
    cell = tmp_path / "install_cell.py"
    cell.write_text(nbformat.read(REPO_ROOT / "notebooks" / "02_slice_viewer.ipynb", as_version=4).cells[1].source)
    run = subprocess.run([str(python), str(REPO_ROOT / "browser_tests" / "widgets_drive.py"), prefix, str(cell)],
                         capture_output=True, text=True, timeout=240, check=False, env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert run.returncode == 0, f"on ipywidgets {prefix}:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["from"].startswith(str(venv)), seen  # the venv's ipywidgets, not this interpreter's
    print(seen)
