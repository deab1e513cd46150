"""`ns-train lolnerf-small --vis viewer`: nerfstudio's viewer in Debian's chromium, and our latent controls in it."""

from __future__ import annotations

import io
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

ITERATIONS = 150


def _render(page) -> np.ndarray:
    """The viewer's render area (left of its panel), as pixels."""
    png = page.screenshot(clip={"x": 0, "y": 60, "width": 660, "height": 620})
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


def _settled_render(page, quiet_seconds: float = 6.0, timeout: float = 180.0) -> np.ndarray:
    """The render once it has stopped changing (the viewer refines its image progressively)."""
    previous, start = _render(page), time.monotonic()
    while time.monotonic() - start < timeout:
        time.sleep(quiet_seconds)
        current = _render(page)
        if np.array_equal(current, previous):
            return current
        previous = current
    raise TimeoutError("the viewer's render never settled")


def _choose_latent(page, option: str) -> None:
    page.get_by_label("Latent").click()
    page.get_by_role("option", name=option).click()


@pytest.mark.slow
def test_the_viewer_renders_the_latent_its_controls_choose(ns_train, synth_dataset, tmp_path, chromium, free_port):
    """Training ends, the viewer stays up: in the browser, the page connects, and choosing the mean latent
    instead of a training image's changes the render; choosing the image again brings its render back."""
    port = free_port()
    viewer = ["--vis", "viewer", "--viewer.websocket-port", str(port), "--viewer.websocket-host", "127.0.0.1"]
    viewer += ["--viewer.quit-on-train-completion", "False"]
    command = [ns_train.executable, "lolnerf-small", "--data", str(synth_dataset), "--output-dir", str(tmp_path)]
    command += ["--machine.device-type", "cpu", "--max-num-iterations", str(ITERATIONS)]
    command += ["--steps-per-save", str(ITERATIONS), "--pipeline.model.hard-surface-start-step", "100", *viewer]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not list(tmp_path.rglob(f"step-{ITERATIONS - 1:09d}.ckpt")):  # saved when training ends
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "training did not end"
            time.sleep(1)
        page = chromium.new_page(viewport={"width": 1000, "height": 700})
        page.goto(f"http://127.0.0.1:{port}")
        page.get_by_text("Connected").wait_for(timeout=60_000)
        # A small render (64 px) so that the CPU refines it in seconds.
        max_res = page.locator("div.mantine-Flex-root", has=page.get_by_text("Max res", exact=True)).last
        max_res.locator("input.mantine-NumberInput-input").first.fill("64")
        max_res.locator("input.mantine-NumberInput-input").first.press("Enter")
        image_latent = _settled_render(page)
        assert image_latent.std() > 1.0, "the viewer shows no render"
        _choose_latent(page, "mean")
        mean_latent = _settled_render(page)
        _choose_latent(page, "training image")
        image_latent_again = _settled_render(page)
    finally:
        process.kill()
        process.wait()
    changed = np.abs(mean_latent - image_latent).mean()
    returned = np.abs(image_latent_again - image_latent).mean()
    print(f"mean |render difference| (grey levels): mean latent {changed:.2f}, the image's again {returned:.2f}")
    assert changed > 1.0, "the render did not change with the latent"
    assert returned < 0.2 * changed, "choosing the training image again did not bring its render back"
