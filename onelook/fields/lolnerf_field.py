"""LOLNeRF's field: a NeRF MLP conditioned on a per-image latent code, with view-independent colour.

The latent arrives per ray in `ray_samples.metadata["latent"]` (shape (..., 1, D)), put there by the model.
The same class serves as the foreground and (smaller) background network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from torch import Tensor, nn

from onelook.field_components.latent_mlp import LatentConditionedMLP


class LOLNeRFField(Field):
    def __init__(
        self,
        latent_dim: int,
        num_layers: int = 8,
        width: int = 256,
        skips: tuple[int, ...] = (4,),
        num_frequencies: int = 10,
        position_scale: float = 1.0,
    ):
        """`position_scale` divides positions first, so that the scene's bound maps to 1."""
        super().__init__()
        self.position_scale = position_scale
        self.encoding = NeRFEncoding(
            in_dim=3,
            num_frequencies=num_frequencies,
            min_freq_exp=0.0,
            max_freq_exp=num_frequencies - 2,
            include_input=True,
        )
        self.mlp = LatentConditionedMLP(self.encoding.get_out_dim(), latent_dim, num_layers, width, skips)
        self.density_head = nn.Linear(width, 1)
        self.rgb_head = nn.Linear(width, 3)

    def features(self, positions: Tensor, latent: Tensor) -> Tensor:
        return self.mlp(self.encoding(positions / self.position_scale), latent)

    def density_from(self, features: Tensor) -> Tensor:
        # Shifted softplus (as in mip-NeRF): smooth, positive, and near-empty space at initialisation.
        return F.softplus(self.density_head(features) - 1.0)

    def rgb_from(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.rgb_head(features))

    def get_density(self, ray_samples: RaySamples) -> tuple[Tensor, Tensor]:
        features = self.features(ray_samples.frustums.get_positions(), ray_samples.metadata["latent"])
        return self.density_from(features), features

    def get_outputs(self, ray_samples: RaySamples, density_embedding: Tensor | None = None) -> dict:
        return {FieldHeadNames.RGB: self.rgb_from(density_embedding)}

    def query(self, positions: Tensor, latent: Tensor) -> tuple[Tensor, Tensor]:
        """Density (..., 1) and colour (..., 3) at arbitrary points for a latent broadcastable to them."""
        features = self.features(positions, latent)
        return self.density_from(features), self.rgb_from(features)
