"""The onelook demo: upload a photo, see the preprocessing, reconstruct it in 3D, view and download it.

Two tabs: "Any object" (RealFusion, a diffusion prior) and "Faces and other categories" (LOLNeRF, a trained
category model). Models come from command-line flags or environment variables; nothing is downloaded by the
app itself, and a tab whose model is missing says what to set while the rest of the app works.

    python app.py [--port N] [--host H] [--prior tiny] [--lolnerf-run DIR] [--sd-model ID_OR_FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onelook.data.crop import DEFAULT_CROP_SCALE, keypoint_crop_box

DEMO_MODEL = Path(__file__).parent / "assets" / "demo_lolnerf"
EXAMPLES = Path(__file__).parent / "assets" / "examples"
MAX_UPLOAD = "25mb"
QUALITY_NAMES = ["preview", "quick", "standard", "high"]  # preview: seconds, to see the flow; not the result
SESSION_TTL_S = 3600  # output folders older than this are deleted
LOLNERF_QUALITY = {
    "preview": (10, 32, 32),
    "quick": (100, 48, 64),
    "standard": (300, 96, 128),
    "high": (800, 128, 256),
}  # steps, px, mesh


@dataclass
class AppConfig:
    sd_model: str | None = None  # hub id or folder; None: the "Any object" tab explains what to set
    tiny_prior: bool = False  # sd_model is the tiny test prior (`--prior tiny`)
    lolnerf_run: Path | None = None  # a trained LOLNeRF run; None: the packaged demo model
    output_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "onelook-app")
    device: str | None = None


def _session_dir(config: AppConfig) -> Path:
    """A fresh folder for one request; folders older than SESSION_TTL_S are removed first."""
    config.output_root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in config.output_root.iterdir():
        if old.is_dir() and now - old.stat().st_mtime > SESSION_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    path = config.output_root / uuid.uuid4().hex
    path.mkdir()
    return path


def _load_upload(path: str | None):
    """The uploaded file through onelook's loader: every bad input becomes a gr.Error the visitor can read."""
    import gradio as gr

    from onelook.data.images import ImageError, load_image

    if not path:
        raise gr.Error("Upload a photo first (or pick an example).")
    try:
        return load_image(path)
    except ImageError as exc:
        raise gr.Error(f"This file cannot be used: {exc}.") from exc


# --- "Any object" (RealFusion) -----------------------------------------------------------------------------


def object_preview(path: str | None, object_fraction: float):
    """The crop and mask RealFusion will use, as an overlay."""
    import gradio as gr

    from onelook.data.images import ImageError
    from onelook.data.object_image import prepare_object_image

    _load_upload(path)
    try:
        prepared = prepare_object_image(path, size=256, object_fraction=object_fraction)
    except ImageError as exc:
        raise gr.Error(str(exc)) from exc
    overlay = prepared.rgb.astype(np.float32)
    overlay[~prepared.mask] = overlay[~prepared.mask] * 0.3 + np.array([40, 40, 160]) * 0.7
    return overlay.astype(np.uint8), f"mask from {prepared.mask_source}; background shown in blue"


def object_reconstruct(config: AppConfig, path, object_fraction, quality, seed, progress):
    """Generator, so that Stop interrupts it between steps: yields status updates, then (status, turntable,
    depth, normals, downloads, export paths). A second, plain event puts the GLB into the 3D viewer, which
    stays blank when a generator fills it."""
    import gradio as gr

    from onelook.data.images import ImageError
    from onelook.data.object_image import prepare_object_image
    from onelook.export import export_all
    from onelook.guidance.stable_diffusion import PriorUnavailableError
    from onelook.realfusion.train import QUALITY, train_realfusion

    if config.sd_model is None:
        raise gr.Error("No diffusion model is set: start the app with --sd-model ID_OR_FOLDER (or --prior tiny).")
    _load_upload(path)
    try:
        prepare_object_image(path, object_fraction=object_fraction)  # checks the photo before any heavy work
    except ImageError as exc:
        raise gr.Error(str(exc)) from exc
    out = _session_dir(config)
    preset = QUALITY[quality]
    result = None
    try:
        for update in train_realfusion(
            Path(path),
            out,
            preset,
            config.sd_model,
            object_fraction=object_fraction,
            seed=int(seed),
            device=config.device,
        ):
            progress((update.step, update.total), desc=update.stage)
            result = update.result
            yield f"{update.stage}: step {update.step} of {update.total}", *[gr.skip()] * 5
    except PriorUnavailableError as exc:
        raise gr.Error(str(exc)) from exc
    progress(0.99, desc="exporting")
    paths = export_all(result, out / "export", mesh_resolution=preset.mesh_resolution)
    yield "done", *show_results(paths)[1:], {name: str(path) for name, path in paths.items()}


def show_results(paths: dict):
    """(3D model, turntable, depth, normals, downloads) from `export_all`'s paths."""
    downloads = [str(paths[k]) for k in ("mesh_glb", "mesh_obj", "mesh_ply")]
    return (
        str(paths["mesh_glb"]),
        str(paths["turntable"]),
        str(paths["depth"]),
        str(paths["normals"]),
        downloads,
    )


# --- "Faces and other categories" (LOLNeRF) ----------------------------------------------------------------


class FaceTab:
    """Holds the LOLNeRF model (loaded once) and the examples' known keypoints."""

    def __init__(self, config: AppConfig):
        from onelook.lolnerf import Reconstructor

        self.config = config
        self.run = config.lolnerf_run or DEMO_MODEL
        self.is_demo = config.lolnerf_run is None
        self.error = None
        self.reconstructor = None
        try:
            self.reconstructor = Reconstructor.from_run(self.run, device=config.device)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            self.error = (
                f"No LOLNeRF model could be loaded from {self.run} ({exc}). Start the app with --lolnerf-run DIR."
            )
        known = EXAMPLES / "landmarks.json"
        self.known_landmarks = json.loads(known.read_text()) if known.is_file() else {}

    def landmarks(self, path: str, rgb: np.ndarray):
        """Keypoints of a bundled example (known), else MediaPipe's five face landmarks; and a mask."""
        import gradio as gr

        from onelook.landmarks.mediapipe_face import FaceLandmarker, NoFaceError

        name = Path(path).name
        if name in self.known_landmarks:
            return np.array(self.known_landmarks[name], dtype=float), None
        detector = FaceLandmarker()
        try:
            detection = detector.detect(rgb)
        except NoFaceError as exc:
            raise gr.Error("No face was found in this photo. Try a clear, front-facing photo of one face.") from exc
        finally:
            detector.close()
        return detection.keypoints, detection.mask

    def _require_model(self):
        import gradio as gr

        if self.reconstructor is None:
            raise gr.Error(self.error)
        return self.reconstructor

    def preview(self, path: str | None):
        import cv2

        from onelook.cameras.pose import estimate_pose

        recon = self._require_model()
        rgb = _load_upload(path).rgb
        keypoints, mask = self.landmarks(path, rgb)
        crop_scale, crop_focal, crop_size = recon.model.crop_settings.tolist()
        _, _, side = keypoint_crop_box(keypoints, crop_scale or DEFAULT_CROP_SCALE)
        c2w, residual = estimate_pose(
            recon.model.canonical_keypoints.cpu().numpy(), keypoints, crop_focal * side / crop_size, rgb.shape[:2]
        )
        shown = rgb.copy()
        if mask is not None:
            shown[mask < 0.5] = (shown[mask < 0.5] * 0.35).astype(np.uint8)
        radius = max(2, int(0.01 * max(rgb.shape[:2])))
        for x, y in keypoints:
            cv2.circle(shown, (int(x), int(y)), radius, (255, 40, 40), -1)
        forward = -c2w[:3, 2]  # where the camera looks, in the model's frame (front of the object faces -Y)
        yaw = np.degrees(np.arctan2(-forward[0], forward[1]))
        pitch = np.degrees(np.arcsin(np.clip(-forward[2], -1, 1)))
        return shown, f"head pose: yaw {yaw:+.0f}°, pitch {pitch:+.0f}° (keypoint fit {residual:.1f} px)"

    def reconstruct(self, path, quality, seed, progress):
        """Generator like `object_reconstruct`: status updates, then (status, turntable, depth, normals,
        downloads, export paths, the state the angle sliders render from)."""
        import gradio as gr

        from onelook.export import export_all

        recon = self._require_model()
        rgb = _load_upload(path).rgb
        keypoints, mask = self.landmarks(path, rgb)
        steps, max_size, mesh_resolution = LOLNERF_QUALITY[quality]
        for step, result in recon.fit_steps(rgb, keypoints, mask, steps=steps, seed=int(seed), progress=False):
            progress((step, steps), desc="fitting the photo's latent code")
            if result is None:
                yield f"fitting: step {step} of {steps}", *[gr.skip()] * 6
        progress(0.99, desc="rendering and meshing")
        paths = export_all(result, _session_dir(self.config), mesh_resolution=mesh_resolution, max_size=max_size)
        state = {
            "latent": result.latent.cpu().numpy().tolist(),
            "c2w": result.camera_to_world.tolist(),
            "focal": result.focal_length,
            "size": list(result.image_size),
            "max_size": max_size,
        }
        yield "done", *show_results(paths)[1:], {name: str(p) for name, p in paths.items()}, state

    def render_angle(self, state: dict | None, yaw: float, pitch: float):
        import gradio as gr
        import torch

        from onelook.cameras.geometry import turn_about_origin

        recon = self._require_model()
        if not state:
            raise gr.Error("Reconstruct a photo first.")
        c2w = turn_about_origin(np.array(state["c2w"]), yaw, pitch)
        scale = min(1.0, state["max_size"] / max(state["size"]))
        size = tuple(max(1, round(s * scale)) for s in state["size"])
        latent = torch.tensor(state["latent"], dtype=torch.float32)
        return recon.render(latent, c2w, state["focal"] * scale, size)["rgb"]

    def interpolate(self, path_a, path_b, quality, progress):
        import torch

        from onelook.export.images import write_video

        recon = self._require_model()
        steps = LOLNERF_QUALITY[quality][0]
        latents = []
        for i, path in enumerate((path_a, path_b)):
            progress(0.4 * i, desc=f"fitting photo {i + 1}")
            rgb = _load_upload(path).rgb
            keypoints, mask = self.landmarks(path, rgb)
            latents.append(recon.fit(rgb, landmarks=keypoints, mask=mask, steps=steps, progress=False).latent)
        progress(0.8, desc="rendering")
        c2w, focal = recon.orbit_camera(0.0, 0.0)
        size = int(recon.model.crop_settings[2])
        frames = [
            recon.render(torch.lerp(latents[0], latents[1], t), c2w, focal, size)["rgb"] for t in np.linspace(0, 1, 12)
        ]
        return str(write_video(frames + frames[::-1], _session_dir(self.config) / "interpolation.mp4", fps=8))


# --- the page --------------------------------------------------------------------------------------------


def _result_panel():
    """The results both tabs show: 3D viewer, turntable, depth, normals, downloads."""
    import gradio as gr

    with gr.Row():
        model = gr.Model3D(label="3D model (drag to orbit)", clear_color=(1, 1, 1, 1), height=360)
        video = gr.Video(label="Turntable", autoplay=True, height=360)
    with gr.Row():
        depth = gr.Image(label="Depth", interactive=False)
        normals = gr.Image(label="Normals", interactive=False)
        files = gr.File(label="Downloads", file_count="multiple")
    return model, video, depth, normals, files


def build_demo(config: AppConfig):
    import gradio as gr

    faces = FaceTab(config)
    examples = sorted(EXAMPLES.glob("*.png")) if EXAMPLES.is_dir() else []
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
            obj_model, obj_video, obj_depth, obj_normals, obj_files = _result_panel()
            for trigger in (obj_image.upload, obj_fraction.release):
                trigger(object_preview, [obj_image, obj_fraction], [obj_preview, obj_status], api_name=False)

            def run_object(path, fraction, quality, seed, progress=gr.Progress()):
                yield from object_reconstruct(config, path, fraction, quality, seed, progress)

            obj_paths = gr.State()
            event = obj_go.click(
                run_object,
                [obj_image, obj_fraction, obj_quality, obj_seed],
                [obj_status, obj_video, obj_depth, obj_normals, obj_files, obj_paths],
                api_name="reconstruct_object",
                concurrency_id="heavy",
            )
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
            face_image.upload(faces.preview, [face_image], [face_preview, face_status], api_name="face_preview")

            def run_face(path, quality, seed, progress=gr.Progress()):
                yield from faces.reconstruct(path, quality, seed, progress)

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
                slider.release(faces.render_angle, [face_state, yaw, pitch], [angle_view], api_name=False)
            gr.Markdown("### Between two faces")
            with gr.Row():
                face_a = gr.File(label="Photo A", file_types=["image"], type="filepath")
                face_b = gr.File(label="Photo B", file_types=["image"], type="filepath")
                blend = gr.Video(label="Interpolation", autoplay=True)
            blend_go = gr.Button("Interpolate")

            def run_blend(path_a, path_b, quality, progress=gr.Progress()):
                return faces.interpolate(path_a, path_b, quality, progress)

            blend_go.click(
                run_blend, [face_a, face_b, face_quality], [blend], api_name="interpolate_faces", concurrency_id="heavy"
            )
            gr.Button("Stop").click(None, cancels=[face_event])
    # Reconstructions share one slot ("heavy"): one runs at a time, the others wait in the queue.
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="onelook demo app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--prior", choices=["tiny"], help="run 'Any object' with a tiny test prior (offline)")
    parser.add_argument("--sd-model", default=os.environ.get("ONELOOK_SD_MODEL"), help="hub id or local folder")
    parser.add_argument("--lolnerf-run", type=Path, default=os.environ.get("ONELOOK_LOLNERF_RUN"))
    parser.add_argument("--device", default=os.environ.get("ONELOOK_DEVICE"), help="cpu, cuda, ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = AppConfig(sd_model=args.sd_model, lolnerf_run=args.lolnerf_run, device=args.device)
    if args.prior == "tiny":
        from onelook.guidance.tiny import build_tiny_stable_diffusion

        config.sd_model = str(build_tiny_stable_diffusion(config.output_root.parent / "onelook-tiny-prior"))
        config.tiny_prior = True
    demo = build_demo(config)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(config.output_root)],
        show_error=True,
    )
