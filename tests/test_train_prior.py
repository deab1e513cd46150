"""`onelook train-prior`: a small Stable Diffusion trained here, written as a diffusers folder that loads like SD."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from onelook.assets import OBJECT_EXAMPLES, OBJECT_PRIOR
from onelook.data.object_family import KINDS, family_object, generate_objects
from onelook.guidance.prior_settings import read_prior_settings
from onelook.guidance.stable_diffusion import StableDiffusionPrior
from onelook.guidance.train_prior import (
    TRAINED_PRIOR_SETTINGS,
    PriorTrainingConfig,
    held_out_loss,
    train_prior,
    word_tokenizer,
)


def test_captions_are_a_few_whole_word_tokens(tmp_path):
    tokenizer = word_tokenizer({"a", "photo", "of", "mug", "back", "view"}, tmp_path)
    assert tokenizer.tokenize("a photo of a mug, back view") == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "mug</w>",
        ",</w>",
        "back</w>",
        "view</w>",
    ]
    assert "".join(tokenizer.tokenize("zebra")).replace("</w>", "") == "zebra"  # other words: by letters


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    return generate_objects(2, 16, seed=0, out=tmp_path_factory.mktemp("objects"), random_views=2, show_progress=False)


@pytest.mark.slow
def test_a_trained_prior_loads_as_stable_diffusion_and_resumes(renders, tmp_path):
    config = PriorTrainingConfig(image_size=16, vae_steps=2, unet_steps=2, batch_size=4, checkpoint_every=1)
    folder = train_prior(renders, tmp_path / "prior", config, show_progress=False)
    vae_weights = load_file(folder / "training" / "vae.safetensors")
    # The same command with more steps resumes the UNet stage where it stopped (the VAE is not trained again).
    config.unet_steps = 4
    train_prior(renders, folder, config, show_progress=False)
    assert torch.load(folder / "training" / "unet.state.pt", weights_only=True)["step"] == 4
    for name, value in load_file(folder / "training" / "vae.safetensors").items():
        assert torch.equal(value, vae_weights[name])
    assert sum(f.stat().st_size for f in folder.rglob("*.safetensors") if "training" not in f.parts) < 10e6
    assert read_prior_settings(folder) == TRAINED_PRIOR_SETTINGS  # how RealFusion is to distil from it

    prior = StableDiffusionPrior.load(folder, device="cpu")  # exactly SD 1.5's loading path
    assert prior.image_size == 16 and prior.tokenizer.tokenize("photo of a house") == [
        "photo</w>",
        "of</w>",
        "a</w>",
        "house</w>",
    ]
    description = family_object(0, 0).description()  # captions name colours: each word is one token
    assert prior.tokenizer.tokenize(description) == [f"{word}</w>" for word in description.split()]
    text = prior.encode_prompts(["a high-resolution DSLR image of a mug, back view"])
    rendered = torch.rand(1, 3, 16, 16, requires_grad=True)
    prior.sds(rendered, text, prior.encode_prompts([""])).loss.backward()
    assert torch.isfinite(rendered.grad).all() and rendered.grad.abs().sum() > 0
    assert 0 < held_out_loss(folder, renders, batches=2, batch_size=4) < 10
    for captions in ("own", "recoloured"):  # what the prior reads of colour words
        assert 0 < held_out_loss(folder, renders, batches=2, batch_size=4, captions=captions) < 10
    with pytest.raises(ValueError, match="captions must be"):
        held_out_loss(folder, renders, captions="colourless")
    # Resuming must not change what the weights so far were trained for.
    config.prediction_type = "v_prediction"
    with pytest.raises(ValueError, match="prediction_type 'epsilon' -> 'v_prediction'"):
        train_prior(renders, folder, config, show_progress=False)


@pytest.mark.slow
def test_a_v_prediction_prior_is_read_as_one(renders, tmp_path):
    config = PriorTrainingConfig(image_size=16, vae_steps=1, unet_steps=2, batch_size=4, prediction_type="v_prediction")
    folder = train_prior(renders, tmp_path / "prior", config, show_progress=False)
    prior = StableDiffusionPrior.load(folder, device="cpu")
    assert prior.prediction_type == "v_prediction"
    assert 0 < held_out_loss(folder, renders, batches=1, batch_size=4) < 10
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        train_prior(renders, tmp_path / "other", PriorTrainingConfig(prediction_type="sample"), show_progress=False)


def test_train_prior_refuses_a_folder_of_other_renders(tmp_path):
    (tmp_path / "synth.json").write_text('{"category": "heads", "frames": []}')
    done = subprocess.run(
        [sys.executable, "-m", "onelook.cli", "train-prior", str(tmp_path), "--out", str(tmp_path / "prior")],
        capture_output=True,
        text=True,
        timeout=300,  # a guard against a hang: the CLI imports the stack, beside another test worker
    )
    assert done.returncode == 2 and "is not an `onelook synth --category objects` folder" in done.stderr


def test_the_packaged_prior_is_small_fp16_and_loads_as_stable_diffusion():
    """The app's default "Any object" model (`python -m onelook.assets.build_object_prior`): at most 10 MB of fp16
    safetensors, read by SD 1.5's loading path as the v-prediction prior it was trained as, with the RealFusion
    settings for it, and one example photo per kind (its mask as alpha)."""
    weights = list(OBJECT_PRIOR.rglob("*.safetensors"))
    assert len(weights) == 3 and sum(f.stat().st_size for f in weights) <= 10e6  # VAE, UNet, text encoder
    for path in weights:
        assert {tensor.dtype for tensor in load_file(path).values()} == {torch.float16}, path
    assert not (OBJECT_PRIOR / "training").exists()  # the resumable state stays out of the package
    prior = StableDiffusionPrior.load(OBJECT_PRIOR, device="cpu")
    assert prior.prediction_type == "v_prediction" and prior.image_size == 32
    assert read_prior_settings(OBJECT_PRIOR) == TRAINED_PRIOR_SETTINGS
    examples = sorted(OBJECT_EXAMPLES.glob("*.png"))
    assert sorted(path.stem for path in examples) == sorted(KINDS)
    for path in examples:
        alpha = np.asarray(Image.open(path))[..., 3]
        assert 0.05 < (alpha > 127).mean() < 0.9, path
