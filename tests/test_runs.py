"""Run folders someone hands over: config.yml builds only the exact config classes, nothing runs on load."""

from __future__ import annotations

import copy
import dataclasses
import enum
from pathlib import Path

import pytest
import yaml

from onelook.runs import APPLY_CONSTRUCTORS, CONFIG_CLASSES, REFERENCED_NAMES, UnsafeRunConfigError, load_run_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "onelook" / "assets" / "demo_lolnerf" / "config.yml"


def _payloads(tmp: Path) -> dict[str, str]:
    """Each would write `tmp/owned*` if the loader built it; every route goes through an old allowed prefix."""
    shell = f'!!python/object/apply:nerfstudio.utils.scripts.run_command ["echo owned > {tmp}/owned.txt"]'
    path = f"!!python/object/apply:pathlib.PosixPath [{tmp}/owned.txt]"
    return {
        "shell command via nerfstudio": shell,
        "function in onelook": f"!!python/object/apply:onelook.data.synthetic.generate [2, 32, 0, {tmp}/owned_dir]",
        "function in nerfstudio": (
            f"!!python/object/apply:nerfstudio.utils.io.write_to_json "
            f"[!!python/object/apply:pathlib.PosixPath [{tmp}/owned.json], {{a: 1}}]"
        ),
        "pathlib method": f"!!python/object/apply:pathlib.Path.write_text [{path}, owned]",
        "pathlib method by name": "!!python/name:pathlib.Path.write_text ''",
        "os.system": f'!!python/object/apply:os.system ["echo owned > {tmp}/owned.txt"]',
        "object/new": f"!!python/object/new:pathlib.PosixPath [{tmp}/owned.txt]",
        "non-config class as object": "!!python/object:nerfstudio.utils.scripts.Path {}",
        "function by name": "!!python/name:onelook.cli.main ''",
        "module": "!!python/module:os ''",
        "payload inside a real config": DEMO_CONFIG.read_text().replace(
            "data: &id003 !!python/object/apply:pathlib.PosixPath",
            f"data: {shell}\nunused: &id003 !!python/object/apply:pathlib.PosixPath",
            1,
        ),
    }


@pytest.mark.parametrize("route", list(_payloads(Path("/x"))))
def test_hostile_configs_are_refused_and_run_nothing(tmp_path, route):
    path = tmp_path / "run" / "config.yml"
    path.parent.mkdir()
    path.write_text(_payloads(tmp_path)[route])
    with pytest.raises(UnsafeRunConfigError) as refused:
        load_run_config(path)
    message = str(refused.value)
    assert str(path) in message and "!!python/" in message  # names the file and the tag
    assert not list(tmp_path.glob("owned*"))


def test_a_run_folder_with_a_hostile_config_is_refused_by_every_loader(tmp_path, trained_run):
    import shutil

    from onelook.lolnerf import Reconstructor

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.yml").write_text(_payloads(tmp_path)["payload inside a real config"])
    with pytest.raises(UnsafeRunConfigError, match="run_command"):
        Reconstructor.from_run(run, device="cpu")
    assert not list(tmp_path.glob("owned*"))


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_checkpoint_is_named(tmp_path, trained_run, keep):
    import shutil

    from onelook.lolnerf import Reconstructor

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    checkpoint = next((run / "nerfstudio_models").glob("step-*.ckpt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[: int(checkpoint.stat().st_size * keep)])
    with pytest.raises(ValueError, match=f"{checkpoint.name} is not a readable checkpoint \\(truncated or corrupt"):
        Reconstructor.from_run(run, device="cpu")


def test_not_a_config(tmp_path):
    (tmp_path / "config.yml").write_text("just: a mapping\n")
    with pytest.raises(UnsafeRunConfigError, match="does not hold a trainer config"):
        load_run_config(tmp_path / "config.yml")


def _classes_in(config) -> set[str]:
    """Dotted names of every config dataclass and every class-valued field reachable from `config`."""
    found, stack = set(), [config]
    while stack:
        value = stack.pop()
        if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
            found.add(f"{value.__module__}.{value.__qualname__}")
        elif isinstance(value, (enum.Enum, Path)):
            found.add(f"{type(value).__module__}.{type(value).__qualname__}")
        elif dataclasses.is_dataclass(value):
            found.add(f"{type(value).__module__}.{type(value).__qualname__}")
            stack.extend(vars(value).values())
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return found


@pytest.mark.parametrize("method", ["lolnerf", "lolnerf-small", "realfusion"])
def test_every_config_our_methods_write_loads(tmp_path, method):
    """What ns-train's `save_config` writes for each of our methods (the real runs' configs are loaded in
    test_plugins.py and test_realfusion.py) loads back equal, and the allow-lists cover exactly its classes."""
    from nerfstudio.plugins.registry import discover_methods

    configs, _ = discover_methods()
    config = copy.deepcopy(configs[method])
    config.machine.device_type = "cpu"
    config.output_dir = tmp_path
    config.data = tmp_path / "data"
    path = tmp_path / "config.yml"
    path.write_text(yaml.dump(config))
    loaded = load_run_config(path)
    assert yaml.dump(loaded) == yaml.dump(config)
    classes = _classes_in(config)
    allowed = CONFIG_CLASSES | REFERENCED_NAMES | APPLY_CONSTRUCTORS
    assert classes <= allowed | {"builtins.NoneType"}, classes - allowed


def test_the_demo_model_config_loads():
    config = load_run_config(DEMO_CONFIG)
    assert config.method_name == "lolnerf-small" and isinstance(config.data, Path)
