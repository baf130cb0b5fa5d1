"""Take a picture of `scan serve`: search an index, open the first photo, select a word.

    .venv/bin/python scripts/serve_screenshot.py reports/flickr8k-demo/index reports/serve.jpg \\
        --query "a dog runs through the grass" --word dog

Drives Debian's chromium (/usr/bin/chromium) with Playwright, as tests/serve/test_browser.py does.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from scan.search.index import Index
from scan.serve import ServeSettings, create_app

ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("out")
    parser.add_argument("--query", default="a dog runs through the grass")
    parser.add_argument("--word", default="dog")
    parser.add_argument("--result", type=int, default=1, help="which result to open (1 = the best)")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Index.open(args.index), ServeSettings(port=port, access_log=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 640})
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#query", args.query)
        page.press("#query", "Enter")
        page.wait_for_selector("#results .card")
        page.locator("#results .card").nth(args.result - 1).click()
        page.wait_for_selector("#words .word[aria-pressed=true]")
        page.locator("#words .word", has_text=args.word).first.click()
        time.sleep(0.3)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, type="jpeg", quality=80)
        browser.close()
    server.should_exit = True
    print(f"{args.out}: {Path(args.out).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
