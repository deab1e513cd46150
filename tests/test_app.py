"""The demo app as visitors meet it: a real server on localhost, driven by gradio_client and a real browser."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.slow
OUTPUT_ROOT: dict[str, Path] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp_path / f"app-{port}.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError((tmp_path / f"app-{port}.log").read_text()[-3000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, url
        except OSError:
            time.sleep(1)
    process.kill()
    raise TimeoutError("the app did not start")


@pytest.fixture(scope="module")
def app(trained_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    process, url = start_app(tmp, "--prior", "tiny", "--lolnerf-run", str(trained_run), "--device", "cpu")
    OUTPUT_ROOT["app"] = tmp / "onelook-app"  # the app's output folders (it runs with TMPDIR=tmp)
    yield url
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, synth_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    rgb = np.full((120, 160, 3), 235, np.uint8)
    rgb[30:90, 40:120] = np.asarray(Image.fromarray(data.coffee()).resize((80, 60)))
    Image.fromarray(rgb).save(folder / "cup.png")
    Image.fromarray(data.astronaut()).save(folder / "face.png")
    Image.fromarray(data.chelsea()).save(folder / "cat.png")
    (folder / "notes.png").write_text("this is not an image")
    Image.new("RGB", (10, 10), (1, 2, 3)).save(folder / "tiny.png")
    return {p.stem: p for p in folder.iterdir()}


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def check_outputs(status, video, depth, normals, files):
    import imageio.v3 as iio
    import trimesh

    assert status == "done"
    glb = next(f for f in files if f.endswith(".glb"))
    assert len(trimesh.load(glb, force="mesh").faces) > 0
    assert iio.imread(video["video"] if isinstance(video, dict) else video, plugin="pyav").shape[0] > 1
    for image in (depth, normals):
        assert np.asarray(Image.open(image)).std() > 0
    assert sorted(Path(f).suffix for f in files) == [".glb", ".obj", ".ply"]


def test_any_object_flow(app, photos):
    from gradio_client import handle_file

    status, video, depth, normals, files = client(app).predict(
        handle_file(str(photos["cup"])), 0.75, "preview", 0, api_name="/reconstruct_object"
    )
    check_outputs(status, video, depth, normals, files)


def test_face_flow_with_preview_and_angles(app, photos):
    from gradio_client import handle_file

    c = client(app)
    preview, text = c.predict(handle_file(str(photos["face"])), api_name="/face_preview")
    assert "yaw" in text and np.asarray(Image.open(preview)).shape[2] == 3
    status, video, depth, normals, files = c.predict(
        handle_file(str(photos["face"])), "preview", 0, api_name="/reconstruct_face"
    )
    check_outputs(status, video, depth, normals, files)


def test_interpolation(app, photos):
    from gradio_client import handle_file

    face = handle_file(str(photos["face"]))
    video = client(app).predict(face, face, "preview", api_name="/interpolate_faces")
    assert Path(video["video"] if isinstance(video, dict) else video).stat().st_size > 0


@pytest.mark.parametrize(
    "name, api, message",
    [
        ("notes", "/reconstruct_object", "cannot be used"),
        ("tiny", "/reconstruct_object", "too small"),
        ("cat", "/reconstruct_face", "No face"),
        ("notes", "/reconstruct_face", "cannot be used"),
    ],
)
def test_bad_inputs_get_clear_errors_and_the_app_stays_up(app, photos, name, api, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    args = (0.75, "preview", 0) if api == "/reconstruct_object" else ("preview", 0)
    with pytest.raises(AppError, match=message):
        client(app).predict(handle_file(str(photos[name])), *args, api_name=api)
    preview, _ = client(app).predict(handle_file(str(photos["face"])), api_name="/face_preview")  # still serving
    assert Path(preview).exists()


def test_four_visitors_at_once_are_all_served(app, photos):
    from gradio_client import handle_file

    results, errors = [], []
    before = set(OUTPUT_ROOT["app"].iterdir())

    def visit() -> None:
        try:
            results.append(
                client(app).predict(handle_file(str(photos["face"])), "preview", 0, api_name="/reconstruct_face")
            )
        except Exception as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=visit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert len(results) == 4
    assert len(set(OUTPUT_ROOT["app"].iterdir()) - before) == 4  # each request has its own output folder


def test_stop_really_stops_the_work(app, photos):
    """A reconstruction that runs for minutes on a CPU ("quick"), cancelled once training: the shared slot frees,
    so the next visitor's seconds-long reconstruction is served well before the first could have ended."""
    from gradio_client import handle_file

    c = client(app)
    job = c.submit(handle_file(str(photos["cup"])), 0.75, "quick", 0, api_name="/reconstruct_object")
    deadline = time.time() + 120
    while time.time() < deadline and not any("training" in str(out) for out in job.outputs()):
        time.sleep(1)
    assert any("training" in str(out) for out in job.outputs()), "the long job never started training"
    job.cancel()
    after = client(app).submit(handle_file(str(photos["face"])), "preview", 0, api_name="/reconstruct_face")
    status, *_ = after.result(timeout=90)
    assert status == "done"


def test_files_outside_the_app_cannot_be_read(app):
    import urllib.error
    import urllib.request

    for path in ("/etc/passwd", str(ROOT / "pyproject.toml")):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{app}gradio_api/file={path}", timeout=10)


def test_missing_models_are_explained(tmp_path, photos):
    process, url = start_app(tmp_path, "--lolnerf-run", str(tmp_path / "nowhere"), "--device", "cpu")
    try:
        import urllib.request

        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "No diffusion model is set" in page and "No LOLNeRF model could be loaded" in page
        from gradio_client import handle_file
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="--sd-model"):
            client(url).predict(handle_file(str(photos["cup"])), 0.75, "preview", 0, api_name="/reconstruct_object")
    finally:
        process.terminate()
        process.wait(30)


def test_browser_upload_reconstruct_and_view(app, photos):
    """Debian's chromium through Playwright: the visitor's whole path, with a screenshot kept as an artifact."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(app)
        page.get_by_role("tab", name="Any object").click()
        page.locator("input[type=file]").first.set_input_files(str(photos["cup"]))
        page.wait_for_function(  # the status box (a textarea) reports the mask once the preview is ready
            "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('mask from'))", timeout=60_000
        )
        page.get_by_label("preview").first.check()
        page.get_by_role("button", name="Reconstruct").first.click()
        page.locator("video").first.wait_for(timeout=300_000)
        page.locator("canvas").first.wait_for(timeout=60_000)
        time.sleep(3)  # let the viewer draw
        page.screenshot(path=str(ARTIFACTS / "app-any-object.png"), full_page=True)
        canvas = page.locator("canvas").first.screenshot()
        browser.close()
    pixels = np.asarray(Image.open(__import__("io").BytesIO(canvas)).convert("RGB"), dtype=float)
    assert pixels.std() > 1.0, "the 3D viewer's canvas is blank"
    print(json.dumps({"screenshot": str(ARTIFACTS / "app-any-object.png")}))
