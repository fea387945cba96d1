"""SQuARE: cross-image relational queries injected into per-image, question-aware query tokens.

Relational queries attend over the concatenated patch features of ALL images of the group and
form a shared relational representation. Each image then gets its own learnable queries which,
with the question's token embeddings beside them in self-attention (Q-Former style), attend to
that image's patches and to the relational representation (the injection). The result is a
compact, fixed number of visual tokens per image, however large the tower's patch grid.
"""

from __future__ import annotations

import torch
from torch import nn

from autolabel.prima.config import SquareSpec


class _Attention(nn.Module):
    """Pre-norm multi-head attention with a residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm(x)
        kv = q if context is None else context
        return x + self.attention(q, kv, kv, need_weights=False)[0]


class _FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class _RelationalLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attention, self.cross_attention = _Attention(dim, heads), _Attention(dim, heads)
        self.feed_forward = _FeedForward(dim)

    def forward(self, queries: torch.Tensor, group_patches: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.cross_attention(self.self_attention(queries), group_patches))


class _ImageLayer(nn.Module):
    def __init__(self, dim: int, heads: int, relational: bool):
        super().__init__()
        self.self_attention, self.image_attention = _Attention(dim, heads), _Attention(dim, heads)
        self.relation_attention = _Attention(dim, heads) if relational else None
        self.feed_forward = _FeedForward(dim)

    def forward(self, queries: torch.Tensor, text: torch.Tensor, patches: torch.Tensor,
                relations: torch.Tensor | None) -> torch.Tensor:
        n = queries.shape[1]
        queries = self.self_attention(torch.cat([queries, text], 1))[:, :n]
        queries = self.image_attention(queries, patches)
        if self.relation_attention is not None:
            queries = self.relation_attention(queries, relations)
        return self.feed_forward(queries)


class SQuARE(nn.Module):
    def __init__(self, spec: SquareSpec, vision_dim: int, text_dim: int):
        super().__init__()
        self.spec = spec
        self.image_queries = nn.Parameter(torch.randn(spec.num_image_queries, vision_dim) * 0.02)
        self.text_projection = nn.Linear(text_dim, vision_dim)
        self.image_layers = nn.ModuleList(_ImageLayer(vision_dim, spec.num_heads, spec.use_relational_queries)
                                          for _ in range(spec.num_layers))
        if spec.use_relational_queries:
            self.relational_queries = nn.Parameter(torch.randn(spec.num_relational_queries, vision_dim) * 0.02)
            self.relational_layers = nn.ModuleList(_RelationalLayer(vision_dim, spec.num_heads)
                                                   for _ in range(spec.num_layers))
        self.norm = nn.LayerNorm(vision_dim)

    def forward(self, patches: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """patches (N images, P, D) of one group, question (T, text_dim) -> (N, queries, D)."""
        n = patches.shape[0]
        relations = None
        if self.spec.use_relational_queries:
            group = patches.reshape(1, -1, patches.shape[-1])  # every patch of every image
            relations = self.relational_queries[None]
            for layer in self.relational_layers:
                relations = layer(relations, group)
            relations = relations.expand(n, -1, -1)
        text = self.text_projection(question)[None].expand(n, -1, -1)
        queries = self.image_queries[None].expand(n, -1, -1)
        for layer in self.image_layers:
            queries = layer(queries, text, patches, relations)
        return self.norm(queries)
