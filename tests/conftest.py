"""Shared fixtures: a small synthetic category and the dataset `onelook prepare` makes of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from onelook.data.synthetic import generate

    return generate(n=36, size=64, seed=7, out=tmp_path_factory.mktemp("synth"), progress=False)


@pytest.fixture(scope="session")
def synth_dataset(synth_dir, tmp_path_factory) -> Path:
    from onelook.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("dataset")
    prepare_dataset(
        synth_dir / "images",
        out,
        landmarks=synth_dir / "landmarks.json",
        masks=synth_dir / "masks",
        size=64,
        workers=1,
        progress=False,
    )
    return out
