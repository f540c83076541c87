"""The lesson notebooks: committed clean, generated from their sources, and executed through papermill
with the parameters of notebooks/ci.yaml (executed copies land in build/notebooks/)."""

from __future__ import annotations

import importlib.util
import json

import nbformat
import pytest

from mednext_lite import lesson
from mednext_lite import notebooks as nbrun

LESSONS = nbrun.lessons_dir()
NOTEBOOKS = sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))
MANIFEST = nbrun.load_manifest()


def _builder():
    spec = importlib.util.spec_from_file_location("nb_build", LESSONS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_eight_lessons_and_the_manifest_lists_each_once():
    names = [p.stem for p in NOTEBOOKS]
    assert [n[:2] for n in names] == ["00", "01", "02", "03", "04", "05", "06", "07"], names
    assert sorted(s.name for s in MANIFEST) == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    assert nbrun.notebook_problems(path) == []
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source
    assert "colab.research.google.com/github/" in first and path.name in first
    assert "What you will learn" in first
    assert any("Try this" in c.source for c in nb.cells if c.cell_type == "markdown")
    assert "find_spec(\"mednext_lite\")" in nb.cells[1].source  # the idempotent install cell
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "output_dir" in params.source and "device" in params.source and "seed" in params.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_source(path):
    built = _builder().build(LESSONS / "src" / f"{path.stem}.py")
    committed = nbformat.read(path, as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in built.cells], (
        "notebook and notebooks/src differ: run python notebooks/_build.py")


def test_lessons_are_found_beside_the_package_and_outputs_go_under_the_current_directory(tmp_path, monkeypatch):
    from pathlib import Path

    assert LESSONS == Path(nbrun.__file__).resolve().parent.parent / "notebooks"  # this checkout's own
    package = tmp_path / "site" / "mednext_lite"
    monkeypatch.setattr(nbrun, "__file__", str(package / "notebooks.py"))
    with pytest.raises(FileNotFoundError, match="no lessons found.*holds ci.yaml"):
        nbrun.lessons_dir()
    (tmp_path / "site" / "notebooks").mkdir(parents=True)
    (tmp_path / "site" / "notebooks" / "ci.yaml").write_text("notebooks: []\n")
    assert nbrun.lessons_dir() == tmp_path / "site" / "notebooks"
    (package / "lessons").mkdir(parents=True)
    (package / "lessons" / "ci.yaml").write_text("notebooks: []\n")
    assert nbrun.lessons_dir() == package / "lessons"  # the installed wheel's copy comes first
    monkeypatch.chdir(tmp_path)
    assert nbrun.default_build_dir() == Path.cwd() / "build" / "notebooks"
    assert Path.cwd().samefile(tmp_path)


def test_problems_are_found(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.outputs = [nbformat.v4.new_output("stream", text="1")]
    nb.cells = [nbformat.v4.new_markdown_cell("no title"), cell]
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    problems = nbrun.notebook_problems(path)
    assert len(problems) == 3
    assert any("stores outputs" in p for p in problems) and any("'parameters'" in p for p in problems)


def test_collect_csv_and_plot(tmp_path):
    for i in range(2):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "results.csv").write_text(f"variant,kernel,dice\nS,{3 + 2 * i},{0.5 + i / 10}\n")
    rows = lesson.collect_csv(str(tmp_path / "*" / "results.csv"))
    assert [(r["kernel"], r["dice"]) for r in rows] == [(3, 0.5), (5, 0.6)]
    fig = lesson.plot_sweep(rows, "kernel", "dice", group="variant")
    assert list(fig.axes[0].lines[0].get_xdata()) == [3, 5]
    with pytest.raises(ValueError, match="no CSV files"):
        lesson.collect_csv(str(tmp_path / "nothing*.csv"))


@pytest.mark.notebooks
def test_failing_cell_is_quoted(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("output_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params,
                nbformat.v4.new_code_cell("claim = 2 + 2\nassert claim == 5, 'arithmetic is broken'")]
    path = tmp_path / "99_fail.ipynb"
    nbformat.write(nb, path)
    spec = nbrun.NotebookSpec("99_fail", path, {}, 60)
    with pytest.raises(nbrun.NotebookError, match="(?s)arithmetic is broken.*assert claim == 5"):
        nbrun.run_notebook(spec, build_dir=tmp_path / "build")
    assert (tmp_path / "build" / "99_fail.ipynb").is_file()


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name, marks=pytest.mark.timeout(s.timeout_s + 60))
                                  for s in MANIFEST])
def test_notebook_executes(spec):
    run = nbrun.run_notebook(spec)
    assert run.output_path.is_file()
    executed = nbformat.read(run.output_path, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert run.summary, f"{spec.name} wrote no summary.json"
    from mednext_lite.demo import headline

    headline(spec.name, run.summary)  # make demo reads these keys: a renamed one must fail here, not there
    (run.output_dir / "seconds.json").write_text(json.dumps({"seconds": run.seconds}))


@pytest.mark.parametrize("spec", MANIFEST, ids=lambda s: s.name)
def test_manifest_parameters_are_declared(spec):
    """papermill only warns about an undeclared parameter; CI would then silently run full size."""
    import papermill as pm

    declared = set(pm.inspect_notebook(str(spec.path)))
    assert set(spec.parameters) <= declared, sorted(set(spec.parameters) - declared)
    assert {"output_dir", "seed", "device"} <= declared


@pytest.mark.notebooks
def test_demo_runs_selected_notebooks_and_reports(tmp_path, capsys):
    from mednext_lite import demo

    code = demo.main(["--only", "07", "--build-dir", str(tmp_path / "notebooks"), "--figures", str(tmp_path / "f")])
    out = capsys.readouterr().out
    assert code == 0
    assert "intensity-threshold baseline" in out and "07_exercises" in out and "ok in" in out
    assert (tmp_path / "notebooks" / "07_exercises.ipynb").is_file()
    assert (tmp_path / "data" / "Task90_SyntheticMRI" / "dataset.json").is_file()


def test_sized_takes_the_row_and_lets_explicit_values_win():
    from mednext_lite.lesson import sized

    table = {"ci": {"epochs": 2, "width": 8}, "class": {"epochs": 20, "width": 16}, "gpu": {"epochs": 200, "width": 32}}
    assert sized("class", table) == {"epochs": 20, "width": 16}
    assert sized("ci", table, epochs=5, width=None) == {"epochs": 5, "width": 8}
    with pytest.raises(ValueError, match="'huge' is not a lesson size"):
        sized("huge", table)
    with pytest.raises(ValueError, match=r"\['epoch'\] are not sized settings"):
        sized("ci", table, epoch=3)
    with pytest.raises(ValueError, match="size rows differ"):
        sized("ci", {**table, "gpu": {"epochs": 1}})


def test_lesson_seeds_and_picks_the_device_as_training_does(tmp_path, capsys):
    import random

    import numpy as np
    import torch

    from mednext_lite.runtime import seed_everything

    big = 2**32 + 5  # NumPy alone would refuse this seed
    run = lesson.Lesson(tmp_path / "out", seed=big, device="cpu")
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(big)
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item())
    assert run.device == torch.device("cpu") and run.seed == big and (tmp_path / "out").is_dir()
    assert "device: cpu (CPU)" in capsys.readouterr().out
    run.record(dice=0.5)
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == {"dice": 0.5}
    with pytest.raises(ValueError, match="'gpu0' is not a device name"):
        lesson.Lesson(tmp_path / "bad", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            lesson.Lesson(tmp_path / "bad", device="cuda:7")
