"""The web demo in a real headless browser (Debian chromium driven by playwright).

Screenshots of every tab go to a temporary folder; with ``CVVAE_SCREENSHOTS=1`` they replace the ones
the README shows (``assets/screenshots/``).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from app.handlers import AppConfig, Handlers
from app.ui import ASSETS, EXAMPLES, build_demo, launch

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium")
# Flags that keep chromium quiet and offline (see the stack check): no GPU, no sandbox in containers.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ASSETS / "screenshots" if os.environ.get("CVVAE_SCREENSHOTS") == "1" else Path(tempfile.mkdtemp())
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no chromium executable on PATH (install it with: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    # run as a user would, from a working folder with ./outputs (the page names the folder relative to it)
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("browser-cwd"))
    handlers = Handlers(AppConfig(preset="tiny", outputs=Path("outputs")))
    demo = build_demo(handlers)  # tiny preset defaults: 2 steps, 3 latents (9 frames), 64x64
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(demo, handlers, port=port, prevent_thread_lock=True, quiet=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#i2v-run").wait_for(state="visible")
            yield page
            browser.close()
    finally:
        demo.close()
        os.chdir(cwd)


def _wait_for_video(page, elem_id: str) -> dict:
    """Wait until the result <video> of ``elem_id`` has decoded data (or fail on an error toast)."""
    page.wait_for_function(
        f"() => {{ const v = document.querySelector('#{elem_id} video');"
        " return (v && v.readyState >= 2) || document.querySelector('.toast-body.error') !== null; }"
    )
    errors = page.locator(".toast-body.error").all_inner_texts()
    assert not errors, f"the app showed an error: {errors}"
    return page.evaluate(
        f"() => {{ const v = document.querySelector('#{elem_id} video');"
        " return {w: v.videoWidth, h: v.videoHeight, d: v.duration}; }"
    )


def _screenshot(page, name: str) -> None:
    """Whole page from the top (``SHOTS/<tab>.png``)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _close_toasts(page) -> None:
    for button in page.locator(".toast-close").all():
        button.click()
    page.locator(".toast-body").first.wait_for(state="detached")


def _upload(page, elem_id: str, path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_notice_and_outputs_folder_are_visible(page):
    notice = page.locator("#notice").inner_text()
    assert "RANDOM" in notice and notice.lstrip("⚠️ ")[0].isupper()
    assert page.get_by_text("results are saved in outputs").is_visible()


def test_image_to_video_in_browser(page):
    _tab(page, "Image to video")
    _upload(page, "i2v-image", EXAMPLES / "cat.jpg")
    page.locator("#i2v-image img").wait_for(state="visible")
    page.locator("#i2v-run").click()
    info = _wait_for_video(page, "i2v-video")
    assert (info["w"], info["h"]) == (64, 64) and info["d"] > 0
    assert "RANDOM" in page.locator("#i2v-info").inner_text()
    assert "frames: 9" in page.locator("#i2v-info").inner_text()  # tiny preset: 3 latents -> 9 frames
    page.get_by_text("More settings").first.click()  # show every control in the README screenshot
    _screenshot(page, "image-to-video")


def test_bad_upload_shows_error_then_reconstruct_works(page, tmp_path):
    _tab(page, "Reconstruct")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    _upload(page, "reconstruct-input", bad)
    page.locator("#reconstruct-run").click()
    page.locator(".toast-body.error", has_text="broken.mp4 is not a readable video").wait_for(state="visible")
    _close_toasts(page)
    # The same page keeps working: replace the upload with a real clip and reconstruct it.
    # dispatch the click: the input's error overlay may still cover the button on a loaded machine
    page.locator("#reconstruct-input button[aria-label='Clear']").last.dispatch_event("click")
    _upload(page, "reconstruct-input", EXAMPLES / "coffee_pan.mp4")
    page.locator("#reconstruct-run").click()
    info = _wait_for_video(page, "reconstruct-video")
    assert info["h"] == 128 and info["w"] == 2 * 224  # input | output side by side, short side 128
    assert "PSNR" in page.locator("#reconstruct-info").inner_text()
    _screenshot(page, "reconstruct")


def test_text_to_video_in_browser(page):
    _tab(page, "Text to video")
    page.locator("#t2v-run").click()  # no prompt yet: a message, not a traceback
    page.locator(".toast-body.error", has_text="write a prompt first").wait_for(state="visible")
    _close_toasts(page)
    page.locator("#t2v-prompt textarea").fill("a red fox running through snow")
    page.locator("#t2v-run").click()
    info = _wait_for_video(page, "t2v-video")
    assert (info["w"], info["h"]) == (64, 64) and info["d"] > 0
    assert "RANDOM" in page.locator("#t2v-info").inner_text()
    _screenshot(page, "text-to-video")


def test_compare_in_browser(page):
    _tab(page, "Compare")
    assert not page.locator("#compare-adapter").is_visible()  # no adapter chosen: no empty third panel
    _upload(page, "compare-image", EXAMPLES / "coffee.jpg")
    page.locator("#compare-image img").wait_for(state="visible")
    page.locator("#compare-run").click()
    native = _wait_for_video(page, "compare-native")
    cvvae = _wait_for_video(page, "compare-cvvae")
    assert cvvae["d"] > 0 and native["d"] > 0
    table = page.locator("#compare-info").inner_text()
    assert "backbone VAE" in table and "CV-VAE" in table and "warping error" in table
    _screenshot(page, "compare")


def test_compare_sd3_in_browser(page):
    _tab(page, "Compare")
    _tab(page, "SD3: text to image")
    page.locator("#compare-sd3-run").click()
    page.wait_for_function(
        "() => document.querySelector('#compare-sd3-cvvae img') !== null"
        " || document.querySelector('.toast-body.error') !== null"
    )
    assert not page.locator(".toast-body.error").all_inner_texts()
    page.locator("#compare-sd3-native img").wait_for(state="visible")
    assert "CV-VAE-SD3 vs SD3's VAE" in page.locator("#compare-sd3-info").inner_text()
    # the 64x64 images of the tiny preset are drawn at the panel's size, not as a small square in it
    drawn = page.evaluate("() => document.querySelector('#compare-sd3-cvvae img').getBoundingClientRect().width")
    assert drawn > 3 * 64
    _screenshot(page, "compare-sd3")
