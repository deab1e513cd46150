"""GLO's table of per-image latent codes, optimised jointly with the network (an auto-decoder)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LatentTable(nn.Module):
    """One learnable code per training image, initialised near zero so every image starts at the mean."""

    def __init__(self, num_latents: int, latent_dim: int, init_std: float = 0.01):
        super().__init__()
        self.embedding = nn.Embedding(num_latents, latent_dim)
        nn.init.normal_(self.embedding.weight, std=init_std)

    @property
    def latent_dim(self) -> int:
        return self.embedding.embedding_dim

    def forward(self, indices: Tensor) -> Tensor:
        """(N,) or (N, 1) integer indices (camera indices come as (N, 1)) -> (N, latent_dim) codes."""
        if indices.ndim >= 2 and indices.shape[-1] == 1:
            indices = indices[..., 0]
        return self.embedding(indices.long())

    def mean(self) -> Tensor:
        return self.embedding.weight.mean(dim=0)

    def std(self) -> Tensor:
        return self.embedding.weight.std(dim=0)

    def sample(self, num: int, truncation: float = 0.7, generator: torch.Generator | None = None) -> Tensor:
        """New codes: a diagonal Gaussian fitted to the table, pulled towards the mean (truncation trick)."""
        noise = torch.randn(num, self.latent_dim, generator=generator, device=self.embedding.weight.device)
        return self.mean() + truncation * noise * self.std()
