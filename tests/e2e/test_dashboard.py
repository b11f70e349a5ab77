"""The dashboard in a real browser: Debian's chromium driven by Selenium through Debian's
chromedriver (no browser download). drover fronts two mock Ollama servers; the page must
show both up, show one going down within a few seconds of its death, drain the other on a
click, and pull a model from its form.
"""

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import TARGET, free_port, run_drover, wait_http

TOKEN = "dashboard-test-token"


def chromium_paths():
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(browser) and os.path.exists(driver)):
        pytest.fail("chromium and chromium-driver are needed (scripts/setup installs them)")
    return browser, driver


@pytest.fixture()
def dashboard():
    procs, tmp = [], tempfile.mkdtemp(prefix="drover-dash-")
    browser = None
    try:
        mocks = []
        for port in (free_port(), free_port()):
            m = subprocess.Popen([str(TARGET / "examples" / "mock_ollama"), str(port), "llama3:latest"],
                                 stdout=subprocess.DEVNULL)
            procs.append(m)
            mocks.append((m, f"http://127.0.0.1:{port}"))
            wait_http(f"http://127.0.0.1:{port}/api/version", 20, m)
        config = f"""
load_balancer: {{ health_check_interval: 300ms, rise: 1, fall: 1 }}
admin: {{ token: "{TOKEN}" }}
routes:
  - {{ virtual_model_name: chat, server_url: "{mocks[0][1]}", actual_model_name: "llama3:latest" }}
  - {{ virtual_model_name: chat, server_url: "{mocks[1][1]}", actual_model_name: "llama3:latest" }}
"""
        url = run_drover(tmp, "drover", config, procs)

        binary, driver = chromium_paths()
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    f"--user-data-dir={tmp}/chromium"]:
            options.add_argument(arg)
        browser = webdriver.Chrome(service=Service(driver), options=options)
        browser.set_page_load_timeout(20)
        yield browser, url, mocks
    finally:
        if browser is not None:
            browser.quit()
        for p in procs:
            p.kill()
            p.wait()


def row(browser, server):
    """The server's row as the page shows it now, read in one script call: the table is
    redrawn every second, so elements found earlier go stale."""
    return browser.execute_script(
        """const tr = document.querySelector(`#servers tr[data-server="${arguments[0]}"]`);
           if (!tr) return null;
           const cell = tr.querySelector("td.state");
           return {state: tr.dataset.state, text: cell.textContent, cls: cell.className};""",
        server,
    )


def row_state(browser, server):
    r = row(browser, server)
    return r and r["state"]


def click_drain(browser, server):
    browser.execute_script(
        'document.querySelector(`#servers tr[data-server="${arguments[0]}"] button.drain`).click()', server
    )


def test_the_page_shows_a_server_going_down_and_acts_on_the_fleet(dashboard):
    browser, url, mocks = dashboard
    # Without the token the page is refused; with it once, a cookie lets the page in.
    browser.get(f"{url}/dashboard")
    assert "admin API" in browser.page_source
    browser.get(f"{url}/dashboard?token={TOKEN}")
    assert browser.current_url == f"{url}/dashboard"
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    for _, server in mocks:
        wait.until(lambda b, s=server: row_state(b, s) == "up")
    assert "2 of 2 servers up" in browser.find_element(By.ID, "summary").text
    # Ollama servers report no load of their own; replicas are off unless configured.
    reported = browser.execute_script(
        'return [...document.querySelectorAll("#servers td[data-reported]")].map(td => td.dataset.reported)')
    assert reported == ["no", "no"], reported
    assert "off" in browser.find_element(By.ID, "replicas-state").text

    # A server dies: the page says so within a few seconds, without a reload.
    (dead, dead_url), (_, live_url) = mocks
    dead.kill()
    dead.wait()
    died = time.monotonic()
    WebDriverWait(browser, 5, poll_frequency=0.1).until(lambda b: row_state(b, dead_url) == "down")
    shown_after = time.monotonic() - died
    shown = row(browser, dead_url)
    assert shown["text"] == "down" and "state-down" in shown["cls"], shown
    assert "1 of 2 servers up" in browser.find_element(By.ID, "summary").text
    print(f"server down shown {shown_after:.1f}s after it died")

    # Drain the other from the page, then put it back.
    click_drain(browser, live_url)
    wait.until(lambda b: row_state(b, live_url) == "drained")
    click_drain(browser, live_url)
    wait.until(lambda b: row_state(b, live_url) == "up")

    # Pull a model where the routes point: the live server gets it, the dead one is named.
    browser.find_element(By.ID, "pull-model").send_keys("chat")
    browser.find_element(By.ID, "pull-go").click()
    result = browser.find_element(By.ID, "pull-result")
    wait.until(lambda b: result.get_attribute("data-status") in ("success", "failed"))
    assert result.get_attribute("data-status") == "failed", result.text
    assert dead_url in result.text and '"status": "success"' in result.text
    with urllib.request.urlopen(f"{live_url}/api/tags", timeout=5) as r:
        assert b"llama3:latest" in r.read()
