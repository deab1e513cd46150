"""onelook: single images to 3D with LOLNeRF and RealFusion, as nerfstudio plugins and a Gradio demo."""

__version__ = "0.1.0"
