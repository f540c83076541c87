"""Run the lesson notebooks through papermill, as CI, the tests and ``make demo`` do.

``notebooks/ci.yaml`` is the manifest: for each notebook the papermill parameters CI injects
(tiny models, few iterations) and a time limit. The committed notebooks keep the real teaching
values in their ``parameters`` cell; the manifest only overrides them, so there is no regex
rewriting of source and the executed copy records exactly what ran. Every notebook writes a
``summary.json`` into its ``output_dir`` parameter; :func:`run_notebook` returns it.

The lessons are found by :func:`lessons_dir`, in a source checkout and in an installed wheel
alike; executed copies go to :func:`default_build_dir` (under the current directory) or a folder
the caller names, never into the package.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "NotebookError",
    "NotebookRun",
    "NotebookSpec",
    "default_build_dir",
    "lessons_dir",
    "load_manifest",
    "notebook_problems",
    "run_notebook",
]


def lessons_dir() -> Path:
    """The folder holding the lessons: ``ci.yaml``, the ``NN_*.ipynb``, ``src/`` and ``solutions/``.

    An installed wheel carries them as ``mednext_lite/lessons`` (pyproject.toml maps the
    repository's ``notebooks/`` there); a source checkout, installed editable or put on
    ``PYTHONPATH``, keeps them in ``notebooks/`` beside the package. Both are looked up next to the
    package that was imported, not through the import system: in an editable install
    ``import mednext_lite.lessons`` would resolve to the checkout that was installed, which need
    not be the one imported.
    """
    package = Path(__file__).resolve().parent
    candidates = (package / "lessons", package.parent / "notebooks")
    for folder in candidates:
        if (folder / "ci.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"no lessons found: neither {candidates[0]} (installed package) nor {candidates[1]} (source "
        "checkout) holds ci.yaml; reinstall mednext_lite from a wheel or a checkout that has notebooks/")


def default_build_dir() -> Path:
    """Where executed notebooks go unless a folder is given: ``./build/notebooks`` of the current
    directory (a writable place of the caller's choosing, not the installed package)."""
    return Path.cwd() / "build" / "notebooks"


@dataclass(frozen=True)
class NotebookSpec:
    """One manifest entry: which notebook, the parameters CI injects, and its time limit."""

    name: str
    path: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_s: int = 300


@dataclass
class NotebookRun:
    """An executed notebook: where the copy is, how long it took, and its ``summary.json``."""

    spec: NotebookSpec
    output_path: Path
    output_dir: Path
    seconds: float
    summary: dict[str, Any]


class NotebookError(RuntimeError):
    """A notebook cell failed; the message shows the cell's source and the error it raised."""


def load_manifest(path: str | os.PathLike | None = None) -> list[NotebookSpec]:
    """Read the lessons' ``ci.yaml`` (or ``path``) into specs, in the manifest's order."""
    import yaml

    path = Path(path) if path is not None else lessons_dir() / "ci.yaml"
    data = yaml.safe_load(path.read_text())
    entries = data.get("notebooks") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TypeError(f"{path}: expected a top-level 'notebooks:' list of entries with name/parameters/timeout_s")
    specs = []
    for entry in entries:
        name = entry["name"]
        nb_path = (path.parent / f"{name}.ipynb").resolve()
        if not nb_path.is_file():
            raise ValueError(f"{path}: notebook {name!r} has no file {nb_path}; fix the name or add the notebook")
        specs.append(NotebookSpec(name, nb_path, dict(entry.get("parameters") or {}), int(entry.get("timeout_s", 300))))
    return specs


def _spec(spec_or_name: NotebookSpec | str, manifest: str | os.PathLike | None) -> NotebookSpec:
    if isinstance(spec_or_name, NotebookSpec):
        return spec_or_name
    specs = {s.name: s for s in load_manifest(manifest)}
    if spec_or_name not in specs:
        raise ValueError(f"notebook {spec_or_name!r} is not in the manifest: choose one of {sorted(specs)}")
    return specs[spec_or_name]


def run_notebook(
    spec_or_name: NotebookSpec | str,
    *,
    build_dir: str | os.PathLike | None = None,
    parameters: Mapping[str, Any] | None = None,
    manifest: str | os.PathLike | None = None,
    kernel_name: str = "python3",
) -> NotebookRun:
    """Execute one notebook with its manifest parameters (plus ``parameters``) through papermill.

    The executed copy goes to ``build_dir/<name>.ipynb`` (default :func:`default_build_dir`) and the
    notebook's own outputs (figures, CSV, ``summary.json``) to ``build_dir/<name>/``. Widgets are
    switched to static figures (no front end exists here). A failing cell raises
    :class:`NotebookError` quoting the cell; the executed copy with the traceback is kept.
    """
    import papermill as pm

    spec = _spec(spec_or_name, manifest)
    build = Path(build_dir) if build_dir is not None else default_build_dir()
    build.mkdir(parents=True, exist_ok=True)
    output_path = build / f"{spec.name}.ipynb"
    output_dir = (build / spec.name).resolve()
    params = {**spec.parameters, "output_dir": str(output_dir), **dict(parameters or {})}
    # papermill only warns about a parameter the notebook does not declare; here it is an error,
    # since a silently ignored override would make CI run the full-size teaching values.
    declared = set(pm.inspect_notebook(str(spec.path)))
    unknown = sorted(set(params) - declared)
    if unknown:
        raise ValueError(f"{spec.name}: parameters {unknown} are not declared in its parameters cell "
                         f"(declared: {sorted(declared)}); fix notebooks/ci.yaml or the notebook")
    if output_dir.exists():  # a clean slate: the executed copy must show this run only
        import shutil

        shutil.rmtree(output_dir)
    # The kernel inherits this process's environment: force static figures and a headless backend.
    env_changes = {"MEDNEXT_LITE_HEADLESS": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
    # One intra-op thread unless the caller chose otherwise: on a shared 2-core CI runner, OpenMP
    # threads would wait on each other's busy core.
    env_changes["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    saved = {k: os.environ.get(k) for k in env_changes}
    os.environ.update(env_changes)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(spec.path), str(output_path), parameters=params, kernel_name=kernel_name,
            cwd=str(spec.path.parent), progress_bar=False, execution_timeout=spec.timeout_s,
        )
    except pm.PapermillExecutionError as err:
        import nbformat

        # papermill inserts a banner cell above the failure, so find the cell by its error output.
        nb = nbformat.read(output_path, as_version=4)
        failed = [c for c in nb.cells if c.cell_type == "code"
                  and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
        source = failed[0].source if failed else "?"
        raise NotebookError(
            f"{spec.name}: cell [{err.exec_count}] failed with {err.ename}: {err.evalue}\n"
            f"--- cell source ---\n{source}\n--- executed copy: {output_path}"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return NotebookRun(spec, output_path, output_dir, seconds, summary)


def notebook_problems(path: str | os.PathLike) -> list[str]:
    """What is wrong with a committed notebook: stored outputs or execution counts, no cell tagged
    ``parameters``, or a first cell that is not the title markdown. Empty when clean."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            problems.append(f"{path.name}: cell {i} stores outputs; regenerate with notebooks/_build.py "
                            "or clear outputs before committing")
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{path.name}: {len(tagged)} cells tagged 'parameters', expected exactly one")
    if not nb.cells or nb.cells[0].cell_type != "markdown" or not nb.cells[0].source.startswith("# "):
        problems.append(f"{path.name}: the first cell must be the markdown title ('# ...')")
    return problems
