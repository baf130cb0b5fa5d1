"""The page of `scan serve` in a real browser: Debian's chromium driven by Playwright (no downloaded browser).

Type a sentence and see result cards; open one, select words and see the attention overlay
change; upload a photo and see captions; and the same page at a phone's width. Screenshots go to
`$SCAN_SCREENSHOTS` when set (the README's picture is made so), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
uvicorn = pytest.importorskip("uvicorn")

from scan.serve import ServeSettings, create_app  # noqa: E402  (after the skips: needs FastAPI)

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a container, and with no network: no sandbox, and none of chromium's own connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(served_index):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the browser tests need it")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(served_index, ServeSettings(port=port, access_log=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("SCAN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_until(page, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a JavaScript expression from here (Playwright's wait_for_function needs eval, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def overlay(page) -> str:
    return page.eval_on_selector("#overlay", "canvas => canvas.toDataURL()")


def test_search_explain_and_describe_in_a_real_browser(server, browser, served_folder, shots):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    failures: list[str] = []
    page.on("requestfailed", lambda request: failures.append(request.url))
    page.on("pageerror", lambda error: failures.append(str(error)))
    page.goto(server)
    page.fill("#query", "a dog runs through the grass")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .card")
    cards = page.locator("#results .card")
    assert cards.count() == 10
    wait_until(
        page, "() => [...document.querySelectorAll('#results .card img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert "photos for" in page.inner_text("#status")
    page.screenshot(path=str(shots / "serve-results.png"))

    cards.first.click()
    page.wait_for_selector("#words .word[aria-pressed=true]")
    assert page.is_hidden("#results") and page.is_visible("#detail")
    words = page.locator("#words .word")
    assert [words.nth(i).inner_text() for i in range(words.count())][:3] == ["a", "dog", "runs"]
    wait_until(page, "() => document.getElementById('overlay').width > 0")
    first = overlay(page)
    assert page.get_attribute("#overlay", "data-word") == "a"
    words.nth(1).click()  # "dog"
    assert page.get_attribute("#words .word[aria-pressed=true]", "data-index") == "2"
    assert page.get_attribute("#overlay", "data-word") == "dog"
    second = overlay(page)
    assert second != first  # another word, another picture
    words.nth(4).hover()
    assert page.get_attribute("#overlay", "data-word") == words.nth(4).inner_text()
    assert overlay(page) not in (first, second)
    words.nth(1).hover()
    page.screenshot(path=str(shots / "serve-explain.png"))

    photo = next((served_folder / "photos").glob("*.jpg"))
    page.set_input_files("#photo", str(photo))
    page.wait_for_selector("#caption-list li")
    assert page.is_hidden("#detail") and page.is_visible("#captions")
    assert page.locator("#caption-list li").count() == 10
    page.screenshot(path=str(shots / "serve-captions.png"))
    assert failures == []


def test_the_page_fits_a_phone(server, browser, shots):
    page = browser.new_page(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page.goto(server)
    page.fill("#query", "two children play")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .card")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    box = page.locator("#results .card").first.bounding_box()
    assert box is not None and box["width"] >= 120
    page.locator("#results .card").first.tap()
    page.wait_for_selector("#words .word[aria-pressed=true]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    stage = page.locator(".stage").bounding_box()
    assert stage is not None and stage["width"] <= 390
    page.screenshot(path=str(shots / "serve-phone.png"), full_page=True)


def test_a_bad_query_shows_the_servers_message(server, browser):
    page = browser.new_page()
    page.goto(server)
    page.fill("#query", "zzqx qqzv")
    page.press("#query", "Enter")
    page.wait_for_selector("#status.error")
    assert "unknown" in page.inner_text("#status")
