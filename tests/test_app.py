"""The demo app as visitors meet it: a real server on localhost, driven by gradio_client and a real browser."""

from __future__ import annotations

import io
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

from onelook.assets import OBJECT_EXAMPLES
from onelook.data.object_image import prepare_object_image
from onelook.realfusion.train import QUALITY

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.slow
OUTPUT_ROOT: dict[str, Path] = {}
SERVER: dict[str, int] = {}


def worker_process(server_pid: int):
    """The app's reconstruction worker: its `spawn` child (not multiprocessing's resource tracker)."""
    import psutil

    for child in psutil.Process(server_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                return child
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # a killed worker on its way out
            continue
    raise AssertionError("the app has no worker process")


def tree_rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def peak_rss_mb(pid: int) -> float:
    """The kernel's record of the most memory this process ever held (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def wait_for_output(job, text: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not any(text in str(out) for out in job.outputs()):
        if job.done():
            break
        time.sleep(0.2)
    assert any(text in str(out) for out in job.outputs()), f"never saw {text!r}: {job.outputs()[-3:]}"


def start_app(tmp_path: Path, port: int, *args: str) -> tuple[subprocess.Popen, str]:
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
def app(trained_run, tmp_path_factory, free_port):
    tmp = tmp_path_factory.mktemp("app")
    process, url = start_app(tmp, free_port(), "--prior", "tiny", "--lolnerf-run", str(trained_run), "--device", "cpu")
    OUTPUT_ROOT["app"] = tmp / "onelook-app"  # the app's output folders (it runs with TMPDIR=tmp)
    SERVER["pid"] = process.pid
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
    (folder / "empty.png").write_bytes(b"")
    (folder / "report.png").write_bytes(b"%PDF-1.7\n%%EOF")
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
        ("empty", "/reconstruct_object", r"empty \(0 bytes\)"),
        ("report", "/reconstruct_face", "PDF"),
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
    """A reconstruction that runs for minutes on a CPU ("quick"): textual inversion reports its steps, and Stop
    during training returns within 2 s (the worker is killed, not waited on); the queued next visitor is served
    as soon as a fresh worker is ready."""
    from gradio_client import handle_file

    c = client(app)
    job = c.submit(handle_file(str(photos["cup"])), 0.75, "quick", 0, api_name="/reconstruct_object")
    wait_for_output(job, "textual inversion")
    wait_for_output(job, "training")
    old_worker = worker_process(SERVER["pid"]).pid
    waiting = client(app).submit(handle_file(str(photos["face"])), "preview", 0, api_name="/reconstruct_face")
    started = time.time()
    job.cancel()
    while not job.done() and time.time() - started < 10:
        time.sleep(0.02)
    stopped_after = time.time() - started
    print(f"Stop took {stopped_after:.2f} s")
    assert stopped_after < 2.0
    status, *_ = waiting.result(timeout=120)
    assert status == "done"
    assert worker_process(SERVER["pid"]).pid != old_worker  # the stopped step did not go on


def test_page_and_config_answer_while_a_reconstruction_runs(app, photos):
    import urllib.request

    from gradio_client import handle_file

    job = client(app).submit(handle_file(str(photos["cup"])), 0.75, "quick", 0, api_name="/reconstruct_object")
    try:
        wait_for_output(job, "training")
        for path in ("", "config", "", "config"):
            started = time.time()
            assert urllib.request.urlopen(app + path, timeout=10).status == 200
            assert time.time() - started < 1.0, f"/{path} took {time.time() - started:.2f} s"
    finally:
        job.cancel()


def test_a_job_whose_process_dies_gets_a_clear_error_and_the_next_visitor_is_served(app, photos):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    job = client(app).submit(handle_file(str(photos["cup"])), 0.75, "quick", 0, api_name="/reconstruct_object")
    wait_for_output(job, "training")
    worker_process(SERVER["pid"]).kill()  # as the kernel's out-of-memory killer would
    with pytest.raises(AppError, match="stopped unexpectedly: it was killed by SIGKILL"):
        job.result(timeout=60)
    status, *_ = client(app).predict(handle_file(str(photos["face"])), "preview", 0, api_name="/reconstruct_face")
    assert status == "done"


def test_memory_returns_to_its_idle_level_after_a_job(app, photos):
    from gradio_client import handle_file

    def reconstruct() -> None:
        status, *_ = client(app).predict(
            handle_file(str(photos["cup"])), 0.75, "preview", 0, api_name="/reconstruct_object"
        )
        assert status == "done"

    reconstruct()  # the worker now holds what it keeps between jobs (the model, the prior)
    idle = tree_rss_mb(SERVER["pid"])
    for _ in range(2):
        reconstruct()
    after = tree_rss_mb(SERVER["pid"])
    print(f"server and worker: {idle:.0f} MB idle, {after:.0f} MB after two more jobs")
    assert after < idle + 150


def test_examples_are_recognised_by_content_not_name(app, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    impostor = tmp_path / "synthetic_0.png"  # an example's name, a cat's pixels: no face to find
    Image.fromarray(data.chelsea()).save(impostor)
    with pytest.raises(AppError, match="No face"):
        client(app).predict(handle_file(str(impostor)), api_name="/face_preview")
    example = ROOT / "onelook" / "assets" / "examples" / "synthetic_0.png"
    renamed = tmp_path / "my upload.png"  # an example's pixels under another name: its known keypoints
    renamed.write_bytes(example.read_bytes())
    _, text = client(app).predict(handle_file(str(renamed)), api_name="/face_preview")
    assert "head pose" in text


def test_huge_uploads_are_refused_or_reduced_in_little_memory(trained_run, huge_images, tmp_path, free_port):
    """A fresh app (so that the kernel's peak-memory records hold only this): a flat 40000x40000 PNG is refused
    from its header; a 16-bit 12000x9000 face is reduced and its landmarks found; no process passes 2 GB."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    options = ("--prior", "tiny", "--lolnerf-run", str(trained_run), "--device", "cpu")
    process, url = start_app(tmp_path, free_port(), *options)
    try:
        with pytest.raises(AppError, match=r"too large \(1600 M pixels\)"):
            client(url).predict(
                handle_file(str(huge_images["flat"])), 0.75, "preview", 0, api_name="/reconstruct_object"
            )
        with pytest.raises(AppError, match=r"too large \(1600 M pixels\)"):
            client(url).predict(handle_file(str(huge_images["flat"])), api_name="/face_preview")
        _, text = client(url).predict(handle_file(str(huge_images["deep16"])), api_name="/face_preview")
        assert "head pose" in text
        status, *_ = client(url).predict(
            handle_file(str(huge_images["deep16"])), "preview", 0, api_name="/reconstruct_face"
        )
        assert status == "done"
        peaks = {"server": peak_rss_mb(process.pid), "worker": peak_rss_mb(worker_process(process.pid).pid)}
        print(f"peak memory: {peaks}")
        assert max(peaks.values()) < 2048
    finally:
        process.terminate()
        process.wait(30)


def test_session_folders_are_judged_by_their_job(tmp_path):
    import os

    from onelook.app import SessionFolders

    folders = SessionFolders(tmp_path, ttl=60)
    running, ended, stale = folders.new(), folders.new(), tmp_path / "from-an-earlier-run"
    folders.release(ended)
    stale.mkdir()
    (stale / "old.mp4").write_bytes(b"x")
    recent = tmp_path / "earlier-run-recent-file"
    (recent / "export").mkdir(parents=True)
    (recent / "export" / "mesh.glb").write_bytes(b"x")
    long_ago = time.time() - 3600
    for path in (running, ended, stale, stale / "old.mp4", recent):  # top-level times say "old" for all
        os.utime(path, (long_ago, long_ago))
    folders.new()  # cleans up first
    assert running.exists() and ended.exists() and recent.exists()
    assert not stale.exists()


def test_files_outside_the_app_cannot_be_read(app):
    import urllib.error
    import urllib.request

    for path in ("/etc/passwd", str(ROOT / "pyproject.toml")):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{app}gradio_api/file={path}", timeout=10)


def test_missing_models_are_explained(tmp_path, photos, free_port):
    missing = ("--sd-model", str(tmp_path / "no-sd"), "--lolnerf-run", str(tmp_path / "nowhere"))
    process, url = start_app(tmp_path, free_port(), *missing, "--device", "cpu")
    try:
        import urllib.request

        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "No LOLNeRF model could be loaded" in page
        from gradio_client import handle_file
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="Stable Diffusion folder not found"):
            client(url).predict(handle_file(str(photos["cup"])), 0.75, "preview", 0, api_name="/reconstruct_object")
    finally:
        process.terminate()
        process.wait(30)


def open_with_the_cup(browser, url: str, photos: dict):
    """The "Any object" tab with the cup uploaded and its preview shown."""
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(url)
    page.get_by_role("tab", name="Any object").click()
    page.locator("input[type=file]").first.set_input_files(str(photos["cup"]))
    page.wait_for_function(  # the status box (a textarea) reports the mask once the preview is ready
        "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('mask from'))", timeout=60_000
    )
    return page


def test_browser_stop_ends_a_long_reconstruction_at_once(app, photos, chromium):
    """A visitor in Debian's chromium presses Stop during training: within 2 s the worker that ran the step is
    gone (killed, not waited on) and a fresh one has been started."""

    def current_worker() -> int | None:
        try:
            return worker_process(SERVER["pid"]).pid
        except AssertionError:  # between the kill and the new worker's start
            return None

    page = open_with_the_cup(chromium, app, photos)
    page.get_by_label("quick").first.check()
    page.get_by_role("button", name="Reconstruct").first.click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('training'))", timeout=180_000
    )
    worker = current_worker()
    started = time.time()
    page.get_by_role("button", name="Stop").first.click()
    while current_worker() in (worker, None) and time.time() - started < 10:
        time.sleep(0.02)
    stopped_after = time.time() - started
    print(f"Stop in the browser took {stopped_after:.2f} s")
    assert worker is not None and stopped_after < 2.0


def test_browser_example_reconstructed_and_seen_from_behind(tmp_path, free_port, chromium):
    """`python app.py` with no flags, as the README starts it, in Debian's chromium through Playwright: the packaged
    object prior, an example it never saw, the quick preset, then the turntable at 180 degrees and the 3D viewer
    turned by a drag: the screenshots are kept as artifacts."""
    ARTIFACTS.mkdir(exist_ok=True)
    process, url = start_app(tmp_path, free_port())
    try:
        page = chromium.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(url)
        page.get_by_role("tab", name="Any object").click()
        assert "packaged object prior" in page.locator("body").inner_text()
        page.get_by_text("house.png").first.click()  # the example: its preview and mask come with it
        page.wait_for_function(
            "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('mask from alpha'))",
            timeout=60_000,
        )
        page.get_by_label("quick").first.check()
        page.get_by_role("button", name="Reconstruct").first.click()
        # A guard against a hang, not a speed check (benchmarks/ time it): the quick preset took 6.5 min in CI on
        # 2026-12-04 and over 10 on the same machine busier that evening, the worker running at a lower priority.
        page.locator("video").first.wait_for(timeout=1_800_000)
        canvas = page.locator("canvas").first
        canvas.wait_for(timeout=60_000)
        time.sleep(3)  # let the viewer draw
        front = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=float)
        assert front.std() > 1.0, "the 3D viewer's canvas is blank"
        # The turntable's middle frame is the object from behind (frames 0..23 turn a full circle).
        page.locator("video").first.evaluate("v => { v.pause(); v.currentTime = v.duration / 2 + 0.01; }")
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] / 2, steps=20)
        page.mouse.up()
        time.sleep(2)
        turned = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=float)
        assert np.abs(turned - front).mean() > 1.0, "dragging did not turn the 3D viewer"
        page.screenshot(path=str(ARTIFACTS / "app-any-object.png"), full_page=True)
        print(json.dumps({"screenshot": str(ARTIFACTS / "app-any-object.png")}))
        # The photo's own view must hold: score distillation from this prior at too large a weight fogs it away
        # (measured: 28 dB at the packaged settings, 11 dB at ten times their weight).
        export = next((tmp_path / "onelook-app").glob("*/export"))
        photo = prepare_object_image(OBJECT_EXAMPLES / "house.png", size=QUALITY["quick"].image_size).rgb / 255.0
        view = np.asarray(Image.open(export / "view.png").convert("RGB")) / 255.0
        assert -10 * np.log10(np.square(view - photo).mean()) > 20.0
        back = Image.open(export / "views" / "12.png")  # the turntable's half turn: the house from behind
        back.resize((back.width * 4, back.height * 4)).save(ARTIFACTS / "app-any-object-back.png")
    finally:
        process.terminate()
        process.wait(30)
