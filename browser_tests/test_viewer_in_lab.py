"""The slice-viewer lesson run in JupyterLab in headless Chromium: the widget renders, and moving its
slice slider and plane buttons redraws the image to exactly the slice asked for."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT
from labdriver import (
    changed_fraction,
    kernel_exec,
    open_and_run_all,
    png_pixels,
    wait_for,
)
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

LESSON = REPO_ROOT / "notebooks" / "02_slice_viewer.ipynb"

# Renders, in the lesson's kernel, a fresh viewer with the live viewer's settings at the plane and
# slice given, and the same one slice further: what the browser must show, and what it must not.
_EXPECTED = """
import base64 as _b64, json as _json
from mednext_lite import viz as _viz

def _png(plane, index):
    fresh = _viz.SliceViewer(image, label, prediction, spacing=spacing, is_ct=info.is_ct, label_names=info.labels,
                             title=viewer.title, plane=plane, index=index, window=viewer.window, alpha=viewer.alpha,
                             mode=viewer.mode)
    return _b64.b64encode(_viz.figure_png(fresh.figure).data).decode()

_other = {index} + 1 if {index} + 1 < viewer.num_slices({plane!r}) else {index} - 1
print(_json.dumps({{"plane": viewer.plane, "index": viewer.index, "n": viewer.num_slices(), "other": _other,
                   "png": _png({plane!r}, {index}), "other_png": _png({plane!r}, _other)}}))
"""


def _viewer_box(driver):
    """The viewer's VBox: the widget box that holds the plane buttons, the sliders and the image."""
    boxes = [b for b in driver.find_elements(By.CSS_SELECTOR, ".widget-vbox")
             if b.find_elements(By.CSS_SELECTOR, ".widget-toggle-buttons") and b.find_elements(By.TAG_NAME, "img")]
    return boxes[0] if boxes else None


def _slider(box, label: str):
    for slider in box.find_elements(By.CSS_SELECTOR, ".widget-slider"):
        if slider.find_element(By.CSS_SELECTOR, ".widget-label").text.strip() == label:
            return slider
    raise AssertionError(f"no slider labelled {label!r} in the viewer")


def _image_src(box) -> str:
    return box.find_element(By.CSS_SELECTOR, ".widget-output img").get_attribute("src")


def _check_shows(driver, box, plane: str, index: int) -> None:
    """The kernel's viewer is at (plane, index) and the browser's image is that slice's rendering,
    pixel for pixel, and not the neighbouring slice's."""
    expected = json.loads(kernel_exec(driver, _EXPECTED.format(plane=plane, index=index)))
    assert (expected["plane"], expected["index"]) == (plane, index), expected
    shown = png_pixels(_image_src(box))
    assert changed_fraction(shown, png_pixels(expected["png"])) == 0.0, f"the image is not {plane} slice {index}"
    assert changed_fraction(shown, png_pixels(expected["other_png"])) > 0.0, (
        f"{plane} slices {index} and {expected['other']} draw the same, so the check cannot tell them apart")


@pytest.mark.timeout(600)
def test_slice_viewer_lesson_in_jupyterlab(browser, lab, shots):
    import papermill as pm

    base, token, root = lab
    # The lesson at CI size, parameters injected as papermill does, executed by JupyterLab's kernel.
    pm.execute_notebook(str(LESSON), str(root / LESSON.name), prepare_only=True,
                        parameters={"size": "ci", "output_dir": str(root / "run")})
    state = open_and_run_all(browser, f"{base}/lab/tree/{LESSON.name}?token={token}", timeout=420)
    assert state["cells"] > 10 and state["pending"] == 0, state

    box = wait_for(lambda: _viewer_box(browser), 60, "the slice viewer widget to render")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    browser.save_screenshot(str(shots / "lab_02_lesson.png"))
    box.screenshot(str(shots / "viewer_0_rendered.png"))
    buttons = {b.text.strip(): b for b in box.find_elements(By.CSS_SELECTOR, ".widget-toggle-buttons button")}
    assert {"axial", "coronal", "sagittal"} <= set(buttons), sorted(buttons)
    slice_slider, opacity = _slider(box, "slice"), _slider(box, "opacity")
    assert opacity.find_element(By.CSS_SELECTOR, ".widget-readout").text.strip() == "0.70"  # the lesson's last alpha
    image = box.find_element(By.CSS_SELECTOR, ".widget-output img")
    assert image.get_property("naturalWidth") > 200 and image.get_property("naturalHeight") > 100
    plane = next(name for name, b in buttons.items() if "mod-active" in b.get_attribute("class"))
    readout = slice_slider.find_element(By.CSS_SELECTOR, ".widget-readout")
    start = int(readout.text)
    _check_shows(browser, box, plane, start)

    # Drag the slice slider's handle towards the far end: the value moves, the image is redrawn for it.
    before_src, before_shot = _image_src(box), png_pixels(image.screenshot_as_png)
    handle = slice_slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    step = -40 if start > float(handle.get_attribute("aria-valuemax")) / 2 else 40
    ActionChains(browser).click_and_hold(handle).move_by_offset(step, 0).release().perform()
    def slider_moved():  # (value,) once the readout and the image have both changed (value may be 0)
        value = int(readout.text)
        return (value,) if value != start and _image_src(box) != before_src else None

    (moved,) = wait_for(slider_moved, 60, "the slider to move and the image to change")
    image = box.find_element(By.CSS_SELECTOR, ".widget-output img")
    box.screenshot(str(shots / "viewer_1_slider_moved.png"))
    assert (moved - start) * step > 0, (start, moved, step)
    assert changed_fraction(before_shot, png_pixels(image.screenshot_as_png)) > 0.001, "the drawn pixels did not change"
    _check_shows(browser, box, plane, moved)

    # Click another plane: the slider range follows the plane and the image shows that plane.
    target = "coronal" if plane != "coronal" else "sagittal"
    max_before = float(handle.get_attribute("aria-valuemax"))
    before_src, before_shot = _image_src(box), png_pixels(image.screenshot_as_png)
    buttons[target].click()
    wait_for(lambda: "mod-active" in buttons[target].get_attribute("class") and _image_src(box) != before_src,
             60, f"the {target} plane to be drawn")
    image = box.find_element(By.CSS_SELECTOR, ".widget-output img")
    box.screenshot(str(shots / "viewer_2_plane_changed.png"))
    assert changed_fraction(before_shot, png_pixels(image.screenshot_as_png)) > 0.01
    now = int(readout.text)
    _check_shows(browser, box, target, now)
    n = json.loads(kernel_exec(browser, "import json; print(json.dumps(viewer.num_slices()))"))
    max_after = float(slice_slider.find_element(By.CSS_SELECTOR, ".noUi-handle").get_attribute("aria-valuemax"))
    assert max_after == n - 1, (max_after, n)
    print(f"{plane} -> {target}: slider range 0..{max_before:g} -> 0..{max_after:g}, slice {moved} -> {now}")
