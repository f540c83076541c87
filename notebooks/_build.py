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


def repository_url(pyproject: Path = HERE.parent / "pyproject.toml") -> str:
    """The repository's GitHub address, from ``[project.urls] Repository`` in pyproject.toml: the one
    setting that the Colab badges and the install cell's ``git+`` address are made from."""
    text = pyproject.read_text()
    try:
        import tomllib

        url = tomllib.loads(text).get("project", {}).get("urls", {}).get("Repository")
    except ImportError:  # Python 3.10 has no tomllib; the line itself is plain enough
        found = re.search(r'^Repository\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
        url = found.group(1) if found else None
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)/?", url or "")
    if match is None:
        raise ValueError(f"{pyproject}: [project.urls] Repository = {url!r} must be a GitHub address "
                         "'https://github.com/<owner>/<repo>' (the Colab badges open the notebooks from there)")
    return f"https://github.com/{match.group(1)}/{match.group(2)}"


REPOSITORY = repository_url()
COLAB = ("https://colab.research.google.com/github/" + REPOSITORY.removeprefix("https://github.com/")
         + "/blob/main/notebooks/{name}.ipynb")
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"

# Colab ships its own ipywidgets (the 7.7 line for years), wired to its own front end: there the cell
# installs the `colab` extra, which leaves ipywidgets alone, and only in Colab, only for ipywidgets 8
# (installed there by hand), does it switch on the widget manager Colab needs to render that line.
INSTALL = f'''\
# Install mednext_lite when it is missing (Colab); where it is installed already this does nothing.
import importlib.util
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if importlib.util.find_spec("mednext_lite") is None:
    extra = "colab" if IN_COLAB else "notebooks"  # colab: keeps Colab's own ipywidgets and front end
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"mednext_lite[{{extra}}] @ git+{REPOSITORY}.git"], check=True)
if IN_COLAB:
    import ipywidgets

    if int(ipywidgets.__version__.split(".")[0]) >= 8:  # Colab renders ipywidgets 8 only through this manager
        from google.colab import output

        output.enable_custom_widget_manager()
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
