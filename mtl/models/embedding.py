"""Model inputs: hashed ids -> embedding rows, sequences -> pooled vectors, raw dense -> normalised.

One table per vocab, shared by every field of that vocab (the item history reads the item
table the item tower reads), so the ranking part and both retrieval towers learn the same
embeddings. Each side (user, item, pair) is produced on its own: the user tower must not see
item fields, and the catalogue is embedded from item fields only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtl.config import ConfigError
from mtl.models.model_config import EmbeddingConfig
from mtl.schema import DENSE_KEY, PAD_HASH, Field, Side

Batch = Mapping[str, Tensor]
SIDES: tuple[Side, ...] = ("user", "item", "pair")
# Columns whose spread in the stats is below this are only centred: scaling them would blow up
# any later variation (and 0 would divide by zero).
MIN_STD = 1e-6


def hash_to_bucket(hashes: Tensor, buckets: int) -> Tensor:
    """0 (missing / padding) stays bucket 0; any other hash, negative included, lands in 1..buckets-1."""
    return (torch.remainder(hashes, buckets - 1) + 1) * (hashes != PAD_HASH)


def normalise_dense(raw: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(log1p(max(x, 0)) - mean) / std: counts and prices are heavy-tailed, log1p tames them. A
    null (NaN) counts as 0."""
    return (torch.log1p(torch.nan_to_num(raw, nan=0.0).clamp_min(0.0)) - mean) / std


def dense_feature_stats(dense: Tensor) -> dict[str, list[float]]:
    """Per-column mean and std in log1p space of raw dense values [N, D], as the model expects."""
    logged = torch.log1p(torch.nan_to_num(dense.double(), nan=0.0).clamp_min(0.0))
    return {"dense_mean": logged.mean(0).tolist(), "dense_std": logged.std(0, unbiased=False).tolist()}


class FeatureEmbedding(nn.Module):
    """Turns a batch into one flat input vector per side: its fields' embeddings, then its dense columns."""

    def __init__(
        self,
        fields: Sequence[Field],
        cfg: EmbeddingConfig,
        feature_stats: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        self.dim = cfg.dim
        self.pooling = cfg.sequence_pooling
        self.id_fields = [f for f in fields if f.kind != "dense"]
        dense_fields = [f for f in fields if f.kind == "dense"]
        self.vocab_fields: dict[str, list[Field]] = {}
        for f in self.id_fields:
            if f.vocab is None:
                raise ConfigError(f"field {f.name}: a {f.kind} field needs a vocab")
            if f.vocab not in cfg.buckets:
                raise ConfigError(f"embedding.buckets: no bucket count for vocab {f.vocab!r} (field {f.name})")
            self.vocab_fields.setdefault(f.vocab, []).append(f)
        self.tables = nn.ModuleDict(
            {
                vocab: nn.Embedding(cfg.buckets[vocab], cfg.dim, padding_idx=0, sparse=cfg.sparse)
                for vocab in self.vocab_fields
            }
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()
        if self.pooling == "attention":
            self.queries = nn.ParameterDict(
                {f.name: nn.Parameter(torch.randn(cfg.dim) * 0.05) for f in self.id_fields if f.kind == "sequence"}
            )

        mean, std = _stats_tensors(feature_stats, len(dense_fields))
        self.register_buffer("dense_mean", mean)
        self.register_buffer("dense_std", torch.where(std > MIN_STD, std, torch.ones_like(std)))
        self.side_fields = {s: [f.name for f in self.id_fields if f.side == s] for s in SIDES}
        for side in SIDES:
            columns = [i for i, f in enumerate(dense_fields) if f.side == side]
            self.register_buffer(f"dense_index_{side}", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.widths = {s: len(self.side_fields[s]) * cfg.dim + len(self._dense_index(s)) for s in SIDES}

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [t.weight for t in self.tables.values()]

    @property
    def dense_width(self) -> int:
        return int(self.dense_mean.numel())

    def dense_inputs(self, batch: Batch) -> Tensor:
        """[B, dense_width]: every dense column, normalised, in schema order."""
        return normalise_dense(batch[DENSE_KEY], self.dense_mean, self.dense_std)

    def forward(self, batch: Batch, sides: Sequence[Side] = SIDES) -> dict[Side, Tensor]:
        """Side -> [B, widths[side]]. Only the fields of ``sides`` are read from the batch."""
        vectors = self._embed_ids(batch, set(sides))
        dense = None
        if any(len(self._dense_index(s)) for s in sides):
            dense = self.dense_inputs(batch)
        out: dict[Side, Tensor] = {}
        for side in sides:
            parts = [vectors[name] for name in self.side_fields[side]]
            index = self._dense_index(side)
            if len(index):
                parts.append(dense.index_select(1, index))
            if not parts:
                raise ValueError(f"the schema has no {side}-side field")
            out[side] = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return out

    def _embed_ids(self, batch: Batch, sides: set[str]) -> dict[str, Tensor]:
        # One lookup per vocab: the fields sharing a table are concatenated, looked up together
        # and split again, which costs one gather (and one sparse gradient) instead of one per field.
        vectors: dict[str, Tensor] = {}
        for vocab, vocab_fields in self.vocab_fields.items():
            wanted = [f for f in vocab_fields if f.side in sides]
            if not wanted:
                continue
            ids = [batch[f.name].reshape(batch[f.name].shape[0], -1) for f in wanted]
            hashes = torch.cat(ids, dim=1) if len(ids) > 1 else ids[0]
            table = self.tables[vocab]
            rows = table(hash_to_bucket(hashes, table.num_embeddings))
            for f, chunk, chunk_ids in zip(wanted, rows.split([i.shape[1] for i in ids], dim=1), ids):
                vectors[f.name] = chunk.squeeze(1) if f.kind == "categorical" else self._pool(f.name, chunk, chunk_ids)
        return vectors

    def _pool(self, name: str, rows: Tensor, hashes: Tensor) -> Tensor:
        # Masked mean by default: the user tower has to be independent of the candidate item (so
        # the catalogue is embedded once), which rules out DIN-style target attention; the mean is
        # order-free, costs nothing and is robust for the short histories most users have.
        # Padding rows are the all-zero row 0, so their sum needs no mask; only the count does.
        present = hashes != PAD_HASH
        if self.pooling == "mean":
            return rows.sum(1) / present.sum(1, keepdim=True).clamp_min(1)
        scores = (rows @ self.queries[name]) / math.sqrt(self.dim)
        # A finite fill keeps an all-padding row finite: uniform weights over zero rows give 0.
        weights = torch.softmax(scores.masked_fill(~present, torch.finfo(scores.dtype).min), dim=1)
        return (weights.unsqueeze(-1) * rows).sum(1)

    def _dense_index(self, side: str) -> Tensor:
        return getattr(self, f"dense_index_{side}")


def _stats_tensors(stats: Mapping[str, Sequence[float]] | None, n_dense: int) -> tuple[Tensor, Tensor]:
    if stats is None:
        return torch.zeros(n_dense), torch.ones(n_dense)
    tensors = []
    for key in ("dense_mean", "dense_std"):
        if key not in stats:
            raise ValueError(f"feature stats: missing {key!r}")
        values = torch.tensor(list(stats[key]), dtype=torch.float32)
        if values.shape != (n_dense,):
            raise ValueError(f"feature stats: {key} has {values.numel()} values, the schema has {n_dense} dense fields")
        if not torch.isfinite(values).all():
            raise ValueError(f"feature stats: {key} is not finite")
        tensors.append(values)
    return tensors[0], tensors[1]
