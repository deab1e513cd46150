"""Hugging Face Space entry: the onelook demo app, reachable from outside the container."""

import os

from onelook.app import main

if __name__ == "__main__":
    sd_model = os.environ.get("ONELOOK_SD_MODEL", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    main(
        ["--host", "0.0.0.0", "--port", os.environ.get("GRADIO_SERVER_PORT", "7860")]
        + (["--sd-model", sd_model] if sd_model else [])
    )
