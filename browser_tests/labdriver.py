"""Driving a notebook in JupyterLab from Selenium: open, run all cells, talk to its kernel, read images."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# The notebook panel that is open, its kernel, and whether every code cell has run (with errors listed).
_STATE_JS = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
if (!kernel || !panel.content || !panel.content.widgets) return null;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
let pending = 0;
for (const c of cells) {
  if (c.model.executionCount === null) pending += 1;
  for (const o of c.model.outputs.toJSON()) if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
}
return {status: kernel.status, cells: cells.length, pending: pending, errors: errors};
"""

# Run code in the notebook's kernel (not as a cell) and return what it printed.
_EXECUTE_JS = """
const done = arguments[arguments.length - 1];
const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
const future = kernel.requestExecute({code: arguments[0], store_history: false});
let out = '', err = null;
future.onIOPub = msg => {
  if (msg.header.msg_type === 'stream') out += msg.content.text;
  if (msg.header.msg_type === 'error') err = msg.content.ename + ': ' + msg.content.evalue;
};
future.done.then(() => done({out: out, err: err}), e => done({out: out, err: String(e)}));
"""


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last state: {last!r})")


def lab_settings(settings_dir: Path) -> None:
    """User settings of the test's JupyterLab: keep every cell in the DOM (the default renders only
    the cells in view) and ask no question about news (a toast over the notebook)."""
    for plugin, values in (("notebook-extension/tracker", {"windowingMode": "none"}),
                           ("apputils-extension/notification", {"fetchNews": "false"})):
        path = settings_dir / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def open_and_run_all(driver, url: str, timeout: float) -> dict:
    """Open a notebook URL, wait for its kernel, run every cell and wait until all have run."""
    driver.get(url)
    wait_for(lambda: (driver.execute_script(_STATE_JS) or {}).get("status") == "idle", 120,
             "the notebook's kernel to be idle")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")

    def finished():
        state = driver.execute_script(_STATE_JS)
        if state and state["errors"]:
            raise AssertionError(f"a cell failed in JupyterLab: {state['errors']}")
        return state if state and state["pending"] == 0 and state["status"] == "idle" else None

    return wait_for(finished, timeout, "all cells to run")


def kernel_exec(driver, code: str) -> str:
    """Run ``code`` in the open notebook's kernel and return its printed output (errors raise)."""
    result = driver.execute_async_script(_EXECUTE_JS, code)
    if result["err"]:
        raise AssertionError(f"kernel code failed: {result['err']}\n{code}")
    return result["out"]


def png_pixels(data: bytes | str) -> np.ndarray:
    """RGB pixels of a PNG given as bytes, base64 text or a ``data:image/png;base64,`` URI."""
    from PIL import Image

    if isinstance(data, str):
        data = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels that differ between two RGB images (1.0 when their sizes differ)."""
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(axis=-1) > 8).mean())
