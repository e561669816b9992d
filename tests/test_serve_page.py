"""serve.py's chat page in a real browser: Debian's chromium, headless, driven by Playwright, its microphone a
fake device playing a WAV. One browser session holds a whole conversation (typed, with a picture, read by OCR,
spoken into the microphone, answered aloud) on conftest's tiny random models; a screenshot of it is saved in
the test's folder (and copied to $SERVE_SCREENSHOT when that is set)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import serving

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def url(runs):
    with serving(runs) as u:
        yield u


def test_a_conversation_in_the_page(url, runs, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium: install it with `bash scripts/setup_system.sh --test` (apt-get install chromium)")
    sync_playwright = pytest.importorskip(
        "playwright.sync_api", reason="the page test needs playwright: pip install -r requirements-test.txt").sync_playwright
    problems, outside = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={runs / 'q.wav'}", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url))
            page.goto(url)
            page.locator("#status", has_text="audio out").wait_for()
            replies = page.locator(".msg.assistant")

            def answered(n: int) -> str:
                """The n-th reply (from 1), once it is complete; not an error."""
                replies.nth(n - 1).locator(".meta").wait_for()
                assert "error" not in (replies.nth(n - 1).get_attribute("class") or "")
                return replies.nth(n - 1).locator(".text").inner_text()

            page.fill("#prompt", "the red circle")                  # typed, sent with Enter
            page.press("#prompt", "Enter")
            assert answered(1).strip()
            assert "first token" in replies.nth(0).locator(".meta").inner_text()

            page.set_input_files("#image-file", str(runs / "red.png"))   # a picture and a question about it
            page.locator("#attached-image").wait_for()
            page.fill("#prompt", "what colour is it?")
            page.click("#send")
            answered(2)
            assert page.locator(".msg.user img").count() == 1

            page.set_input_files("#image-file", str(runs / "line.png"))  # read by OCR: the reading is the reply
            page.click("#ocr")
            answered(3)

            page.check("#speak")                                    # a spoken question, answered aloud
            page.click("#record")
            page.locator("#record", has_text="Stop 2 s").wait_for()  # 1.5 s or more of the fake microphone
            page.click("#record")
            page.locator("#attached-audio").wait_for()
            page.click("#send")
            answered(4)
            audio = replies.nth(3).locator("audio.reply-audio")
            audio.wait_for()
            duration = audio.evaluate("a => new Promise(ok => a.readyState >= 1 ? ok(a.duration) : "
                                      "(a.onloadedmetadata = () => ok(a.duration), a.onerror = () => ok(-1)))")
            assert duration > 0
            assert "first audio" in replies.nth(3).locator(".meta").inner_text()
            assert page.locator(".msg.user audio").count() == 1     # the question can be heard again

            page.set_viewport_size({"width": 390, "height": 760})   # a phone: nothing wider than the window
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.set_viewport_size({"width": 1000, "height": 1500})   # tall enough for the whole conversation
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    if os.environ.get("SERVE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SERVE_SCREENSHOT"])
    print(f"screenshot: {shot}")
    assert not problems, problems
    assert not outside, outside
