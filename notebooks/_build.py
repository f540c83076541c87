"""Write the lesson notebooks (.ipynb, without outputs) from the Python source in this folder.

Run ``python notebooks/_build.py`` after editing a lesson file ``notebooks/src/NN_name.py`` and
commit both. Each source file is a sequence of cells separated by lines ``# %% [markdown]``,
``# %%`` (code) or ``# %% [parameters]`` (the papermill parameters cell); markdown cells are
written as ``#``-prefixed comment lines. The common opening (title, what you will learn, the Colab
badge) is generated from the first markdown cell so every lesson looks the same.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
COLAB = "https://colab.research.google.com/github/mednext-lite/mednext_lite/blob/main/notebooks/{name}.ipynb"
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"

INSTALL = '''\
# Install mednext_lite when it is missing (Colab); where it is installed already this does nothing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("mednext_lite") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "mednext_lite[notebooks] @ git+https://github.com/mednext-lite/mednext_lite.git"], check=True)
'''

_MARK = re.compile(r"^# %%(?: \[(markdown|parameters)\])?\s*$")


def parse(source: str) -> list[tuple[str, str]]:
    """Split a lesson source into (kind, text) cells; kind is markdown, code or parameters."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        match = _MARK.match(line)
        if match:
            cells.append((match.group(1) or "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [re.sub(r"^# ?", "", ln) for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def build(src: Path, *, badge: bool = True, id_prefix: str | None = None) -> nbformat.NotebookNode:
    """The notebook for one lesson source file (``badge=False``: no Colab badge, for the teachers'
    solutions, which are not handed out); cell ids are ``<id_prefix>-NN`` (default: the number)."""
    name = src.stem
    cells = parse(src.read_text())
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    kind, title = cells[0]
    if kind != "markdown" or not title.startswith("# "):
        raise ValueError(f"{src}: the first cell must be the markdown title ('# ...')")
    first_line, _, rest = title.partition("\n")
    header = f"{first_line}\n\n{BADGE.format(url=COLAB.format(name=name))}\n\n{rest.strip()}" if badge else title
    nb.cells.append(nbformat.v4.new_markdown_cell(header))
    nb.cells.append(nbformat.v4.new_code_cell(INSTALL.strip()))
    for kind, text in cells[1:]:
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cell = nbformat.v4.new_code_cell(text)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs of regenerated notebooks small
        cell["id"] = f"{id_prefix or name[:2]}-{i:02d}"
    return nb


def main(argv: list[str]) -> int:
    sources = sorted((HERE / "src").glob("[0-9][0-9]_*.py"))
    wanted = set(argv)
    for src in sources:
        if wanted and src.stem not in wanted and src.stem[:2] not in wanted:
            continue
        nb = build(src)
        nbformat.validate(nb)
        target = HERE / f"{src.stem}.ipynb"
        nbformat.write(nb, target)
        print(f"wrote {target.relative_to(HERE.parent)} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
