"""Where onelook computes when the user does not say: the GPU when there is one, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> str:
    """`device` as a string, or "cuda" when it is None and a GPU is there, else "cpu"."""
    if device is not None:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"
