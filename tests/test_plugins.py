"""The nerfstudio plugin wiring, through nerfstudio's own discovery and the real `ns-train`."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def test_registries_find_our_methods_and_dataparser():
    from nerfstudio.plugins.registry import discover_methods
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    methods, _ = discover_methods()
    assert {"lolnerf", "lolnerf-small"} <= set(methods)
    dataparsers, _ = discover_dataparsers()
    assert "onelook-data" in dataparsers


def test_plugin_modules_import_without_heavy_libraries():
    """One plugin that fails or takes long to import breaks ns-train for every method."""
    heavy = ("diffusers", "mediapipe", "open3d", "gradio")
    code = f"import sys, onelook.configs, onelook.data.specs; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_ns_train_help_lists_plugins(ns_train):
    out = ns_train.run("--help").stdout
    assert "lolnerf" in out and "lolnerf-small" in out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lolnerf-small", "lolnerf"])
def test_ns_train_runs_on_a_prepared_dataset(ns_train, synth_dataset, tmp_path, method):
    """The real command line: loads the dataset through the plugin dataparser and trains on the CPU; the run
    it writes loads back through onelook's safe loader."""
    from onelook.lolnerf import Reconstructor
    from onelook.runs import load_run_config

    result = ns_train.train(method, synth_dataset, tmp_path, "--pipeline.datamanager.train-num-rays-per-batch", "128")
    assert result.returncode == 0, result.stderr[-3000:]
    configs = list(tmp_path.rglob("config.yml"))
    assert len(configs) == 1
    assert list(configs[0].parent.glob("nerfstudio_models/step-*.ckpt"))
    assert load_run_config(configs[0]).method_name == method
    assert Reconstructor.from_run(configs[0].parent, device="cpu").canonical_keypoints.shape == (5, 3)
    shutil.rmtree(tmp_path)
