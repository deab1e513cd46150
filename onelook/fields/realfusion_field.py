"""RealFusion's field: a multi-resolution hash grid with a small MLP, a density blob at the centre, and a
background network on the ray direction.

The hash grid is nerfstudio's HashEncoding: tiny-cuda-nn when installed, otherwise a faster PyTorch path of our
own with the same parameters (the CPU). Coarse-to-fine: the finest levels' features are zero (and, on the
PyTorch path, not computed) until they are switched on; `level_mask` keeps which are on in checkpoints.
Normals are finite differences of the density (as in the released code): first-order only, so they train
the geometry through tiny-cuda-nn too, which has no second derivatives.
"""

from __future__ import annotations

import torch
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.mlp import MLP
from nerfstudio.fields.base_field import Field
from torch import Tensor, nn

from onelook.field_components.hash_grid import CoarseToFineHashEncoding


class RealFusionField(Field):
    def __init__(
        self,
        bound: float = 1.0,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 16,
        min_res: int = 16,
        max_res: int = 1024,
        hidden_dim: int = 64,
        num_layers: int = 3,
        blob_density: float = 5.0,
        blob_radius: float = 0.2,
        density_bias: float = 0.0,
        normal_epsilon: float = 1e-2,
        implementation: str = "tcnn",
    ):
        super().__init__()
        self.bound, self.blob_density, self.blob_radius = bound, blob_density, blob_radius
        self.density_bias = density_bias
        self.normal_epsilon = normal_epsilon
        self.features_per_level = features_per_level
        self.encoding = CoarseToFineHashEncoding(
            num_levels=num_levels,
            min_res=min_res,
            max_res=max_res,
            log2_hashmap_size=log2_hashmap_size,
            features_per_level=features_per_level,
            implementation=implementation,
        )
        self.register_buffer("level_mask", torch.ones(num_levels * features_per_level))
        # A loaded checkpoint's level_mask says which levels its run had switched on.
        self.register_load_state_dict_post_hook(lambda field, _: field.encoding.set_active_levels(field.active_levels))
        self.mlp = MLP(self.encoding.get_out_dim(), num_layers, hidden_dim, out_dim=4, implementation="torch")
        self.direction_encoding = NeRFEncoding(3, 6, 0.0, 5.0, include_input=True)
        self.background = nn.Sequential(
            nn.Linear(self.direction_encoding.get_out_dim(), hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 3),
            nn.Sigmoid(),
        )

    def set_active_levels(self, active: int) -> None:
        """Coarse-to-fine: only the `active` coarsest levels contribute."""
        self.level_mask.zero_()
        self.level_mask[: active * self.features_per_level] = 1.0
        self.encoding.set_active_levels(active)

    @property
    def active_levels(self) -> int:
        return int(self.level_mask.count_nonzero()) // self.features_per_level

    def _raw(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-activation density (..., 1) and albedo logits (..., 3) at world points."""
        unit = (positions / self.bound + 1.0) / 2.0  # the hash grid covers [0, 1]^3
        features = self.encoding(unit.reshape(-1, 3))
        h = self.mlp(features.float()).reshape(*positions.shape[:-1], 4)
        closeness = torch.exp(-positions.square().sum(-1, keepdim=True) / (2 * self.blob_radius**2))
        # The bias fades out towards the blob's centre, so the blob keeps its peak (e^blob_density) at any bias.
        return h[..., :1] + self.blob_density * closeness + self.density_bias * (1 - closeness), h[..., 1:]

    def query(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Density (..., 1) and albedo (..., 3) at arbitrary points."""
        raw, albedo = self._raw(positions)
        return trunc_exp(raw), torch.sigmoid(albedo)

    def get_density(self, ray_samples: RaySamples) -> tuple[Tensor, Tensor]:
        raw, albedo = self._raw(ray_samples.frustums.get_positions())
        return trunc_exp(raw), albedo

    def get_outputs(self, ray_samples: RaySamples, density_embedding: Tensor | None = None) -> dict:
        return {FieldHeadNames.RGB: torch.sigmoid(density_embedding)}

    def normals(self, positions: Tensor) -> Tensor:
        """Unit normals, -grad(density) by central differences (6 extra density queries per point)."""
        eps = self.normal_epsilon
        offsets = torch.eye(3, device=positions.device) * eps
        shifted = torch.cat([positions[..., None, :] + offsets, positions[..., None, :] - offsets], dim=-2)
        raw = self._raw(shifted)[0][..., 0]  # (..., 6)
        gradient = (raw[..., :3] - raw[..., 3:]) / (2 * eps)
        return -torch.nn.functional.normalize(gradient, dim=-1)

    def background_rgb(self, directions: Tensor) -> Tensor:
        return self.background(self.direction_encoding(torch.nn.functional.normalize(directions, dim=-1)))
