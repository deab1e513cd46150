"""Loading a training run (`ns-train`'s output folder) without trusting its files with arbitrary code.

nerfstudio writes config.yml with Python object tags and loads it with PyYAML's unsafe loader, and its
checkpoints are pickles that torch >= 2.6 refuses to load with `weights_only=True` (the scheduler state holds
numpy scalars; nerfstudio issue #3683). Here config.yml is read by PyYAML's safe loader plus three Python tags,
each limited to an exact list of names:

- `!!python/object:NAME` builds one of `CONFIG_CLASSES` (the config dataclasses that our methods and
  nerfstudio's trainer write) by setting its fields, without calling any code of the class;
- `!!python/object/apply:NAME` calls only `APPLY_CONSTRUCTORS` (paths, and the enum nerfstudio's writer uses),
  with positional arguments;
- `!!python/name:NAME` names only `CONFIG_CLASSES`, `APPLY_CONSTRUCTORS` and `REFERENCED_NAMES` (the classes
  the configs instantiate, and the collate function nerfstudio's datamanager refers to); nothing is called.

Any other tag or name is refused with `UnsafeRunConfigError`, which names the tag, the file and the line.
Checkpoints load with `weights_only=True` plus an explicit allow-list of numpy's plain data types: a run folder
that someone hands over cannot execute code on load.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from yaml.constructor import ConstructorError

from onelook.device import resolve_device

# The config dataclasses `ns-train lolnerf`, `lolnerf-small` and `realfusion` write (tests/test_runs.py checks
# that this is every one of them). Built field by field: no constructor, no __setstate__, no code of theirs runs.
CONFIG_CLASSES = frozenset(
    {
        "nerfstudio.configs.base_config.LocalWriterConfig",
        "nerfstudio.configs.base_config.LoggingConfig",
        "nerfstudio.configs.base_config.MachineConfig",
        "nerfstudio.configs.base_config.ViewerConfig",
        "nerfstudio.data.datamanagers.base_datamanager.VanillaDataManagerConfig",
        "nerfstudio.data.pixel_samplers.PixelSamplerConfig",
        "nerfstudio.engine.optimizers.AdamOptimizerConfig",
        "nerfstudio.engine.schedulers.ExponentialDecaySchedulerConfig",
        "nerfstudio.engine.trainer.TrainerConfig",
        "nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig",
        "onelook.configs.RealFusionTrainerConfig",
        "onelook.data.dataparser.OnelookDataParserConfig",
        "onelook.data.image_dataparser.ObjectImageDataParserConfig",
        "onelook.data.prior_views.PriorViewDataManagerConfig",
        "onelook.models.lolnerf.LOLNeRFModelConfig",
        "onelook.models.realfusion.RealFusionModelConfig",
    }
)
# Callables `!!python/object/apply` may call, with positional arguments only: paths (a path written on any
# system becomes this system's `Path`) and the enum of nerfstudio's writer (looked up by its value).
APPLY_CONSTRUCTORS = frozenset(
    {"pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path", "nerfstudio.utils.writer.EventName"}
)
# What the configs' `_target` fields and other class-valued fields name (`!!python/name`): referenced, not called.
REFERENCED_NAMES = frozenset(
    {
        "nerfstudio.data.datamanagers.base_datamanager.VanillaDataManager",
        "nerfstudio.data.pixel_samplers.PixelSampler",
        "nerfstudio.data.utils.nerfstudio_collate.nerfstudio_collate",
        "nerfstudio.engine.schedulers.ExponentialDecayScheduler",
        "nerfstudio.engine.trainer.Trainer",
        "nerfstudio.pipelines.base_pipeline.VanillaPipeline",
        "nerfstudio.utils.writer.LocalWriter",
        "onelook.data.dataparser.OnelookDataParser",
        "onelook.data.image_dataparser.ObjectImageDataParser",
        "onelook.data.prior_views.PriorViewDataManager",
        "onelook.models.lolnerf.LOLNeRFModel",
        "onelook.models.realfusion.RealFusionModel",
        "torch.optim.adam.Adam",
    }
)


class UnsafeRunConfigError(ValueError):
    """A run's config.yml asks for something outside the allow-list (or is not a config at all)."""


def _refuse(tag: str, suffix: str, node: yaml.Node) -> ConstructorError:
    return ConstructorError(
        None, None, f"refusing '!!python/{tag}:{suffix}': not a config class that onelook allows", node.start_mark
    )


class _RunConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus the three Python tags limited to exact names (see the module docstring)."""

    def construct_config(self, suffix: str, node: yaml.Node):
        if suffix not in CONFIG_CLASSES or not isinstance(node, yaml.MappingNode):
            raise _refuse("object", suffix, node)
        cls = pkgutil.resolve_name(suffix)
        instance = cls.__new__(cls)
        yield instance  # first, so that anchors inside the mapping can refer back to it
        instance.__dict__.update(self.construct_mapping(node, deep=True))

    def construct_apply(self, suffix: str, node: yaml.Node):
        if suffix not in APPLY_CONSTRUCTORS or not isinstance(node, yaml.SequenceNode):
            raise _refuse("object/apply", suffix, node)
        constructor = Path if suffix.startswith("pathlib.") else pkgutil.resolve_name(suffix)
        return constructor(*self.construct_sequence(node, deep=True))

    def construct_name(self, suffix: str, node: yaml.Node):
        if suffix not in CONFIG_CLASSES | REFERENCED_NAMES | APPLY_CONSTRUCTORS:
            raise _refuse("name", suffix, node)
        return pkgutil.resolve_name(suffix)


_RunConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/object:", _RunConfigLoader.construct_config)
_RunConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/object/apply:", _RunConfigLoader.construct_apply)
_RunConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", _RunConfigLoader.construct_name)
_RunConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", yaml.FullLoader.construct_python_tuple)


def load_run_config(path: Path):
    """A run's TrainerConfig from its config.yml, building only allow-listed classes (module docstring)."""
    path = Path(path)
    try:
        config = yaml.load(path.read_text(), Loader=_RunConfigLoader)
    except yaml.YAMLError as exc:
        raise UnsafeRunConfigError(f"{path}: {exc}") from exc
    if type(config).__module__ + "." + type(config).__qualname__ not in CONFIG_CLASSES:
        raise UnsafeRunConfigError(f"{path} does not hold a trainer config (found {type(config).__name__})")
    return config


def _numpy_data_types() -> list:
    """numpy's scalar reconstructor and dtypes, under both module names numpy 1 and 2 pickle them as."""
    from numpy.core.multiarray import scalar  # numpy 2 keeps this path as an alias of numpy._core

    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    names = [(scalar, f"{module}.multiarray.scalar") for module in ("numpy.core", "numpy._core")]
    return [*names, np.dtype, *dtypes]


def load_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True, allowing numpy's scalars and dtypes (plain data, no code)."""
    with torch.serialization.safe_globals(_numpy_data_types()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError) as exc:  # a truncated or otherwise broken file (never code: see above)
            reason = (str(exc).splitlines() or ["the file ends early"])[0][:160]
            raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt: {reason})") from exc


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


def _match_hash_grid_implementation(model_config, state: dict, checkpoint_path: Path) -> None:
    """Builds a model's hash grid with the implementation its checkpoint was trained with. tiny-cuda-nn's and
    PyTorch's hash grids share no parameter layout (tiny-cuda-nn indexes coarse levels densely, sizes each
    level's table to fit and offsets its grid by half a cell), so one cannot be loaded into the other."""
    if not hasattr(model_config, "implementation"):
        return
    from nerfstudio.utils.external import TCNN_EXISTS

    trained_with_tcnn = any(key.endswith("tcnn_encoding.params") for key in state)
    if trained_with_tcnn and not TCNN_EXISTS:
        raise ValueError(
            f"{checkpoint_path} was trained with tiny-cuda-nn's hash grid, which is not installed here; its "
            "parameters are laid out differently from the PyTorch hash grid's, so the run loads only where "
            "tiny-cuda-nn is installed (a CUDA machine; the README says how to install it). To train a run that "
            "loads anywhere, pass --pipeline.model.implementation torch."
        )
    model_config.implementation = "tcnn" if trained_with_tcnn else "torch"


def model_state(pipeline_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's part of a checkpoint's pipeline state; a run trained on several devices saved its model
    wrapped in DistributedDataParallel (every key under `_model.module.`), which is unwrapped."""
    state = {key.removeprefix("_model."): value for key, value in pipeline_state.items() if key.startswith("_model.")}
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


class TrainedRun(NamedTuple):
    config: Any  # the run's TrainerConfig, as config.yml holds it
    model: Any  # its trained nerfstudio Model, in eval mode


def load_run(
    run_dir: Path, expected: type | tuple[type, ...] = object, device: str | torch.device | None = None
) -> TrainedRun:
    """The config and trained model of a run (config.yml read once), without its dataset or anything else the
    trainer builds.

    `expected` (a Model class) must be what the run trained; the model class rebuilds its constructor's
    metadata from its own saved buffers (`metadata_from_state`).
    """
    from nerfstudio.data.scene_box import SceneBox

    config_path, checkpoint_path = find_run(Path(run_dir))
    config = load_run_config(config_path)
    target = config.pipeline.model._target
    if not (isinstance(target, type) and issubclass(target, expected)):
        wanted = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ValueError(f"{config_path} is a {config.method_name} run, not a {wanted} one")
    state = model_state(load_checkpoint(checkpoint_path)["pipeline"])
    _match_hash_grid_implementation(config.pipeline.model, state, checkpoint_path)
    radius = float(state["scene_radius_buffer"])
    device = torch.device(resolve_device(device))
    model = config.pipeline.model.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-radius] * 3, [radius] * 3])),
        num_train_data=target.num_train_data_from_state(state),
        metadata=target.metadata_from_state(state),
        device=device,
    )
    model.load_state_dict(state)
    return TrainedRun(config, model.to(device).eval())


def load_result(run_dir: Path, device: str | torch.device | None = None):
    """A trained run of either method as one exportable result (`onelook.export.Exportable`, model frame):
    a RealFusion run's object, or a LOLNeRF run's category's mean object (its mean latent)."""
    from onelook.lolnerf import Reconstructor
    from onelook.models.lolnerf import LOLNeRFModel
    from onelook.models.realfusion import RealFusionModel
    from onelook.realfusion import RealFusionResult

    run = load_run(Path(run_dir), (LOLNeRFModel, RealFusionModel), device)
    if isinstance(run.model, LOLNeRFModel):
        recon = Reconstructor(run.model)
        return recon.reconstruction(recon.model.latents.mean())
    return RealFusionResult.from_model(run.model, run.config.pipeline.datamanager.dataparser)
