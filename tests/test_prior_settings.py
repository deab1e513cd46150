"""The RealFusion settings a prior folder recommends (`onelook_realfusion.json`), as `train_realfusion` applies
them: after the quality's sizes, before the caller's options, and never for a prior handed in as an object."""

from __future__ import annotations

import pytest
import torch

from onelook.data.object_family import family_object, front_photo
from onelook.guidance.exemplar_prior import ExemplarPrior
from onelook.guidance.prior_settings import SETTINGS_FILE, PriorSettings, read_prior_settings, write_prior_settings
from onelook.realfusion.train import QUALITY, realfusion_config

# Not RealFusion's defaults (guidance 100, t up to 0.98, views at 1.0-1.5 and 40-70 degrees), nor a trained prior's.
SETTINGS = PriorSettings(
    model={"guidance_scale": 3.25, "t_range": (0.05, 0.6), "sds_loss_weight": 0.2},
    datamanager={"prior_distance_range": (1.6, 2.1), "prior_fov_range": (48.0, 52.0)},
)


@pytest.fixture(scope="module")
def photo():
    return front_photo(family_object(7, 3), 32)


def test_a_folders_settings_are_read_back_as_written(tmp_path):
    assert read_prior_settings(tmp_path) == PriorSettings()  # no file: no settings
    assert read_prior_settings("stable-diffusion-v1-5/stable-diffusion-v1-5") == PriorSettings()  # a hub id
    write_prior_settings(tmp_path, SETTINGS)
    assert read_prior_settings(tmp_path) == SETTINGS  # ranges come back as tuples, as the configs hold them


def test_train_realfusion_applies_them_before_the_callers_options(tmp_path, photo):
    write_prior_settings(tmp_path, SETTINGS)
    quality = QUALITY["preview"]
    model = realfusion_config(photo, tmp_path / "a", quality, str(tmp_path)).pipeline.model
    assert (model.guidance_scale, model.t_range, model.sds_loss_weight) == (3.25, (0.05, 0.6), 0.2)
    datamanager = realfusion_config(photo, tmp_path / "b", quality, str(tmp_path)).pipeline.datamanager
    assert (datamanager.prior_distance_range, datamanager.prior_fov_range) == ((1.6, 2.1), (48.0, 52.0))
    assert datamanager.prior_view_size == quality.prior_view_size  # the quality's sizes stay

    given = realfusion_config(
        photo,
        tmp_path / "c",
        quality,
        str(tmp_path),
        model_options={"guidance_scale": 7.5},
        datamanager_options={"prior_fov_range": (40.0, 70.0)},
    )
    assert given.pipeline.model.guidance_scale == 7.5 and given.pipeline.model.sds_loss_weight == 0.2
    assert given.pipeline.datamanager.prior_fov_range == (40.0, 70.0)

    exemplars = ExemplarPrior({"front": torch.rand(1, 3, 8, 8)}, torch.linspace(0.99, 0.01, 1000))
    standing_in = realfusion_config(photo, tmp_path / "d", quality, str(tmp_path), prior=exemplars).pipeline.model
    assert standing_in.guidance_scale == 100.0  # the folder is not the prior: RealFusion's own default


def test_bad_settings_are_refused_naming_the_file_or_the_option(tmp_path, photo):
    (tmp_path / SETTINGS_FILE).write_text("{'model': ")
    with pytest.raises(ValueError, match=f"{SETTINGS_FILE} is not valid JSON"):
        read_prior_settings(tmp_path)
    (tmp_path / SETTINGS_FILE).write_text('{"model": {}, "training": {}}')
    with pytest.raises(ValueError, match="must hold an object of 'model' and 'datamanager' settings"):
        read_prior_settings(tmp_path)
    write_prior_settings(tmp_path, PriorSettings(model={"guidance": 1.0}))
    with pytest.raises(ValueError, match=r"RealFusionModelConfig has no options \['guidance'\]"):
        realfusion_config(photo, tmp_path / "run", QUALITY["preview"], str(tmp_path))
