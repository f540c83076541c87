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
    """The teachers' notebook: the install cell after the title, then the source's cells."""
    lesson = _lesson_builder()
    cells = lesson.parse(source.read_text())
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    kind, title = cells[0]
    if kind != "markdown" or not title.startswith("# "):
        raise ValueError(f"{source}: the first cell must be the markdown title ('# ...')")
    nb.cells.append(nbformat.v4.new_markdown_cell(title))
    nb.cells.append(nbformat.v4.new_code_cell(lesson.INSTALL.strip()))
    for kind, text in cells[1:]:
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(text))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"07s-{i:02d}"
    return nb


def main() -> int:
    nb = build()
    nbformat.validate(nb)
    nbformat.write(nb, TARGET)
    print(f"wrote {TARGET.relative_to(HERE.parent.parent)} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
