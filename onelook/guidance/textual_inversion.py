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
        """safetensors holding `{token: embedding}`, the layout diffusers' `load_textual_inversion` reads, with
        the token and base model in its metadata too (never a pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {self.token: self.embedding.detach().float().cpu().contiguous()},
            str(path),
            metadata={"token": self.token, "base_model": self.base_model},
        )
        return path

    @classmethod
    def load(cls, path: Path) -> LearnedToken:
        """Reads `save`'s files, diffusers' `learned_embeds.safetensors` ({token: (1, D) or (D,)}), and the
        earlier onelook layout ({"embedding": (D,)} with the token in the metadata)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
        except SafetensorError as exc:
            raise ValueError(f"{path} is not a safetensors file ({exc}); give `onelook invert`'s output") from exc
        if "embedding" in tensors and "token" in metadata:
            token, embedding = metadata["token"], tensors["embedding"]
        elif len(tensors) == 1:
            token, embedding = next(iter(tensors.items()))
        else:
            raise ValueError(f"{path} holds {len(tensors)} tensors; a learned word is one {{token: embedding}}")
        if embedding.ndim == 2 and len(embedding) == 1:
            embedding = embedding[0]
        if embedding.ndim != 1:
            raise ValueError(f"{path}: {token!r} has {embedding.shape[0]} vectors; one vector per word is supported")
        if not torch.isfinite(embedding).all():
            raise ValueError(f"{path}: the embedding of {token!r} is not finite (a diverged textual inversion)")
        return cls(token, embedding.float(), metadata.get("base_model", ""))


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
    """The model's own training loss (epsilon or v target) at uniformly drawn timesteps; images (B, 3, H, W) in
    [0, 1]."""
    latents = prior.encode_images(images).float()
    num = prior.scheduler.config.num_train_timesteps
    t = torch.randint(0, num, (len(latents),), generator=generator).to(prior.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    noisy = prior.add_noise(latents, noise, t)
    output = prior.predict_raw(noisy, t, prior.encode_prompts(prompts)).float()
    return F.mse_loss(output, prior.training_target(latents, noise, t))


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
    gradient_accumulation: int = 4,
    seed: int = 0,
    show_progress: bool = True,
) -> Iterator[tuple[int, LearnedToken | None]]:
    """Learns `token` for the object in `image` ((H, W, 3) uint8, the object on a plain background), yielding
    (step, None) after each optimiser step, then (steps, the LearnedToken); stopping the iteration stops the
    work. As the released code: each step averages `gradient_accumulation` batches of `batch_size` images, at
    a learning rate already scaled for that (diffusers' `--scale_lr`: 5e-4 x 4).

    The new word's vector is its own fp32 parameter, written into the (frozen, possibly fp16) embedding table
    by a hook on the embedding layer: an fp16 Adam step underflows (its second moment of a 1e-3 gradient is
    1e-6, below fp16's eps handling) and turns the row into inf. A non-finite vector stops the run.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    token_id = prior.add_token(token, initializer=initializer)
    layer = prior.text_encoder.get_input_embeddings()
    word = torch.nn.Parameter(layer.weight[token_id].detach().float().clone())

    def use_word(module, inputs, output):
        is_word = (inputs[0] == token_id)[..., None]
        return torch.where(is_word, word.to(output.dtype), output)

    optimizer = torch.optim.AdamW([word], lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-2)
    augment = augmentations(prior.image_size)
    source = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1) / 255.0
    hook = layer.register_forward_hook(use_word)
    try:
        for step in trange(steps, desc="textual inversion", disable=not show_progress):
            optimizer.zero_grad()
            for _ in range(gradient_accumulation):
                images = torch.stack([augment(source) for _ in range(batch_size)]).to(prior.device)
                prompts = [rng.choice(TEMPLATES).format(token) for _ in range(batch_size)]
                (denoising_loss(prior, images, prompts, generator) / gradient_accumulation).backward()
            optimizer.step()
            if not torch.isfinite(word).all():
                raise FloatingPointError(
                    f"textual inversion diverged at step {step}: the word's vector is not finite "
                    f"(prior in {str(prior.dtype).removeprefix('torch.')}); try a lower learning rate"
                )
            yield step, None
    finally:
        hook.remove()
    with torch.no_grad():
        layer.weight[token_id] = word.to(layer.weight.dtype)  # only the new word's row ever changes
    yield steps, LearnedToken(token, word.detach().clone(), prior.source)
