"""An MLP on [encoded point, latent code] that never copies the latent to every sample.

Concatenating a per-ray latent z to each of S samples' inputs costs S copies of z; a linear layer on the
concatenation equals W_x x + W_z z, so W_z z is computed once per ray and broadcast over its samples. The
same holds at the skip connection, where the input (and the latent) re-enter the network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LatentConditionedMLP(nn.Module):
    """ReLU MLP whose first layer and skip layers see [x, z]; x is (..., S, in_dim), z is (..., 1, latent_dim)."""

    def __init__(self, in_dim: int, latent_dim: int, num_layers: int, width: int, skips: tuple[int, ...] = (4,)):
        super().__init__()
        self.skips = tuple(s for s in skips if 0 < s < num_layers)
        self.layers = nn.ModuleList()
        self.latent_layers = nn.ModuleDict()
        for i in range(num_layers):
            if i == 0:
                self.layers.append(nn.Linear(in_dim, width))
            elif i in self.skips:
                self.layers.append(nn.Linear(width + in_dim, width))
            else:
                self.layers.append(nn.Linear(width, width))
            if (i == 0 or i in self.skips) and latent_dim > 0:
                self.latent_layers[str(i)] = nn.Linear(latent_dim, width, bias=False)
        self.out_dim = width

    def forward(self, x: Tensor, latent: Tensor | None) -> Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            if i in self.skips:
                h = torch.cat([h, x], dim=-1)
            h = layer(h)
            if str(i) in self.latent_layers:
                h = h + self.latent_layers[str(i)](latent)
            h = torch.relu(h)
        return h
