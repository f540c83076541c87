"""Fixtures of the browser tests: headless Chromium (Selenium) and a JupyterLab server on a loopback port.

These tests run through ``make test-browser``, not ``make test``: they need the Debian ``chromium`` and
``chromium-driver`` packages, JupyterLab (the ``browser`` extra) and, for the ipywidgets test, PyPI.
Screenshots go to ``build/browser/``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from labdriver import lab_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SHOTS = REPO_ROOT / "build" / "browser"
BOOK = REPO_ROOT / "build" / "book"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = "sudo apt-get install -y chromium chromium-driver"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def shots() -> Path:
    """build/browser/, emptied once per session, where every test saves its screenshots."""
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    return SHOTS


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session, driven through the Debian chromedriver (Selenium
    Manager cannot download a driver offline, so both binaries are named explicitly)."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).is_file():
            pytest.fail(f"{binary} is missing: install Chromium and its driver with `{INSTALL_HINT}` "
                        "(or set CHROMIUM / CHROMEDRIVER to their paths)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A JupyterLab server on a free 127.0.0.1 port with a random token, serving a scratch folder,
    with ``window.jupyterapp`` exposed so a test can run notebook commands. Yields
    ``(base_url, token, root_dir)``; the server is stopped afterwards."""
    root = tmp_path_factory.mktemp("lab")
    state = tmp_path_factory.mktemp("lab_state")
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(state / "runtime"), "MPLBACKEND": "Agg"}
    lab_settings(state / "settings")
    env.pop("MEDNEXT_LITE_HEADLESS", None)  # this kernel has a widget front end: the browser
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with (state / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--ServerApp.open_browser=False"]
            + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
            env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(request, timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"JupyterLab did not start on port {port}:\n{(state / 'server.log').read_text()[-3000:]}",
                                pytrace=False)
                time.sleep(0.5)
        yield base, token, root
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
