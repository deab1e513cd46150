"""The onelook demo: upload a photo, see the preprocessing, reconstruct it in 3D, view and download it.

Two tabs: "Any object" (RealFusion, a diffusion prior) and "Faces and other categories" (LOLNeRF, a trained
category model). Models come from command-line flags or environment variables, else the packaged ones (a small
object prior trained on onelook's synthetic objects, a LOLNeRF model of its synthetic heads); nothing is
downloaded by the app itself, and a tab whose model is missing says what to set while the rest of the app works.

Every reconstruction (both tabs, and the interpolation) runs in one worker process (`onelook.worker`,
`onelook.app_jobs`), one at a time: Stop kills that process at once and a fresh one starts; a crash or an
out-of-memory kill there gives its visitor an error and leaves the server serving the others. The worker keeps
the LOLNeRF model and the diffusion prior loaded between requests. Previews and angle renders are light and
run in the server process. This module holds the page and its wiring only.

    python app.py [--port N] [--host H] [--prior tiny] [--lolnerf-run DIR] [--sd-model ID_OR_FOLDER]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import torch

from onelook.app_jobs import ExampleKeypoints, face_keypoints, load_reconstructor, load_upload
from onelook.assets import DEMO_MODEL, EXAMPLES, OBJECT_EXAMPLES, OBJECT_PRIOR
from onelook.cameras.geometry import turn_about_origin
from onelook.data.images import ImageError
from onelook.data.object_image import prepare_object_image
from onelook.guidance.tiny import build_tiny_stable_diffusion
from onelook.worker import JobError, JobResult, JobUpdate, WorkerDiedError, WorkerProcess

MAX_UPLOAD = "25mb"
QUALITY_NAMES = ["preview", "quick", "standard", "high"]  # preview: seconds, to see the flow; not the result
SESSION_TTL_S = 3600  # output folders whose job ended longer ago than this are deleted
PREVIEW_SIZE = 256


@dataclass
class AppConfig:
    sd_model: str | None = None  # hub id or folder (main(): the packaged object prior); None: the tab says what to set
    tiny_prior: bool = False  # sd_model is the tiny test prior (`--prior tiny`)
    lolnerf_run: Path | None = None  # a trained LOLNeRF run; None: the packaged demo model
    output_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "onelook-app")
    device: str | None = None


class SessionFolders:
    """One output folder per request. A folder is deleted once its job ended more than `ttl` seconds ago, never
    while its job runs; folders left by an earlier run of the app go by their newest file."""

    def __init__(self, root: Path, ttl: float = SESSION_TTL_S):
        self.root, self.ttl = root, ttl
        self._running: set[Path] = set()
        self._ended: dict[Path, float] = {}  # folder -> when its job ended

    def new(self) -> Path:
        self.clean_up()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / uuid.uuid4().hex
        path.mkdir()
        self._running.add(path)
        return path

    def release(self, path: Path) -> None:
        self._running.discard(path)
        self._ended[path] = time.time()

    def last_used(self, path: Path) -> float:
        if path in self._running:
            return time.time()
        if path in self._ended:
            return self._ended[path]
        return max((p.stat().st_mtime for p in path.rglob("*")), default=path.stat().st_mtime)

    def clean_up(self) -> None:
        if not self.root.is_dir():
            return
        now = time.time()
        for folder in self.root.iterdir():
            if folder.is_dir() and now - self.last_used(folder) > self.ttl:
                shutil.rmtree(folder, ignore_errors=True)
                self._ended.pop(folder, None)


def _shown_errors(handler):
    """Sync handlers: a JobError (bad upload, no face, no model) reaches the visitor as a gr.Error."""

    @functools.wraps(handler)
    def wrapped(*args):
        try:
            return handler(*args)
        except JobError as exc:
            raise gr.Error(str(exc)) from exc

    return wrapped


class Jobs:
    """The server's side of the worker: runs a job, turns its updates into progress and its errors into
    messages for the visitor, and gives each request its own output folder."""

    def __init__(self, config: AppConfig):
        self.folders = SessionFolders(config.output_root)
        self.worker = WorkerProcess("onelook.app_jobs.AppJobs", config.sd_model, config.lolnerf_run, config.device)

    async def run(self, job: str, args: tuple, progress: gr.Progress) -> AsyncIterator[str | JobResult]:
        """Yields a status line per update, then the JobResult."""
        out = self.folders.new()
        try:
            async for message in self.worker.run(job, *args, out):
                if isinstance(message, JobUpdate):
                    progress((message.step, message.total), desc=message.stage)
                    yield f"{message.stage}: step {message.step} of {message.total}"
                else:
                    yield message
        except JobError as exc:
            raise gr.Error(str(exc)) from exc
        except WorkerDiedError as exc:
            raise gr.Error(f"Your reconstruction was lost: {exc}. Please try again.") from exc
        except RuntimeError as exc:  # an unexpected failure in the worker: its first line, the rest in the log
            print(exc, flush=True)
            raise gr.Error(f"The reconstruction failed ({str(exc).splitlines()[0]}).") from exc
        finally:
            self.folders.release(out)


def show_results(paths: dict):
    """(turntable, depth, normals, downloads) from `export_all`'s paths."""
    downloads = [paths[k] for k in ("mesh_glb", "mesh_obj", "mesh_ply")]
    return paths["turntable"], paths["depth"], paths["normals"], downloads


# --- "Any object" (RealFusion) -----------------------------------------------------------------------------


@_shown_errors
def object_preview(path: str | None, object_fraction: float):
    """The crop and mask RealFusion will use, as an overlay."""
    try:
        prepared = prepare_object_image(load_upload(path), size=PREVIEW_SIZE, object_fraction=object_fraction)
    except ImageError as exc:
        raise JobError(str(exc)) from exc
    overlay = prepared.rgb.astype(np.float32)
    overlay[~prepared.mask] = overlay[~prepared.mask] * 0.3 + np.array([40, 40, 160]) * 0.7
    return overlay.astype(np.uint8), f"mask from {prepared.mask_source}; background shown in blue"


# --- "Faces and other categories" (LOLNeRF) ----------------------------------------------------------------


class FaceTab:
    """The light LOLNeRF work done in the server: the landmark preview and renders at other angles (a copy of
    the model is loaded here too; fits run in the worker)."""

    def __init__(self, config: AppConfig):
        self.run = config.lolnerf_run or DEMO_MODEL
        self.is_demo = config.lolnerf_run is None
        self.reconstructor, self.error = load_reconstructor(self.run, config.device)
        self.examples = ExampleKeypoints()

    def _require_model(self):
        if self.reconstructor is None:
            raise JobError(self.error)
        return self.reconstructor

    def preview(self, path: str | None):
        recon = self._require_model()
        upload = load_upload(path)
        rgb = upload.rgb
        keypoints, mask = face_keypoints(path, rgb, self.examples)
        placement = recon.locate(keypoints, rgb.shape[:2], upload.focal_length)
        shown = rgb.copy()
        if mask is not None:
            shown[mask < 0.5] = (shown[mask < 0.5] * 0.35).astype(np.uint8)
        radius = max(2, int(0.01 * max(rgb.shape[:2])))
        for x, y in keypoints:
            cv2.circle(shown, (int(x), int(y)), radius, (255, 40, 40), -1)
        yaw, pitch = placement.yaw_pitch_deg
        return shown, f"head pose: yaw {yaw:+.0f}°, pitch {pitch:+.0f}° (keypoint fit {placement.residual_px:.1f} px)"

    def render_angle(self, state: dict | None, yaw: float, pitch: float):
        recon = self._require_model()
        if not state:
            raise JobError("Reconstruct a photo first.")
        c2w = turn_about_origin(np.array(state["c2w"]), yaw, pitch)
        scale = min(1.0, state["max_size"] / max(state["size"]))
        size = tuple(max(1, round(s * scale)) for s in state["size"])
        latent = torch.tensor(state["latent"], dtype=torch.float32)
        return recon.render(latent, c2w, state["focal"] * scale, size)["rgb"]


# --- the page --------------------------------------------------------------------------------------------


def _result_panel():
    """The results both tabs show: 3D viewer, turntable, depth, normals, downloads."""
    with gr.Row():
        model = gr.Model3D(label="3D model (drag to orbit)", clear_color=(1, 1, 1, 1), height=360)
        video = gr.Video(label="Turntable", autoplay=True, height=360)
    with gr.Row():
        depth = gr.Image(label="Depth", interactive=False)
        normals = gr.Image(label="Normals", interactive=False)
        files = gr.File(label="Downloads", file_count="multiple")
    return model, video, depth, normals, files


def build_demo(config: AppConfig) -> gr.Blocks:
    faces = FaceTab(config)
    jobs = Jobs(config)
    examples = sorted(EXAMPLES.glob("*.png")) if EXAMPLES.is_dir() else []
    packaged_prior = config.sd_model is not None and Path(config.sd_model).resolve() == OBJECT_PRIOR.resolve()
    object_examples = sorted(OBJECT_EXAMPLES.glob("*.png")) if OBJECT_EXAMPLES.is_dir() else []
    skip_results = [gr.skip()] * 5  # status updates leave the result components as they are

    # Reconstructions: async generators, so that Stop cancels them at once (the worker is killed, not waited on).
    async def run_object(path, fraction, quality, seed, progress=gr.Progress()):
        async for message in jobs.run("reconstruct_object", (path, fraction, quality, int(seed)), progress):
            if isinstance(message, JobResult):
                yield "done", *show_results(message.value), message.value
            else:
                yield message, *skip_results

    async def run_face(path, quality, seed, progress=gr.Progress()):
        async for message in jobs.run("reconstruct_face", (path, quality, int(seed)), progress):
            if isinstance(message, JobResult):
                paths = message.value["paths"]
                yield "done", *show_results(paths), paths, message.value["state"]
            else:
                yield message, *skip_results, gr.skip()

    async def run_blend(path_a, path_b, quality, progress=gr.Progress()):
        async for message in jobs.run("interpolate_faces", (path_a, path_b, quality), progress):
            if isinstance(message, JobResult):
                yield message.value

    with gr.Blocks(title="onelook: single images to 3D", delete_cache=(600, SESSION_TTL_S)) as demo:
        gr.Markdown("# onelook\nOne photo in, a 3D object out: orbit it, and download it as GLB, OBJ or PLY.")
        with gr.Tab("Any object"):
            if config.sd_model is None:
                gr.Markdown(
                    "**No diffusion model is set.** Start the app with `--sd-model stable-diffusion-v1-5/"
                    "stable-diffusion-v1-5` (or a local folder holding it); a GPU is needed for useful speed."
                )
            elif config.tiny_prior:
                gr.Markdown("Running with a **tiny test prior**: the flow works end to end, the 3D is not meaningful.")
            elif packaged_prior:
                gr.Markdown(
                    "Using the packaged **object prior**, a small diffusion model trained on onelook's synthetic "
                    f"objects ({', '.join(f'{path.stem}s' for path in object_examples)}), not on photos: it knows "
                    "those, so try the examples, one of each it never saw (the quick preset takes a few minutes on "
                    "a CPU). Start the "
                    "app with `--sd-model stable-diffusion-v1-5/stable-diffusion-v1-5` for any object (a GPU is "
                    "needed for useful speed)."
                )
            with gr.Row():
                with gr.Column():
                    obj_image = gr.File(label="Photo of an object", file_types=["image"], type="filepath")
                    obj_fraction = gr.Slider(0.5, 0.9, 0.75, step=0.05, label="Foreground ratio")
                    obj_quality = gr.Radio(QUALITY_NAMES, value="quick", label="Quality")
                    obj_seed = gr.Number(0, precision=0, label="Seed")
                    with gr.Row():
                        obj_go = gr.Button("Reconstruct", variant="primary")
                        obj_stop = gr.Button("Stop")
                with gr.Column():
                    obj_preview = gr.Image(label="What the method will use", interactive=False)
                    obj_status = gr.Textbox(label="Status", interactive=False)
            if packaged_prior and object_examples:
                gr.Examples(
                    [[str(path), 0.75] for path in object_examples],
                    [obj_image, obj_fraction],
                    [obj_preview, obj_status],
                    fn=object_preview,
                    run_on_click=True,
                    label="Examples: objects the prior never saw (front photos)",
                )
            obj_model, obj_video, obj_depth, obj_normals, obj_files = _result_panel()
            for trigger in (obj_image.upload, obj_fraction.release):
                trigger(object_preview, [obj_image, obj_fraction], [obj_preview, obj_status], api_name=False)
            obj_paths = gr.State()
            event = obj_go.click(
                run_object,
                [obj_image, obj_fraction, obj_quality, obj_seed],
                [obj_status, obj_video, obj_depth, obj_normals, obj_files, obj_paths],
                api_name="reconstruct_object",
                concurrency_id="heavy",
            )
            # The 3D viewer stays blank when a generator fills it: a plain follow-up event does.
            event.success(lambda paths: paths["mesh_glb"], [obj_paths], [obj_model], api_name=False)
            obj_stop.click(None, cancels=[event])

        with gr.Tab("Faces and other categories"):
            if faces.error:
                gr.Markdown(f"**{faces.error}**")
            elif faces.is_demo:
                gr.Markdown(
                    "Using the packaged **demo model**, trained on onelook's synthetic head-like category "
                    "(`onelook synth`), not on real faces: try the examples. Start the app with "
                    "`--lolnerf-run DIR` for a model trained with `ns-train lolnerf` on real photos."
                )
            with gr.Row():
                with gr.Column():
                    face_image = gr.File(label="Photo", file_types=["image"], type="filepath")
                    if examples:
                        gr.Examples([[str(p)] for p in examples], [face_image], label="Examples")
                    face_quality = gr.Radio(QUALITY_NAMES, value="quick", label="Quality")
                    face_seed = gr.Number(0, precision=0, label="Seed")
                    face_go = gr.Button("Reconstruct", variant="primary")
                with gr.Column():
                    face_preview = gr.Image(label="Landmarks and mask", interactive=False)
                    face_status = gr.Textbox(label="Status", interactive=False)
            face_model, face_video, face_depth, face_normals, face_files = _result_panel()
            face_state = gr.State()
            with gr.Row():
                yaw = gr.Slider(-60, 60, 0, step=1, label="Yaw")
                pitch = gr.Slider(-30, 30, 0, step=1, label="Pitch")
                angle_view = gr.Image(label="Seen from there", interactive=False)
            face_image.upload(
                _shown_errors(faces.preview), [face_image], [face_preview, face_status], api_name="face_preview"
            )
            face_paths = gr.State()
            face_event = face_go.click(
                run_face,
                [face_image, face_quality, face_seed],
                [face_status, face_video, face_depth, face_normals, face_files, face_paths, face_state],
                api_name="reconstruct_face",
                concurrency_id="heavy",
            )
            face_event.success(lambda paths: paths["mesh_glb"], [face_paths], [face_model], api_name=False)
            for slider in (yaw, pitch):
                slider.release(
                    _shown_errors(faces.render_angle), [face_state, yaw, pitch], [angle_view], api_name=False
                )
            gr.Markdown("### Between two faces")
            with gr.Row():
                face_a = gr.File(label="Photo A", file_types=["image"], type="filepath")
                face_b = gr.File(label="Photo B", file_types=["image"], type="filepath")
                blend = gr.Video(label="Interpolation", autoplay=True)
            blend_event = gr.Button("Interpolate").click(
                run_blend, [face_a, face_b, face_quality], [blend], api_name="interpolate_faces", concurrency_id="heavy"
            )
            gr.Button("Stop").click(None, cancels=[face_event, blend_event])
    # Reconstructions share one slot ("heavy"), as they share one worker: one runs, the others wait in the queue.
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="onelook demo app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--prior", choices=["tiny"], help="run 'Any object' with a tiny test prior (offline)")
    parser.add_argument(
        "--sd-model",
        default=os.environ.get("ONELOOK_SD_MODEL"),
        help="hub id or local folder of a Stable Diffusion model (default: the packaged object prior)",
    )
    parser.add_argument("--lolnerf-run", type=Path, default=os.environ.get("ONELOOK_LOLNERF_RUN"))
    parser.add_argument("--device", default=os.environ.get("ONELOOK_DEVICE"), help="cpu, cuda, ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # An empty ONELOOK_SD_MODEL is no model given, as an unset one.
    config = AppConfig(sd_model=args.sd_model or None, lolnerf_run=args.lolnerf_run, device=args.device)
    if args.prior == "tiny":
        config.sd_model = str(build_tiny_stable_diffusion(config.output_root.parent / "onelook-tiny-prior"))
        config.tiny_prior = True
    elif config.sd_model is None and (OBJECT_PRIOR / "unet").is_dir():
        config.sd_model = str(OBJECT_PRIOR)
    demo = build_demo(config)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(config.output_root)],
        show_error=True,
    )
