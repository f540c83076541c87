"""Write ``07_exercises_solutions.ipynb`` (without outputs) from ``07_exercises_solutions.py``.

The .py is the one source: the exercise sheet loads it with ``runpy`` when it is given the
``solutions`` parameter, and this script renders it as a notebook for teachers (same cell markers as
the lessons, see ``notebooks/_build.py``). Run ``python notebooks/solutions/_build.py`` after editing
the .py and commit both.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "07_exercises_solutions.py"
TARGET = HERE / "07_exercises_solutions.ipynb"


def _lesson_builder():
    spec = importlib.util.spec_from_file_location("nb_build", HERE.parent / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(source: Path = SOURCE) -> nbformat.NotebookNode:
    """The teachers' notebook: built like a lesson, without the Colab badge (it is not handed out)."""
    nb = _lesson_builder().build(source, badge=False, id_prefix="07s")
    nb.metadata.pop("colab", None)
    return nb


def main() -> int:
    nb = build()
    nbformat.validate(nb)
    nbformat.write(nb, TARGET)
    print(f"wrote {TARGET.relative_to(HERE.parent.parent)} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
