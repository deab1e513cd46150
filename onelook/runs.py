"""Loading a training run (`ns-train`'s output folder) without trusting its files with arbitrary code.

nerfstudio writes config.yml with Python object tags and loads it with PyYAML's unsafe loader, and its
checkpoints are pickles that torch >= 2.6 refuses to load with `weights_only=True` (the scheduler state holds
numpy scalars; nerfstudio issue #3683). Here the YAML loader builds only objects from an allow-list of
modules, and checkpoints load with `weights_only=True` plus an explicit allow-list of numpy's plain data
types: a run folder that someone hands over cannot execute code on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from yaml.constructor import ConstructorError, UnsafeConstructor

# Modules whose classes a run's config.yml may name (config dataclasses, enums, paths, optimizer classes).
ALLOWED_CONFIG_MODULES = ("nerfstudio.", "onelook.", "pathlib.", "torch.optim.")


class _RunConfigLoader(yaml.UnsafeLoader):
    """PyYAML's safe constructors, plus the Python-object ones restricted to allowed modules."""

    yaml_constructors = dict(yaml.SafeLoader.yaml_constructors)
    yaml_multi_constructors = {}


def _allow_listed(construct):
    def build(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
        if not suffix.startswith(ALLOWED_CONFIG_MODULES):
            raise ConstructorError(None, None, f"refusing to build {suffix!r} from a run config", node.start_mark)
        return construct(loader, suffix, node)

    return build


for _tag, _construct in (
    ("python/object:", UnsafeConstructor.construct_python_object),
    ("python/object/apply:", UnsafeConstructor.construct_python_object_apply),
    ("python/object/new:", UnsafeConstructor.construct_python_object_new),
    ("python/name:", UnsafeConstructor.construct_python_name),
):
    _RunConfigLoader.add_multi_constructor(f"tag:yaml.org,2002:{_tag}", _allow_listed(_construct))
_RunConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", UnsafeConstructor.construct_python_tuple)


def load_run_config(path: Path):
    """A run's TrainerConfig from its config.yml, building only allow-listed classes."""
    return yaml.load(Path(path).read_text(), Loader=_RunConfigLoader)


def _numpy_data_types() -> list:
    """numpy's scalar reconstructor and dtypes, under both module names numpy 1 and 2 pickle them as."""
    from numpy.core.multiarray import scalar  # numpy 2 keeps this path as an alias of numpy._core

    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    names = [(scalar, f"{module}.multiarray.scalar") for module in ("numpy.core", "numpy._core")]
    return [*names, np.dtype, *dtypes]


def load_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True, allowing numpy's scalars and dtypes (plain data, no code)."""
    with torch.serialization.safe_globals(_numpy_data_types()):
        return torch.load(path, map_location="cpu", weights_only=True)


def find_run(run_dir: Path) -> tuple[Path, Path]:
    """(config.yml, latest checkpoint) of a run folder; clear errors when either is missing."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yml"
    if not config.is_file():
        candidates = sorted(run_dir.rglob("config.yml"))
        if len(candidates) != 1:
            found = "none" if not candidates else f"{len(candidates)}: {', '.join(str(c.parent) for c in candidates)}"
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yml; found {found} below it)")
        config = candidates[0]
    checkpoints = sorted((config.parent / "nerfstudio_models").glob("step-*.ckpt"))
    if not checkpoints:
        raise FileNotFoundError(f"{config.parent} has no checkpoint (nerfstudio_models/step-*.ckpt)")
    return config, checkpoints[-1]


def load_model(run_dir: Path, expected: type, device: str | torch.device | None = None):
    """The trained model of a run, without its dataset or anything else the trainer builds.

    `expected` (a Model class) must be what the run trained; the model class rebuilds its constructor's
    metadata from its own saved buffers (`metadata_from_state`).
    """
    from nerfstudio.data.scene_box import SceneBox

    config_path, checkpoint_path = find_run(Path(run_dir))
    config = load_run_config(config_path)
    target = config.pipeline.model._target
    if not (isinstance(target, type) and issubclass(target, expected)):
        raise ValueError(f"{config_path} is a {config.method_name} run, not a {expected.__name__} one")
    prefix = "_model."
    state = {
        k[len(prefix) :]: v for k, v in load_checkpoint(checkpoint_path)["pipeline"].items() if k.startswith(prefix)
    }
    radius = float(state["scene_radius_buffer"])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = config.pipeline.model.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-radius] * 3, [radius] * 3])),
        num_train_data=target.num_train_data_from_state(state),
        metadata=target.metadata_from_state(state),
        device=device,
    )
    model.load_state_dict(state)
    return model.to(device).eval()
