"""LOLNeRF under DistributedDataParallel, as `ns-train lolnerf --machine.num-devices N` runs it on several GPUs.

nerfstudio's launcher starts one process per device and its pipeline wraps the model in DDP; on a CPU its
worker refuses to start (it asserts CUDA), so this test starts two processes itself, joined over gloo on the
loopback address, and wraps our pipeline the way nerfstudio's `VanillaPipeline` does (without `device_ids`,
which DDP takes for GPUs only).
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 12


def _train_rank(rank: int, world_size: int, port: int, dataset: Path, out: Path) -> None:
    """One rank: nerfstudio's seeding (seed + rank), DDP wrapping, optimisers and checkpoint format."""
    from nerfstudio.engine.optimizers import Optimizers
    from torch.nn.parallel import DistributedDataParallel as DDP

    from onelook.configs import lolnerf_small_method

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    config = copy.deepcopy(lolnerf_small_method.config)
    torch.manual_seed(config.machine.seed + rank)
    config.data = config.pipeline.datamanager.data = dataset
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    config.output_dir = out / "runs"
    config.set_timestamp()
    if rank == 0:  # ns-train writes config.yml before the launcher starts the ranks (setup writes into configs)
        config.save_config()
    pipeline = config.pipeline.setup(device="cpu", test_mode="val", world_size=1, local_rank=rank)
    pipeline._model = DDP(pipeline._model, find_unused_parameters=True)
    pipeline.world_size = world_size
    initial = pipeline.model.latents.embedding.weight.detach().clone()
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    pipeline.train()
    first_rays = None
    for step in range(STEPS):
        optimizers.zero_grad_all()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        if first_rays is None:  # which pixels this rank drew first: the ranks must not train on the same rays
            batch_indices = pipeline.datamanager.next_train(step)[1]["indices"]
            first_rays = hashlib.sha1(batch_indices.numpy().tobytes()).hexdigest()
        sum(loss_dict.values()).backward()
        optimizers.optimizer_step_all()
    state = {key: value.detach().clone() for key, value in pipeline.state_dict().items()}
    torch.save({"state": state, "initial_latents": initial, "first_rays": first_rays}, out / f"rank{rank}.pt")
    if rank == 0:  # the checkpoint as nerfstudio's trainer writes it: the pipeline's state under "pipeline"
        checkpoint_dir = config.get_checkpoint_dir()
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"step": STEPS, "pipeline": state}, checkpoint_dir / f"step-{STEPS:09d}.ckpt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_train_one_model_and_its_checkpoint_loads(synth_dataset, tmp_path, free_port):
    mp.spawn(_train_rank, args=(2, free_port(), synth_dataset, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert ranks[0]["first_rays"] != ranks[1]["first_rays"], "both ranks drew the same rays"
    # DDP all-reduces the gradients, so both ranks take the same steps and end with the same weights.
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    # Every image's latent was trained (its rays were on one rank or the other).
    latents = ranks[0]["state"]["_model.module.latents.embedding.weight"]
    moved = (latents - ranks[0]["initial_latents"]).norm(dim=1)
    assert (moved > 1e-4).all(), f"untrained latents: {torch.nonzero(moved <= 1e-4).flatten().tolist()}"

    from onelook.lolnerf import Reconstructor

    run = next((tmp_path / "runs").rglob("config.yml")).parent
    recon = Reconstructor.from_run(run, device="cpu")
    torch.testing.assert_close(recon.model.latents.embedding.weight, latents)
