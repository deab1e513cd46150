"""Shared fixtures: a small synthetic category and the dataset `onelook prepare` makes of it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # share the cores between the workers (and their subprocesses)
    cores_per_worker = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores_per_worker)))


@dataclass(frozen=True)
class NsTrain:
    """The real `ns-train` of this environment, its output captured."""

    executable: str = str(Path(sys.executable).parent / "ns-train")

    def run(self, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)

    def train(
        self, method: str, data: Path, output_dir: Path, *options: str, iterations: int = 4, **kwargs
    ) -> subprocess.CompletedProcess:
        """`iterations` training steps of `method` on the CPU, saved at the last one; `options` follow."""
        common = ["--data", str(data), "--machine.device-type", "cpu", "--output-dir", str(output_dir)]
        steps = ["--max-num-iterations", str(iterations), "--steps-per-save", str(iterations)]
        return self.run(method, *common, *steps, *options, **kwargs)


@pytest.fixture(scope="session")
def ns_train() -> NsTrain:
    return NsTrain()


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function that gives a TCP port free on the loopback address at the moment it is called."""

    def find() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return find


@pytest.fixture
def chromium():
    """Debian's chromium through Playwright (never a downloaded browser), headless, drawing WebGL in software."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
    args += ["--disable-background-networking", "--disable-component-update", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from onelook.data.synthetic import generate

    return generate(n=36, size=64, seed=7, out=tmp_path_factory.mktemp("synth"), show_progress=False)


@pytest.fixture(scope="session")
def synth_dataset(synth_dir, tmp_path_factory) -> Path:
    from onelook.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("dataset")
    prepare_dataset(
        synth_dir / "images",
        out,
        landmarks=synth_dir / "landmarks.json",
        masks=synth_dir / "masks",
        size=64,
        workers=1,
        show_progress=False,
    )
    return out


@pytest.fixture(scope="session")
def trained_run(synth_dataset, tmp_path_factory) -> Path:
    """A real (short) LOLNeRF training run on the CPU, through nerfstudio's trainer, as `ns-train` does it."""
    import copy

    from nerfstudio.scripts.train import train_loop

    from onelook.configs import lolnerf_small_method

    config = copy.deepcopy(lolnerf_small_method.config)
    config.data = synth_dataset
    config.pipeline.datamanager.data = synth_dataset
    config.output_dir = tmp_path_factory.mktemp("runs")
    config.machine.device_type = "cpu"
    config.max_num_iterations = 300
    config.steps_per_save = 300
    config.pipeline.datamanager.train_num_rays_per_batch = 512
    config.pipeline.model.hard_surface_start_step = 150
    config.set_timestamp()
    config.save_config()
    train_loop(local_rank=0, world_size=1, config=config)
    return config.get_base_dir()


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion saved in diffusers' layout, so the real from_pretrained path runs."""
    from onelook.guidance.tiny import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def object_photo(tmp_path_factory) -> Path:
    """A real photo of an object (scikit-image's coffee cup), small, with its alpha from GrabCut-free truth:
    a centred ellipse, so the tests do not depend on segmentation quality."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rgb = np.asarray(Image.fromarray(data.coffee()).resize((96, 64)))
    yy, xx = np.mgrid[0:64, 0:96]
    alpha = ((((xx - 48) / 30) ** 2 + ((yy - 32) / 24) ** 2) <= 1).astype(np.uint8) * 255
    path = tmp_path_factory.mktemp("photo") / "cup.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    return path


def _flat_png(path: Path, width: int, height: int, value: int = 200) -> Path:
    """A real, flat RGB PNG of any size, written row block by row block (never held in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(1)
    block = (b"\0" + bytes([value]) * (3 * width)) * 100  # 100 rows, each with its filter byte
    data = b"".join(compressor.compress(block) for _ in range(height // 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def huge_images(tmp_path_factory) -> dict[str, Path]:
    """Uploads that are small on disk but large decoded: a flat 40000x40000 PNG (21 MB, 4.8 GB of pixels) and a
    16-bit grayscale 12000x9000 PNG of a face."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("huge")
    face = Image.fromarray(data.astronaut()).convert("L").resize((9000, 9000))
    canvas = np.full((9000, 12000), 128 * 257, np.uint16)
    canvas[:, 1500:10500] = np.asarray(face, dtype=np.uint16) * 257
    deep = folder / "deep16.png"
    Image.fromarray(canvas).save(deep, compress_level=1)
    return {"flat": _flat_png(folder / "flat.png", 40000, 40000), "deep16": deep}


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims `width` x `height` (a few hundred bytes: the pixel data is a stub)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def png_header_only():
    """Writes a PNG whose header claims any size (a decompression-bomb shape)."""
    return _png_header_only
