"""A tiny, randomly initialised Stable Diffusion (a few MB) in diffusers' folder layout.

It has the real architecture classes at toy sizes, so every code path that loads and runs Stable
Diffusion (from_pretrained, SDS, textual inversion) runs offline in seconds: tests use it, and so does the
demo app's `--prior tiny` mode. It knows nothing about images: results made with it show the pipeline
working, not a plausible reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


def byte_vocab() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab


@dataclass(frozen=True)
class SmallSDSizes:
    """Widths of a small Stable Diffusion (the real architecture classes): the VAE halves the resolution once."""

    image_size: int
    text_width: int = 32
    text_intermediate: int = 37
    text_layers: int = 2
    unet_channels: tuple[int, ...] = (32, 64)  # one level per entry; all but the first attend to the text
    vae_channels: tuple[int, ...] = (16, 32)
    norm_groups: int = 8


def small_stable_diffusion(tokenizer, sizes: SmallSDSizes, prediction_type: str = "epsilon"):
    """Randomly initialised (text encoder, UNet, VAE, scheduler) of the given sizes, with SD 1.x's schedule; the
    UNet to be trained to predict `prediction_type` ("epsilon" or "v_prediction")."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
            hidden_size=sizes.text_width,
            intermediate_size=sizes.text_intermediate,
            num_attention_heads=4,
            num_hidden_layers=sizes.text_layers,
            vocab_size=len(vocab),
            max_position_embeddings=77,
        )
    )
    levels = len(sizes.unet_channels)
    unet = UNet2DConditionModel(
        block_out_channels=sizes.unet_channels,
        layers_per_block=1,
        sample_size=sizes.image_size // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", *["CrossAttnDownBlock2D"] * (levels - 1)),
        up_block_types=(*["CrossAttnUpBlock2D"] * (levels - 1), "UpBlock2D"),
        cross_attention_dim=sizes.text_width,
        norm_num_groups=sizes.norm_groups,
    )
    vae = AutoencoderKL(
        block_out_channels=list(sizes.vae_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(sizes.vae_channels),
        up_block_types=["UpDecoderBlock2D"] * len(sizes.vae_channels),
        latent_channels=4,
        norm_num_groups=sizes.norm_groups,
        sample_size=sizes.image_size,
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        clip_sample=False,
        prediction_type=prediction_type,
    )
    return text_encoder, unet, vae, scheduler


def build_tiny_stable_diffusion(folder: str | Path, seed: int = 0, latent_size: int = 8) -> Path:
    """Writes a tiny pipeline to `folder` (if not already there) and returns the folder.

    The VAE halves the resolution once, so images are 2 * latent_size pixels square.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=77)
    text_encoder, unet, vae, scheduler = small_stable_diffusion(tokenizer, SmallSDSizes(2 * latent_size))
    return save_stable_diffusion(folder, tokenizer, text_encoder, unet, vae, scheduler, torch.float32)


def save_stable_diffusion(folder: Path, tokenizer, text_encoder, unet, vae, scheduler, dtype: torch.dtype) -> Path:
    """Writes the parts as a diffusers Stable Diffusion folder (model_index.json, one subfolder each, weights as
    safetensors in `dtype`), which `StableDiffusionPrior.load` and diffusers' pipelines read."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(dtype).save_pretrained(folder, safe_serialization=True)
    return Path(folder)
