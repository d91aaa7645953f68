"""Two-tower retrieval head (Yi et al. 2019): a user tower over the user-side input and an item
tower over the item-side input, both read from the ranking model's own embedding tables.

Vectors are L2-normalised, so a dot product is a cosine in [-1, 1] and the softmax temperature
alone sets how peaked the in-batch distribution is. The item tower sees item fields only, so
the whole catalogue is embedded once and served from a nearest-neighbour index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mtl.models.layers import MLP


class TwoTower(nn.Module):
    def __init__(self, user_dim: int, item_dim: int, units: Sequence[int], out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.user_tower = nn.Sequential(MLP(user_dim, units, dropout), nn.Linear(units[-1], out_dim))
        self.item_tower = nn.Sequential(MLP(item_dim, units, dropout), nn.Linear(units[-1], out_dim))

    def user_vectors(self, user_input: Tensor) -> Tensor:
        return F.normalize(self.user_tower(user_input), dim=-1)

    def item_vectors(self, item_input: Tensor) -> Tensor:
        return F.normalize(self.item_tower(item_input), dim=-1)
