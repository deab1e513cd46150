"""A small Stable Diffusion trained from scratch on a synthetic family's renders (`onelook train-prior`).

It gives RealFusion a prior that knows something on a machine with no downloaded weights: a VAE, a UNet and a
CLIP text encoder with a word-level tokenizer, written as a standard diffusers folder (vae/, unet/,
text_encoder/, tokenizer/, scheduler/, model_index.json) that loads through the same `--sd-model FOLDER`
path as Stable Diffusion 1.5. Captions are "<template with the object>, <front|side|back|overhead> view", the
object in words with its colours ("red mug with a yellow logo and a blue handle") or by its kind alone,
with the textual-inversion templates' and RealFusion's wording, so both prompt it as they prompt SD.

Two stages, each seeded, checkpointed (safetensors plus `weights_only` optimizer state) and resumable: the
VAE (reconstruction with a small KL term), then the UNet and text encoder together on the denoising loss
over the VAE's latents (captions dropped 10% of the time, for classifier-free guidance).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from onelook.data.object_family import REFERENCE_DISTANCE, REFERENCE_FOV
from onelook.guidance.prior_settings import PriorSettings, write_prior_settings
from onelook.guidance.stable_diffusion import PREDICTION_TYPES, StableDiffusionPrior, denoising_target
from onelook.guidance.textual_inversion import TEMPLATES
from onelook.guidance.tiny import SmallSDSizes, byte_vocab, save_stable_diffusion, small_stable_diffusion

REALFUSION_TEMPLATE = "a high-resolution DSLR image of a {}"  # RealFusionModelConfig.prompt's wording
CAPTION_DROPOUT = 0.1
DESCRIBED = 0.5  # the share of captions that name the object's colours and parts, not only its kind
POSTERIOR_STD = 0.05  # the VAE's initial posterior width: RealFusion encodes with a sample, the UNet learns on means
# How RealFusion distils from a prior trained here (written to its folder, read by `train_realfusion`), measured
# in the README's "RealFusion, proven on this machine": guidance 1 (a small prior's conditional and unconditional
# predictions differ by more than what it knows, and guidance multiplies that); t up to 0.5, where its one-step
# predictions of the clean image hold; a weight of 0.001 against the reference view's losses (at 0.01 score
# distillation fogs the photo's own view away: 11 dB against 28 on the app's house example); random views from
# the distance and field of view of the renders it learnt from (the family's reference camera); the target
# decoded to pixels (its small encoder's Jacobian, not its predictions, is what spread the fog: held out, every
# metric better, 1.1 dB at 180 degrees, Chamfer 12.2% -> 9.0%); the random views' opacity pulled towards that
# target's silhouette (the haze that was left: held out, +2.2 dB at 180 degrees, depth error 44% -> 24%); the
# random views composited on white, as everything it learnt from was (on the background network's colour, which
# only score distillation trains, its targets were noise and their silhouettes filled the scene with fog), which
# let the silhouette weigh 1 (held out: Chamfer 8.6% -> 4.4%, depth error 24% -> 12%, +0.9-2.1 dB at 90 and 270
# degrees and from overhead, level at 180); the field started nearly empty, density_bias -3 (the released code's
# initial fog mixed grey into every view; held out, all three variants at -3: +1.1 dB at 180 degrees, 0.6 dB under
# the reference view alone there instead of 2.1, F-score 0.67 -> 0.71, Chamfer level, depth error 12% -> 14%).
TRAINED_PRIOR_SETTINGS = PriorSettings(
    model={
        "guidance_scale": 1.0,
        "t_range": (0.02, 0.5),
        "sds_loss_weight": 0.001,
        "sds_pixel_space": True,
        "prior_silhouette_weight": 1.0,
        "prior_view_background": "white",
        "density_bias": -3.0,
    },
    datamanager={"prior_distance_range": (REFERENCE_DISTANCE,) * 2, "prior_fov_range": (REFERENCE_FOV,) * 2},
)


@dataclass
class PriorTrainingConfig:
    image_size: int = 32
    """Side of the images the prior is trained on, in pixels (its latents are half that)."""
    vae_steps: int = 1500
    """Training steps of the VAE (stage 1)."""
    unet_steps: int = 12000
    """Training steps of the UNet and the text encoder together (stage 2)."""
    batch_size: int = 32
    """Images per step, both stages."""
    vae_lr: float = 1e-3
    """AdamW learning rate of the VAE."""
    unet_lr: float = 4e-4
    """AdamW learning rate of the UNet and the text encoder."""
    kl_weight: float = 1e-6
    """Weight of the VAE's KL term against its reconstruction loss, both per image (Stable Diffusion's)."""
    prediction_type: str = "epsilon"
    """What the UNet learns to predict: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x 768), whose loss weighs
    the large timesteps, where an image's colours and layout are decided, about 1/SNR times more."""
    checkpoint_every: int = 500
    """Steps between checkpoints; an interrupted run resumes from the last one."""
    seed: int = 0
    """Seeds the initial weights, the batches, the noise and the captions' wording."""


def load_renders(synth_dir: Path, image_size: int) -> tuple[torch.Tensor, list[str], list[str], list[str]]:
    """Every render of an `onelook synth --category objects` folder: images (N, 3, S, S) in [0, 1], their
    kinds, the objects in words (from the captions; the kind in folders written before captions had colours)
    and view words."""
    meta = json.loads((Path(synth_dir) / "synth.json").read_text())
    if meta.get("category") != "objects":
        raise ValueError(f"{synth_dir} is not an `onelook synth --category objects` folder")
    kind_of = {thing["identity"]: thing["kind"] for thing in meta["objects"]}
    images, kinds, descriptions, views = [], [], [], []
    for frame in meta["frames"]:
        image = Image.open(Path(synth_dir) / "images" / frame["file"]).convert("RGB")
        images.append(np.asarray(image.resize((image_size, image_size), Image.BICUBIC)))
        description, view = frame["caption"].removeprefix("a photo of a ").split(", ")
        kinds.append(kind_of[frame["identity"]])
        descriptions.append(description)
        views.append(view)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0, kinds, descriptions, views


def caption_for(kind: str, description: str, view: str, rng: random.Random, described: float = DESCRIBED) -> str:
    """A training caption: a random template around the object in words (its colours; with probability
    `described`) or its bare kind (how the class-word prompt asks), then the view words."""
    template = rng.choice((*TEMPLATES, REALFUSION_TEMPLATE))
    return f"{template.format(description if rng.random() < described else kind)}, {view}"


def word_tokenizer(words: set[str], folder: Path):
    """A CLIP tokenizer whose vocabulary is every byte (as CLIP's) plus the given words as single tokens, so
    captions are a few tokens and any other text still tokenizes (by letters)."""
    from transformers import CLIPTokenizer

    vocab = byte_vocab()
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(words):
        # BPE on the merges so far; while the word is not one token, merge its first two symbols last of all
        # (a merge added later never changes how an earlier word is split).
        symbols = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            vocab.setdefault(symbols[0] + symbols[1], len(vocab))
            symbols = _bpe(symbols, ranks)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranks))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding as CLIP's tokenizer applies it: the lowest-ranked adjacent pair first, every time."""
    while len(symbols) > 1:
        pairs = [(ranks[pair], pair) for pair in zip(symbols, symbols[1:], strict=False) if pair in ranks]
        if not pairs:
            break
        first, second = min(pairs)[1]
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == (first, second):
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


# The shipped prior's sizes: 1.7 M UNet, 0.7 M VAE and 0.14 M text-encoder parameters (5 MB in fp16).
PRIOR_SIZES = {"text_width": 64, "text_intermediate": 128, "text_layers": 3}
PRIOR_SIZES |= {"unet_channels": (32, 64, 64), "vae_channels": (32, 64), "norm_groups": 16}


class _Checkpoint:
    """One stage's modules and optimizer, saved every so often and loaded to resume (safe formats only)."""

    def __init__(self, folder: Path, stage: str, modules: dict[str, torch.nn.Module], optimizer):
        self.path, self.modules, self.optimizer = folder / f"{stage}.safetensors", modules, optimizer
        self.state_path = folder / f"{stage}.state.pt"

    def load(self) -> int:
        if not self.path.is_file():
            return 0
        weights = load_file(self.path)
        for name, module in self.modules.items():
            module.load_state_dict({k.removeprefix(f"{name}."): v for k, v in weights.items() if k.startswith(name)})
        state = torch.load(self.state_path, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        return int(state["step"])

    def save(self, step: int) -> None:
        weights = {f"{name}.{k}": v.contiguous() for name, m in self.modules.items() for k, v in m.state_dict().items()}
        save_file(weights, self.path.with_suffix(".tmp"))
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(), "step": step}, self.state_path
        )
        self.path.with_suffix(".tmp").replace(self.path)


def train_prior(
    synth_dir: Path, out: Path, config: PriorTrainingConfig | None = None, show_progress: bool = True
) -> Path:
    """Trains (or resumes) the prior on the renders in `synth_dir`; writes the diffusers folder `out`."""

    config = config or PriorTrainingConfig()
    if config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {config.prediction_type!r}")
    out, work = Path(out), Path(out) / "training"
    work.mkdir(parents=True, exist_ok=True)
    _check_resumable(work, config)
    torch.manual_seed(config.seed)
    images, kinds, descriptions, views = load_renders(synth_dir, config.image_size)
    texts = (*TEMPLATES, REALFUSION_TEMPLATE, *kinds, *set(descriptions), *views)
    words = {w for text in texts for w in re.findall("[a-z]+", text.lower())}
    if (work / "tokenizer" / "vocab.json").is_file():  # resuming: the text encoder learnt these tokens
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer", model_max_length=77)
    else:
        tokenizer = word_tokenizer(words, work / "tokenizer")
    text_encoder, unet, vae, scheduler = small_stable_diffusion(
        tokenizer, SmallSDSizes(config.image_size, **PRIOR_SIZES), config.prediction_type
    )
    pixels = 2.0 * images - 1.0

    # Stage 1: the VAE, its posterior narrow from the start (diffusers starts it at a standard deviation of 1),
    # so that the decoder learns from near-mean latents at once: RealFusion encodes with a posterior sample.
    with torch.no_grad():
        latent_channels = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[latent_channels:].zero_()
        vae.quant_conv.bias[latent_channels:].fill_(2.0 * math.log(POSTERIOR_STD))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    checkpoint = _Checkpoint(work, "vae", {"vae": vae}, optimizer)
    start = checkpoint.load()
    generator = torch.Generator().manual_seed(config.seed + start)
    for step in tqdm(range(start, config.vae_steps), desc="VAE", disable=not show_progress):
        batch = pixels[torch.randint(len(pixels), (config.batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        # Per pixel value, as Stable Diffusion's VAE loss is per image (both summed): a KL term per image against
        # a mean squared error would weigh it thousands of times more, and the posterior would widen.
        kl = posterior.kl().mean() / batch[0].numel()
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, batch) + config.kl_weight * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.vae_steps:
            checkpoint.save(step + 1)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(b).latent_dist.mean for b in pixels.split(256)])
    scaling = 1.0 / float(latents.std())  # unit-variance latents, as Stable Diffusion's scaling factor gives
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling

    # Stage 2: the UNet and the text encoder, on the denoising loss.
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=1e-2)
    checkpoint = _Checkpoint(work, "unet", {"unet": unet, "text_encoder": text_encoder}, optimizer)
    start = checkpoint.load()
    rng = random.Random(config.seed + start)
    generator = torch.Generator().manual_seed(config.seed + start)
    bar = tqdm(range(start, config.unet_steps), desc="UNet", disable=not show_progress)
    for step in bar:
        index = torch.randint(len(latents), (config.batch_size,), generator=generator)
        captions = [
            "" if rng.random() < CAPTION_DROPOUT else caption_for(kinds[i], descriptions[i], views[i], rng)
            for i in index.tolist()
        ]
        loss = denoising_loss(unet, text_encoder, tokenizer, scheduler, latents[index], captions, generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.unet_steps:
            checkpoint.save(step + 1)

    save_stable_diffusion(out, tokenizer, text_encoder, unet, vae, scheduler, torch.float16)
    (out / "training_config.json").write_text(json.dumps(asdict(config), indent=1))
    write_prior_settings(out, TRAINED_PRIOR_SETTINGS)
    return out


def _check_resumable(work: Path, config: PriorTrainingConfig) -> None:
    """Records what a run's weights depend on in `work`; a resumed run must not change it (more steps may)."""
    fixed = {name: getattr(config, name) for name in ("image_size", "prediction_type", "seed")}
    record = work / "fixed_settings.json"
    if record.is_file():
        before = json.loads(record.read_text())
        changed = {name: (before[name], value) for name, value in fixed.items() if before.get(name, value) != value}
        if changed:
            details = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
            raise ValueError(f"{work.parent} was trained with other settings ({details}): resume with the same ones")
    record.write_text(json.dumps(fixed))


def denoising_loss(unet, text_encoder, tokenizer, scheduler, latents, captions, generator) -> torch.Tensor:
    """The denoising loss at uniformly drawn timesteps (what Stable Diffusion is trained on), against the noise
    or the velocity, as the scheduler's `prediction_type` says."""
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    text = text_encoder(tokens.input_ids)[0]
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = denoising_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=text).sample, target)


@torch.no_grad()
def held_out_loss(
    folder: Path, synth_dir: Path, batches: int = 20, batch_size: int = 64, seed: int = 0, captions: str = "mixed"
) -> float:
    """The trained prior's denoising loss on renders it never saw (same timesteps and noise every call), loaded
    and scored the way RealFusion loads and textual inversion scores Stable Diffusion. `captions`: "mixed" as
    in training (the object in words or its kind), "own" (every render by its own colours), "recoloured" (by
    another object's words of the same kind): "own" below "recoloured" is what the prior reads of colours."""
    from onelook.guidance.textual_inversion import denoising_loss as prior_denoising_loss

    if captions not in ("mixed", "own", "recoloured"):
        raise ValueError(f"captions must be mixed, own or recoloured, got {captions!r}")
    prior = StableDiffusionPrior.load(folder, device="cpu", half_precision=False)
    images, kinds, descriptions, views = load_renders(synth_dir, prior.image_size)
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    of_kind = {kind: sorted({d for k, d in zip(kinds, descriptions, strict=True) if k == kind}) for kind in set(kinds)}
    losses = []
    for _ in range(batches):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        texts = []
        for i in index.tolist():
            description = descriptions[i]
            if captions == "recoloured":
                description = rng.choice([d for d in of_kind[kinds[i]] if d != description] or [description])
            described = DESCRIBED if captions == "mixed" else 1.0
            texts.append(caption_for(kinds[i], description, views[i], rng, described))
        losses.append(float(prior_denoising_loss(prior, images[index], texts, generator)))
    return float(np.mean(losses))


def sample_grid(folder: Path, path: Path, kinds=("mug", "house", "creature", "chair"), seed: int = 0) -> Path:
    """One sample per kind (rows) and view word (columns: front, side, back, overhead), by diffusers' pipeline
    (50 DDIM steps, guidance 5)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    size = pipeline.vae.config.sample_size
    rows = []
    for kind in kinds:
        prompts = [f"a photo of a {kind}, {view} view" for view in ("front", "side", "back", "overhead")]
        images = pipeline(
            prompts,
            height=size,
            width=size,
            num_inference_steps=50,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images
        rows.append(np.concatenate(list(images), axis=1))
    Image.fromarray((np.concatenate(rows) * 255).round().astype(np.uint8)).save(path)
    return Path(path)
