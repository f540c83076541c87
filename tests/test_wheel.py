"""The built wheel carries the lessons: installed into a fresh venv with no checkout on its path, the
lesson runner lists all eight, finds their notebooks and CI parameters, and runs one without writing
into the installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from mednext_lite import notebooks as nbrun

REPO = Path(__file__).resolve().parent.parent
#: What the wheel is built from; the copy keeps setuptools' build/ folder (whose stale files would go
#: into the wheel) and a Jupyter user's run outputs out of the build and out of the checkout.
SOURCES = ("pyproject.toml", "README.md", "mednext_lite", "notebooks")
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")


def _skip(folder: str, names: list[str]) -> set[str]:
    """Bytecode and checkpoints anywhere; in notebooks/ also what a lesson run in Jupyter leaves."""
    local = {"runs", "build", "data"} if Path(folder) == REPO / "notebooks" else set()
    return set(_JUNK(folder, names)) | (local & set(names))

#: Run by the venv's interpreter from a folder outside the checkout.
CHILD = """
import json, sys
import mednext_lite
from mednext_lite import notebooks as nb

out = {"file": mednext_lite.__file__, "lessons": str(nb.lessons_dir()), "build": str(nb.default_build_dir()),
       "specs": [[s.name, str(s.path), s.parameters, s.timeout_s] for s in nb.load_manifest()]}
if sys.argv[1:] == ["run"]:
    run = nb.run_notebook("07_exercises")
    out["run"] = {"notebook": str(run.output_path), "output_dir": str(run.output_dir), "summary": run.summary}
print(json.dumps(out))
"""


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, check=False, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=_skip)
        else:
            shutil.copy2(REPO / name, src / name)
    # setuptools comes with the dev extra, so the build needs no network
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(root / "dist")])
    (wheel,) = (root / "dist").glob("mednext_lite-*.whl")
    venv = root / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The venv sees this interpreter's dependencies through a .pth line; the .pth files in that folder
    # (the editable install's finder among them) are not run, so the checkout stays out of reach.
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(outer)))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)])
    # the kernel papermill starts must be the venv's interpreter too, not a "python3" found elsewhere
    kernel = root / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (wheel)", "language": "python"}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(JUPYTER_PATH=str(root / "jupyter"), PYTHONDONTWRITEBYTECODE="1")
    work = root / "work"
    work.mkdir()
    return SimpleNamespace(root=root, wheel=wheel, python=python, site=site, env=env, work=work)


def _child(installed, *args) -> dict:
    done = _run([str(installed.python), "-c", CHILD, *args], cwd=installed.work, env=installed.env, timeout=240)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_the_package_list_names_every_subpackage():
    tomllib = pytest.importorskip("tomllib")
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mednext_lite").rglob("__init__.py"))
    missing = sorted(set(on_disk) - set(listed))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml, or the wheel lacks them"
    assert sorted(n for n in listed if not n.startswith("mednext_lite.lessons")) == on_disk


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_the_lessons(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "mednext_lite").rglob("*.py")}
    assert {n for n in names if n.endswith(".py") and not n.startswith("mednext_lite/lessons/")} == modules
    lessons = {n.removeprefix("mednext_lite/lessons/") for n in names if n.startswith("mednext_lite/lessons/")}
    checkout = REPO / "notebooks"
    needed = {"ci.yaml", "_build.py"}
    needed |= {p.name for p in checkout.glob("[0-9][0-9]_*.ipynb")} | {f"src/{p.name}" for p in checkout.glob("src/*.py")}
    needed |= {f"solutions/{p.name}" for p in checkout.glob("solutions/*") if p.suffix in (".py", ".ipynb", ".md")}
    assert len(needed) > 20 and needed <= lessons, sorted(needed - lessons)
    junk = [n for n in lessons if {"__pycache__", ".ipynb_checkpoints", "runs", "build"} & set(n.split("/"))]
    assert not junk, junk


@pytest.mark.slow
def test_the_installed_runner_finds_the_lessons_outside_any_checkout(installed):
    found = _child(installed)
    package = Path(found["file"]).parent
    assert package == installed.site / "mednext_lite", found["file"]
    assert Path(found["lessons"]) == package / "lessons"
    assert Path(found["build"]) == installed.work / "build" / "notebooks"
    checkout = nbrun.load_manifest()
    assert [s[0] for s in found["specs"]] == [s.name for s in checkout]
    assert [s[0][:2] for s in found["specs"]] == ["00", "01", "02", "03", "04", "05", "06", "07"]
    for (name, path, parameters, timeout_s), spec in zip(found["specs"], checkout):
        assert Path(path) == package / "lessons" / f"{name}.ipynb" and Path(path).is_file()
        assert (package / "lessons" / "src" / f"{name}.py").is_file()
        assert (parameters, timeout_s) == (spec.parameters, spec.timeout_s)


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_lesson_runs_from_the_wheel_and_writes_only_under_the_current_directory(installed):
    package = installed.site / "mednext_lite"
    before = _tree(package)
    found = _child(installed, "run")
    build = installed.work / "build" / "notebooks"
    assert Path(found["run"]["notebook"]) == build / "07_exercises.ipynb" and (build / "07_exercises.ipynb").is_file()
    assert Path(found["run"]["output_dir"]) == build / "07_exercises"
    summary = found["run"]["summary"]
    assert summary["solutions"] is True and summary["score"] == summary["total"] > 0  # solutions/ found in the wheel
    assert _tree(package) == before, "running a lesson wrote into the installed package"
