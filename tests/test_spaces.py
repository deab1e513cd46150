"""The hosted-demo folder is complete and consistent with the package."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

SPACES = Path(__file__).resolve().parents[1] / "spaces"


def test_space_front_matter_and_files():
    text = (SPACES / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["sdk"] == "gradio" and (SPACES / front["app_file"]).is_file()
    import gradio

    assert front["sdk_version"] == gradio.__version__
    requirements = (SPACES / "requirements.txt").read_text()
    assert f"gradio=={gradio.__version__}" in requirements
    assert "libusb-1.0-0" in (SPACES / "packages.txt").read_text()
    assert re.search(r"from onelook\.app import main", (SPACES / "app.py").read_text())
