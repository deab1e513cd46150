"""Our coarse-to-fine hash grid against nerfstudio's HashEncoding, whose parameters and function it shares."""

from __future__ import annotations

import pytest
import torch
from nerfstudio.field_components.encodings import HashEncoding

from onelook.field_components.hash_grid import CoarseToFineHashEncoding
from onelook.fields.realfusion_field import RealFusionField

SETTINGS = dict(num_levels=6, min_res=4, max_res=200, log2_hashmap_size=10, features_per_level=2)


@pytest.fixture
def grids() -> tuple[HashEncoding, CoarseToFineHashEncoding]:
    torch.manual_seed(0)
    reference = HashEncoding(**SETTINGS, implementation="torch")
    ours = CoarseToFineHashEncoding(**SETTINGS, implementation="torch")
    ours.load_state_dict(reference.state_dict())  # the same parameter, under the same name
    return reference, ours


@pytest.mark.parametrize("active", [6, 4, 1])
def test_the_same_features_and_gradients_as_nerfstudios_on_the_active_levels(grids, active):
    reference, ours = grids
    ours.set_active_levels(active)
    # Points anywhere in the unit cube, on grid vertices too (where ceil equals floor), and slightly outside it.
    points = torch.cat([torch.rand(3000, 3) * 1.1 - 0.05, torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.25, 1.0]])])
    weights = torch.randn(points.shape[0], 12)
    mask = torch.zeros(6, 2)
    mask[:active] = 1.0
    expected = reference(points) * mask.flatten()
    got = ours(points)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), reference.hash_table)
    (grad,) = torch.autograd.grad((got * weights).sum(), ours.hash_table)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
    if active < 6:  # the levels not switched on are not trained
        assert grad[active * 2**10 :].abs().max() == 0


def test_a_loaded_field_keeps_the_levels_its_run_had_switched_on():
    settings = dict(implementation="torch", num_levels=8, log2_hashmap_size=10, max_res=64)
    field = RealFusionField(**settings)
    field.set_active_levels(3)
    loaded = torch.nn.ModuleDict({"field": RealFusionField(**settings)})
    assert loaded["field"].encoding.active_levels == 8
    loaded.load_state_dict({f"field.{key}": value for key, value in field.state_dict().items()})
    assert loaded["field"].encoding.active_levels == loaded["field"].active_levels == 3
    points = torch.rand(50, 3) - 0.5
    torch.testing.assert_close(loaded["field"].query(points), field.query(points))
