"""The course site of ``make book`` in headless Chromium: the contents page lists the lessons in order
with the timing table, and a lesson page's figures all load."""

from __future__ import annotations

import pytest
from conftest import BOOK, REPO_ROOT
from labdriver import wait_for
from selenium.webdriver.common.by import By

LESSONS = sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# Every <img> of the page: whether it finished loading with real pixels, and where it came from.
_IMAGES_JS = """
return Array.from(document.images).map(im => ({
  ok: im.complete && im.naturalWidth > 0 && im.naturalHeight > 0,
  w: im.naturalWidth, inline: im.src.startsWith('data:image/png'), src: im.src.slice(0, 60)}));
"""


def _open(driver, page: str) -> None:
    driver.get((BOOK / page).as_uri())
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", 60, f"{page} to load")


@pytest.fixture(scope="module")
def book():
    if not (BOOK / "index.html").is_file():
        pytest.fail(f"{BOOK / 'index.html'} is missing: build the site with `make book` first", pytrace=False)
    return BOOK


def test_contents_page_follows_the_lessons_and_has_the_timing_table(browser, book, shots):
    _open(browser, "index.html")
    browser.save_screenshot(str(shots / "book_index.png"))
    links = browser.find_elements(By.CSS_SELECTOR, "#contents tbody a")
    assert [a.get_attribute("href").rsplit("/", 1)[-1] for a in links] == [f"{n}.html" for n in LESSONS]
    assert links[2].text.startswith("02 ")
    timing = [t for t in browser.find_elements(By.TAG_NAME, "table") if "class size" in t.text]
    assert timing, "the contents page has no timing table"
    rows = timing[0].find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == len(LESSONS) + 1 and rows[-1].text.startswith("all eight"), [r.text for r in rows]
    for row in browser.find_elements(By.CSS_SELECTOR, "#contents tbody tr"):
        seconds = row.find_elements(By.TAG_NAME, "td")[2].text
        assert seconds.endswith(" s") and float(seconds[:-2]) > 0, row.text


def test_a_lesson_page_loads_with_all_its_figures(browser, book, shots):
    _open(browser, "index.html")
    row = browser.find_elements(By.CSS_SELECTOR, "#contents tbody tr")[2]
    expected = int(row.find_elements(By.TAG_NAME, "td")[1].text)
    row.find_element(By.TAG_NAME, "a").click()
    wait_for(lambda: browser.current_url.endswith("02_slice_viewer.html")
             and browser.execute_script("return document.readyState") == "complete", 60, "lesson 02 to open")
    def all_loaded():
        images = browser.execute_script(_IMAGES_JS)
        return images if all(i["ok"] for i in images) else None

    images = wait_for(all_loaded, 30, "every image of lesson 02 to load")
    figures = [i for i in images if i["inline"]]
    assert expected >= 5 and len(figures) == expected, (expected, images)
    assert min(i["w"] for i in figures) > 200
    browser.save_screenshot(str(shots / "book_02_top.png"))
    first = browser.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", first)
    browser.save_screenshot(str(shots / "book_02_figure.png"))
    nav = browser.find_element(By.CSS_SELECTOR, "nav.book-nav").text
    assert "contents" in nav and "01 " in nav and "03 " in nav, nav
