"""The search page in a real browser (headless Chromium through Playwright) against the real server
(uvicorn on a free loopback port): choose an image, read the grid, click a result to search from it,
filter, and take a token from the address once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright = pytest.importorskip("playwright.sync_api")

from metrictransfer.cli import main  # noqa: E402
from metrictransfer.retrieval.serve import create_server  # noqa: E402
from tests.helpers import COLOURS, coloured_gallery, make_checkpoint  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "a-token-for-the-browser-test"

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-browser")
    images = coloured_gallery(root / "images")
    checkpoint = make_checkpoint(root / "model.pt")
    assert main(["index", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(root / "index")]) == 0
    return images, root / "index"


class Running:
    """A server of the index on a free port of 127.0.0.1, in a thread, stopped on exit."""

    def __init__(self, index: Path, token: str | None = None) -> None:
        self.server = create_server(index, port=0, token=token, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(200):
            if self.server.started or not self.thread.is_alive():
                break
            self.thread.join(0.05)
        assert self.server.started, "the server did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()


def until(page, script: str, timeout: float = 15.0) -> None:
    """Poll ``script`` in the page until it is true (wait_for_function evaluates a string, which the
    page's Content-Security-Policy forbids: it allows the page's own script only)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {script}"
        page.wait_for_timeout(50)


def cards(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results .card",
        """cards => cards.map(c => ({
            id: Number(c.dataset.id),
            name: c.querySelector('.name').textContent,
            label: c.querySelector('.label').textContent,
            distance: Number(c.querySelector('.distance').textContent),
        }))""",
    )


def test_the_page_searches_by_image_then_by_a_clicked_result(index):
    images, folder = index
    problems: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            with Running(folder) as url:
                page.goto(url + "/")
                until(page, "document.getElementById('about').textContent.includes('12 items')")
                assert not page.is_visible("#token-form")  # no token set: nothing asks for one
                page.set_input_files("#file", str(images / "green" / "2.png"))
                until(page, "document.body.dataset.state === 'done'")
                found = cards(page)
                assert len(found) == 12
                assert (found[0]["name"], found[0]["label"], found[0]["distance"]) == ("2.png", "green", 0.0)
                assert {c["label"] for c in found} == set(COLOURS)
                assert [c["distance"] for c in found] == sorted(c["distance"] for c in found)
                until(page, "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")

                clicked = found[4]
                page.click(f"#results .card[data-id='{clicked['id']}']")
                until(page, f"document.getElementById('query-caption').textContent.includes('item {clicked['id']} ')")
                until(page, "document.body.dataset.state === 'done'")
                after = cards(page)
                assert len(after) == 11 and clicked["id"] not in [c["id"] for c in after]  # the item itself left out
                assert after[0]["label"] == clicked["label"]

                page.fill("#where", "label = red")
                page.click("#options button[type=submit]")
                until(page, "[...document.querySelectorAll('#results .label')].every(l => l.textContent === 'red')")
                assert len(cards(page)) == (3 if clicked["label"] == "red" else 4)  # the last search, from the clicked item

                page.fill("#where", "colour = red")
                page.click("#options button[type=submit]")
                until(page, "document.body.dataset.state === 'error'")
                assert "no column 'colour'" in page.text_content("#status")
            problems = [p for p in problems if "400" not in p]  # the refused filter's own response
            assert not problems, problems
        finally:
            browser.close()


def test_the_page_takes_a_token_from_the_address_once(index):
    images, folder = index
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            with Running(folder, token=TOKEN) as url:
                page.goto(url + "/?token=" + TOKEN)
                until(page, "document.getElementById('about').textContent.includes('12 items')")
                assert "token" not in page.url  # out of the address bar, the history and bookmarks
                assert page.evaluate("sessionStorage.getItem('metrictransfer-token')") == TOKEN
                page.set_input_files("#file", str(images / "blue" / "0.png"))
                until(page, "document.body.dataset.state === 'done'")
                assert cards(page)[0]["name"] == "0.png"

                fresh = browser.new_page()  # another tab: no token; the page asks for it
                fresh.goto(url + "/")
                fresh.wait_for_selector("#token-form", state="visible")
                fresh.fill("#token", TOKEN)
                fresh.click("#token-form button")
                until(fresh, "document.getElementById('about').textContent.includes('12 items')")
        finally:
            browser.close()
