"""A frozen Stable Diffusion model as a prior: prompt encoding with learned tokens, and score distillation.

Loaded from a Hugging Face hub id or a local folder in diffusers' layout (vae/, unet/, text_encoder/,
tokenizer/, scheduler/). fp16 on a GPU, fp32 on the CPU. Nothing is downloaded when the weights are already
cached or the id is a folder; offline with no weights, the error says what to give instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from onelook.guidance.prior import DiffusionPrior

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


PREDICTION_TYPES = ("epsilon", "v_prediction")  # what a UNet may be trained to output, and this module reads

_SHARED: dict[tuple, StableDiffusionPrior] = {}  # shared_prior's priors, by their settings


class PriorUnavailableError(RuntimeError):
    """The diffusion model's weights cannot be loaded (offline without them, or a wrong folder)."""


def model_source(model: str | Path) -> str:
    """A hub id as it is, a folder with `~` expanded (`--sd-model ~/models/sd15`, `ONELOOK_SD_MODEL`)."""
    return os.path.expanduser(str(model))


def check_available(model: str | Path) -> None:
    """Fails fast, before any training output is written, when the weights cannot possibly be loaded: a folder
    without a UNet, or a hub id that is not cached while the hub is unreachable."""
    import socket

    model = model_source(model)
    source = Path(model)
    if str(model).startswith(("/", ".", "~")) and not source.exists():
        raise PriorUnavailableError(f"Stable Diffusion folder not found: {model}")
    if source.exists():
        if not (source / "unet").is_dir():
            raise PriorUnavailableError(f"{model} is not a Stable Diffusion folder (no unet/ inside it)")
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(str(model), "unet/config.json"), str):
        return
    reachable = not os.environ.get("HF_HUB_OFFLINE")
    if reachable:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError:
            reachable = False
    if not reachable:
        raise PriorUnavailableError(
            f"the Stable Diffusion model {model!r} is not on this machine and the Hugging Face hub cannot be "
            f"reached. Download it where there is internet (`huggingface-cli download {DEFAULT_SD_MODEL} "
            "--local-dir SD_FOLDER`), then pass --pipeline.model.sd-model SD_FOLDER (ns-train) or "
            "--sd-model SD_FOLDER (onelook)"
        )


class StableDiffusionPrior(DiffusionPrior):
    """Frozen VAE, UNet and text encoder; only learned token embeddings may change (textual inversion)."""

    def __init__(self, vae, unet, text_encoder, tokenizer, scheduler, source: str):
        self.vae, self.unet, self.text_encoder = vae, unet, text_encoder
        self.tokenizer, self.scheduler, self.source = tokenizer, scheduler, source
        for module in (vae, unet, text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.device = unet.device
        self.dtype = unet.dtype
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"{source}: the scheduler's prediction_type {self.prediction_type!r} is not supported "
                "(epsilon and v_prediction are)"
            )
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = unet.config.sample_size * self.vae_scale  # 512 for Stable Diffusion 1.x

    @classmethod
    def load(
        cls,
        model: str | Path = DEFAULT_SD_MODEL,
        device: str | torch.device = "cpu",
        half_precision: bool | None = None,
        attention_slicing: bool = True,
        vae_tiling: bool = False,
    ) -> StableDiffusionPrior:
        """From a hub id or a local folder; `half_precision` defaults to True on CUDA, False elsewhere."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        check_available(model)
        device = torch.device(device)
        half = device.type == "cuda" if half_precision is None else half_precision
        dtype = torch.float16 if half else torch.float32
        source = model_source(model)
        try:
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
            scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise PriorUnavailableError(
                f"cannot load the Stable Diffusion model {source!r} ({type(exc).__name__}: {str(exc)[:200]}). "
                "Without internet access, download it elsewhere (e.g. `huggingface-cli download "
                f"{DEFAULT_SD_MODEL} --local-dir SD_FOLDER`) and pass the folder: "
                "--pipeline.model.sd-model SD_FOLDER (ns-train) or --sd-model SD_FOLDER (onelook)"
            ) from exc
        if attention_slicing:
            unet.set_attention_slice("auto")
        if vae_tiling:
            vae.enable_tiling()
        return cls(vae.to(device), unet.to(device), text_encoder.to(device), tokenizer, scheduler, source)

    # --- learned tokens -------------------------------------------------------------------------------------

    def add_token(self, token: str, embedding: Tensor | None = None, initializer: str | None = None) -> int:
        """Adds `token` to the vocabulary with `embedding`, or a copy of `initializer`'s; returns its id."""
        if token in self.tokenizer.get_vocab():
            token_id = self.tokenizer.convert_tokens_to_ids(token)
        else:
            self.tokenizer.add_tokens([token])
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            self.text_encoder.resize_token_embeddings(len(self.tokenizer))
        table = self.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            if embedding is not None:
                table[token_id] = embedding.to(table)
            elif initializer is not None:
                ids = self.tokenizer(initializer, add_special_tokens=False).input_ids
                table[token_id] = table[ids].mean(dim=0)
        return token_id

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    # --- images and latents --------------------------------------------------------------------------------

    def encode_images(self, rgb: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> scaled latents; resized to the model's resolution; differentiable."""
        rgb = F.interpolate(rgb, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        posterior = self.vae.encode((2.0 * rgb - 1.0).to(self.dtype)).latent_dist
        return posterior.sample() * self.vae.config.scaling_factor

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents -> (B, 3, H, W) in [0, 1] by the VAE's decoder."""
        decoded = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample
        return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The forward process, by the scheduler (which owns the maths)."""
        return self.scheduler.add_noise(latents, noise, timesteps)

    def predict_noise(self, noisy: Tensor, timesteps: Tensor, text: Tensor) -> Tensor:
        """The UNet's estimate of the noise in `noisy` latents (epsilon), whatever the model predicts: a
        v-prediction model's (SD 2.x 768) v is turned into epsilon = sqrt(a) v + sqrt(1 - a) x_t."""
        output = self.predict_raw(noisy, timesteps, text)
        if self.prediction_type == "epsilon":
            return output
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return alpha_bar.sqrt() * output.float() + (1 - alpha_bar).sqrt() * noisy.float()

    def training_target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the UNet is trained to output for `add_noise(latents, noise, timesteps)` (textual inversion)."""
        return denoising_target(self.scheduler, latents, noise, timesteps)

    def predict_raw(self, noisy: Tensor, timesteps: Tensor, text: Tensor) -> Tensor:
        """The UNet's own output (epsilon or v, as the model was trained)."""
        return self.unet(noisy.to(self.dtype), timesteps, encoder_hidden_states=text.to(self.dtype)).sample


def denoising_target(scheduler, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What a UNet with this diffusers `scheduler` is trained to output for `scheduler.add_noise(latents, noise,
    timesteps)`: the noise, or the velocity, as the scheduler's `prediction_type` says."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(latents, noise, timesteps)


def shared_prior(model: str | Path, device: str | torch.device, **settings) -> StableDiffusionPrior:
    """`StableDiffusionPrior.load(model, device, **settings)`, once per process and settings: the demo app's
    worker keeps the prior between requests. Safe to share: users only add tokens (`add_token` re-initialises
    one that exists)."""
    key = (str(model), str(torch.device(device)), tuple(sorted(settings.items())))
    if key not in _SHARED:
        _SHARED[key] = StableDiffusionPrior.load(model, device, **settings)
    return _SHARED[key]
