"""Build the course site: every lesson executed at CI size, as static HTML pages with a contents page.

Run ``make book`` (or ``python notebooks/_book.py``); open ``build/book/index.html``. The pages are
nbconvert's JupyterLab-styled HTML with the figures embedded in the page, so the folder works from a
file system, a plain web server or an artifact download, with no build tool besides nbconvert (a
MyST/Jupyter Book 2 site would need Node.js). The contents page follows the manifest
(``notebooks/ci.yaml``) order and carries the timing table of ``docs/teaching.md`` next to the times
of this build.

A lesson is executed through :func:`mednext_lite.notebooks.run_notebook` into ``build/notebooks/``
unless the executed copy there (what ``make test`` and ``make demo`` leave) ran the current
notebook's cells with the manifest's parameters and no error; ``--rerun`` executes every lesson anew.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXECUTED = REPO / "build" / "notebooks"
BOOK = REPO / "build" / "book"
TEACHING = REPO / "docs" / "teaching.md"

_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)")

_STYLE = """
body.book-index { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
                  line-height: 1.5; color: #222; }
.book-index table { border-collapse: collapse; margin: 1rem 0; }
.book-index th, .book-index td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
.book-index td.num { text-align: right; }
nav.book-nav { font-family: system-ui, sans-serif; display: flex; gap: 1.5rem; padding: 0.6rem 1rem;
               border-bottom: 1px solid #ddd; background: #f7f7f7; position: sticky; top: 0; z-index: 10; }
"""


def title_of(nb: nbformat.NotebookNode) -> str:
    """The lesson's title: the first line of its first markdown cell, without the '#'."""
    first = next(c for c in nb.cells if c.cell_type == "markdown").source
    return first.splitlines()[0].lstrip("#").strip()


def is_current(executed_path: Path, committed: nbformat.NotebookNode, parameters: dict) -> bool:
    """Whether an executed copy ran exactly the committed cells with ``parameters`` and no error."""
    if not executed_path.is_file():
        return False
    executed = nbformat.read(executed_path, as_version=4)
    meta = executed.metadata.get("papermill", {})
    ran = [c.source for c in executed.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    used = {k: v for k, v in (meta.get("parameters") or {}).items() if k != "output_dir"}
    failed = any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
    return (ran == [c.source for c in committed.cells] and used == parameters and not failed
            and not meta.get("exception") and meta.get("duration") is not None)


def executed_lessons(rerun: bool) -> list[tuple[str, Path, bool]]:
    """(name, executed notebook, reused?) per lesson in manifest order, executing what is stale."""
    from mednext_lite.notebooks import load_manifest, run_notebook

    lessons = []
    for spec in load_manifest(HERE / "ci.yaml"):
        target = EXECUTED / f"{spec.name}.ipynb"
        reused = not rerun and is_current(target, nbformat.read(spec.path, as_version=4), spec.parameters)
        if not reused:
            print(f"executing {spec.name} ...", flush=True)
            target = run_notebook(spec, build_dir=EXECUTED).output_path
        lessons.append((spec.name, target, reused))
    return lessons


def timing_section() -> str:
    """docs/teaching.md's "Time per lesson" section as HTML (its links pointed at the repository)."""
    import mistune

    text = TEACHING.read_text()
    match = re.search(r"^## Time per lesson\n(.*?)(?=^## |\Z)", text, flags=re.DOTALL | re.MULTILINE)
    if match is None:
        raise ValueError(f"{TEACHING} has no '## Time per lesson' section: the contents page shows that table")
    body = mistune.html(match.group(1))
    return re.sub(r'href="(?!https?:|#)([^"]*)"', r'href="../../\1"', body)  # build/book -> repository root


def _nav(pages: list[tuple[str, str]], i: int) -> str:
    links = ['<a href="index.html">contents</a>']
    if i > 0:
        links.append(f'<a href="{pages[i - 1][0]}">previous: {html.escape(pages[i - 1][1])}</a>')
    if i + 1 < len(pages):
        links.append(f'<a href="{pages[i + 1][0]}">next: {html.escape(pages[i + 1][1])}</a>')
    return f'<nav class="book-nav">{"".join(links)}</nav>'


def lesson_page(nb: nbformat.NotebookNode, nav: str) -> str:
    """One executed lesson as a standalone HTML page (figures embedded) with the site's navigation."""
    from nbconvert import HTMLExporter

    for cell in nb.cells:  # the badge image lives on colab.research.google.com: keep the link, as text
        if cell.cell_type == "markdown":
            cell.source = _BADGE.sub(r"[Open in Colab](\1)", cell.source)
    exporter = HTMLExporter(template_name="lab")
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb)
    body = body.replace("</head>", f"<style>{_STYLE}</style>\n</head>", 1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)


def build(rerun: bool = False) -> Path:
    """Write build/book/ (index.html and one page per lesson) and return the index's path."""
    lessons = executed_lessons(rerun)
    notebooks = {name: nbformat.read(path, as_version=4) for name, path, _ in lessons}
    pages = [(f"{name}.html", title_of(notebooks[name])) for name, _, _ in lessons]
    BOOK.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, _, reused) in enumerate(lessons):
        (BOOK / pages[i][0]).write_text(lesson_page(notebooks[name], _nav(pages, i)))
        seconds = notebooks[name].metadata["papermill"]["duration"]
        figures = sum(1 for c in notebooks[name].cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
        rows.append(f'<tr><td><a href="{pages[i][0]}">{html.escape(pages[i][1])}</a></td>'
                    f'<td class="num">{figures}</td><td class="num">{seconds:.0f} s</td>'
                    f'<td>{"the executed copy in build/notebooks" if reused else "executed now"}</td></tr>')
        print(f"wrote {(BOOK / pages[i][0]).relative_to(REPO)} ({figures} figures)")
    index = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mednext_lite: the lessons</title>
<style>{_STYLE}</style></head>
<body class="book-index">
<h1>mednext_lite: the lessons</h1>
<p>The eight lessons of <code>notebooks/</code>, in order, each executed at CI size (<code>size="ci"</code>:
every cell and every check runs, with small models and few iterations; the class and GPU sizes are what a
course runs). Each page shows the lesson's code and outputs as they ran.</p>
<h2>Contents</h2>
<table id="contents"><thead><tr><th>lesson</th><th>figures</th><th>this build (CI size)</th><th>from</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<h2 id="timing">Time per lesson</h2>
{timing_section()}
</body></html>
"""
    (BOOK / "index.html").write_text(index)
    print(f"wrote {(BOOK / 'index.html').relative_to(REPO)}: open it in a browser")
    return BOOK / "index.html"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rerun", action="store_true", help="execute every lesson even if its executed copy is current")
    build(parser.parse_args(argv).rerun)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # the package of this checkout, also when it is not installed
    sys.exit(main(sys.argv[1:]))
