"""The approvals page in a real browser (headless Chromium driven by Selenium): sign in with the
token, see a held action appear without reloading, approve it and see the upstream receive it
and the page show it committed, freeze and thaw. Screenshots go to the test's own directory."""

from __future__ import annotations

import concurrent.futures
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from .support import Airlock, Upstream

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None, reason="needs chromium and chromedriver (make deps installs them)"
)

RULES = """\
version: 1
egress: {allow: [127.0.0.1]}
hold: {wait: 60s, timeout: 10m}
defaults: {destructive: hold}
rules:
  - id: item-deletes-need-a-person
    match: {method: DELETE, path: "/items/*"}
    action: hold
    message: Items are deleted only with a person's approval.
    hold: {wait: 60s}
"""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, found: Callable[[WebDriver], object], what: str) -> None:
    """Wait for a condition the page reaches by itself (no reload). The page redraws its tables
    as they change: an element read while it is replaced is looked for again."""
    waiting = WebDriverWait(
        driver, 30, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    waiting.until(lambda d: found(d), message=what)


def test_an_operator_approves_a_held_delete_and_freezes_and_thaws_from_the_page(
    make_airlock: Callable[..., Airlock], upstream: Upstream, browser: WebDriver, tmp_path: Path
) -> None:
    a = make_airlock(rules=RULES)
    page = requests.get(f"{a.control}/ui", timeout=10)
    assert page.ok and "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    browser.get(f"{a.control}/ui")
    browser.find_element(By.ID, "token").send_keys(a.token)
    browser.find_element(By.ID, "voter").send_keys("alice")
    browser.find_element(By.ID, "sign-in").click()
    until(browser, lambda d: d.find_element(By.ID, "app").is_displayed(), "the page signs in")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(requests.delete, f"{upstream.url}/items/42", proxies=a.proxies, timeout=90)
        until(
            browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#held tbody tr"), "the held DELETE appears"
        )
        row = browser.find_element(By.CSS_SELECTOR, "#held tbody tr")
        assert "DELETE" in row.text and "/items/42" in row.text and "item-deletes-need-a-person" in row.text
        assert "Items are deleted only with a person's approval." in row.text
        browser.save_screenshot(str(tmp_path / "1-held.png"))
        assert upstream.effects("DELETE") == []
        row.find_element(By.CSS_SELECTOR, "input.reason").send_keys("ticket 7")
        row.find_element(By.CSS_SELECTOR, "button.approve").click()
        assert waiting.result(timeout=60).status_code == 200
    assert [s.path for s in upstream.effects("DELETE")] == ["/items/42"]
    until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#held tbody tr"), "the held list empties")
    until(
        browser,
        lambda d: any(
            "committed" in r.text and "/items/42" in r.text
            for r in d.find_elements(By.CSS_SELECTOR, "#recent tbody tr")
        ),
        "the recent actions show it committed",
    )
    browser.save_screenshot(str(tmp_path / "2-approved.png"))
    [action] = [x for x in a.log() if x["method"] == "DELETE"]
    entries = requests.get(
        f"{a.control}/v1/actions/{action['id']}", headers={"Authorization": f"Bearer {a.token}"}, timeout=10
    ).json()["entries"]
    assert entries[1]["data"] == {"voter": "alice", "vote": "approve", "reason": "ticket 7"}

    browser.find_element(By.ID, "freeze-reason").send_keys("incident 9")
    browser.find_element(By.ID, "freeze-button").click()
    badge = (By.ID, "freeze-state")
    until(browser, lambda d: "frozen by alice" in d.find_element(*badge).text, "the page freezes")
    browser.save_screenshot(str(tmp_path / "3-frozen.png"))
    refused = requests.post(f"{upstream.url}/items", data=b"x", proxies=a.proxies, timeout=10)
    assert refused.status_code == 503 and refused.json()["error"] == "frozen"
    browser.find_element(By.ID, "thaw-button").click()
    until(browser, lambda d: d.find_element(*badge).text == "not frozen", "the page thaws")
    assert requests.post(f"{upstream.url}/items", data=b"x", proxies=a.proxies, timeout=10).status_code == 200
