"""Single-image textual inversion (RealFusion, stage A): a new word for the one object in the image.

A new token's embedding in the text encoder is optimised with the standard denoising loss on heavy
augmentations of the single image, so that prompts with the token describe this object; every other row
of the embedding table is restored after each step. The released code's augmented branch forgot to scale
pixels to [-1, 1]; here every image is scaled.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.transforms import v2
from tqdm import trange

from onelook.guidance.stable_diffusion import StableDiffusionPrior

# The 20 "imagenet_templates_small" prompts of diffusers' textual-inversion example (RealFusion uses them).
TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
)
DEFAULT_TOKEN = "<object>"


@dataclass
class LearnedToken:
    token: str
    embedding: torch.Tensor  # (D,)
    base_model: str

    def save(self, path: Path) -> Path:
        """safetensors, with the token and base model in its metadata (never a pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {"embedding": self.embedding.detach().float().cpu().contiguous()},
            str(path),
            metadata={"token": self.token, "base_model": self.base_model},
        )
        return path

    @classmethod
    def load(cls, path: Path) -> LearnedToken:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
        except SafetensorError as exc:
            raise ValueError(f"{path} is not a safetensors file ({exc}); give `onelook invert`'s output") from exc
        if "embedding" not in tensors or "token" not in metadata:
            raise ValueError(f"{path} is not an onelook token embedding (no 'embedding' tensor or 'token' metadata)")
        return cls(metadata["token"], tensors["embedding"], metadata.get("base_model", ""))


def augmentations(size: int) -> v2.Compose:
    """RealFusion's augmentations (rotation, resized crop, colour jitter, grayscale, blur, flip), scaled."""
    big = int(size * 1.25)
    return v2.Compose(
        [
            v2.Resize(big),
            v2.CenterCrop(big),
            v2.RandomApply([v2.RandomRotation(10, fill=1.0), v2.CenterCrop(int(big / 1.5)), v2.Resize(size)], p=0.75),
            v2.RandomResizedCrop(size, scale=(0.85, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(0.04, 0.04, 0.04, 0.04)], p=0.75),
            v2.RandomGrayscale(p=0.1),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.1),
            v2.RandomHorizontalFlip(),
        ]
    )


def denoising_loss(prior: StableDiffusionPrior, images: torch.Tensor, prompts: list[str], generator=None):
    """The standard epsilon-prediction loss at uniformly drawn timesteps; images (B, 3, H, W) in [0, 1]."""
    latents = prior.encode_images(images).float()
    num = prior.scheduler.config.num_train_timesteps
    t = torch.randint(0, num, (len(latents),), generator=generator).to(prior.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    alpha_bar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    return F.mse_loss(prior.predict_noise(noisy, t, prior.encode_prompts(prompts)).float(), noise)


def invert(prior: StableDiffusionPrior, image: np.ndarray, steps: int = 3000, **options) -> LearnedToken:
    """Learns a token for the object in `image`; see `invert_steps` for the options."""
    return deque(invert_steps(prior, image, steps, **options), maxlen=1)[0][1]  # the last item holds the token


def invert_steps(
    prior: StableDiffusionPrior,
    image: np.ndarray,
    steps: int = 3000,
    token: str = DEFAULT_TOKEN,
    initializer: str = "object",
    learning_rate: float = 2e-3,
    batch_size: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> Iterator[tuple[int, LearnedToken | None]]:
    """Learns `token` for the object in `image` ((H, W, 3) uint8, the object on a plain background), yielding
    (step, None) after each step, then (steps, the LearnedToken); stopping the iteration stops the work."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    token_id = prior.add_token(token, initializer=initializer)
    table = prior.text_encoder.get_input_embeddings().weight
    original = table.detach().clone()
    table.requires_grad_(True)
    keep = torch.ones(len(table), dtype=torch.bool, device=table.device)
    keep[token_id] = False
    optimizer = torch.optim.AdamW([table], lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-2)
    augment = augmentations(prior.image_size)
    source = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1) / 255.0
    try:
        for step in trange(steps, desc="textual inversion", disable=not progress):
            images = torch.stack([augment(source) for _ in range(batch_size)]).to(prior.device)
            prompts = [rng.choice(TEMPLATES).format(token) for _ in range(batch_size)]
            loss = denoising_loss(prior, images, prompts, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                table[keep] = original[keep]  # only the new word changes
            yield step, None
    finally:
        table.requires_grad_(False)
    yield steps, LearnedToken(token, table[token_id].detach().clone(), prior.source)
