"""nn.MultiheadAttention rewritten as two plain Linear layers, so torch-pruning can prune through it.

torch-pruning's dependency graph finds no group through nn.MultiheadAttention (its fused
in_proj_weight and fast path hide the projections), so the embedding width feeding a transformer
block could not be pruned. As one `qkv` Linear and one `proj` Linear (timm's layout, which
torch-pruning supports with `num_heads`), the same weights compute the same outputs and the
projections prune with the layers around them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    """The self-attention of an nn.MultiheadAttention (query = key = value), same weights."""

    # nn.TransformerEncoderLayer reads this to pick its fused fast path (which would bypass this
    # module); None sends it down the path that calls this module. The bias is in `qkv`.
    in_proj_bias = None

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        e = mha.embed_dim
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        self.qkv = nn.Linear(e, 3 * e, bias=mha.in_proj_bias is not None)
        self.proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(mha.in_proj_weight)
            self.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                self.qkv.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                self.proj.bias.copy_(mha.out_proj.bias)

    def forward(
        self, query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None, **_
    ):
        """nn.MultiheadAttention's call, for self-attention; attention weights are not returned."""
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("edgekit prunes self-attention only (key and value must be the query)")
        x = query if self.batch_first else query.transpose(0, 1)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            scores = (
                scores.masked_fill(attn_mask, float("-inf"))
                if attn_mask.dtype == torch.bool
                else scores + attn_mask
            )
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = self.proj((weights @ v).transpose(1, 2).reshape(b, n, -1))
        return (out if self.batch_first else out.transpose(0, 1)), None


def unfuse(module: nn.Module, example: tuple) -> dict[nn.Linear, int]:
    """Replace every nn.MultiheadAttention of MODULE that runs as self-attention on EXAMPLE (query,
    key and value the same tensor, one width) by a SelfAttention; returns {qkv layer: heads}, the
    `num_heads` torch-pruning needs. Cross-attention is left as it is."""
    selfish: dict[nn.MultiheadAttention, bool] = {}

    def record(mha, args, kwargs):
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args) :]])[:3]
        selfish[mha] = selfish.get(mha, True) and k is q and v is q

    mhas = [m for m in module.modules() if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim]
    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in mhas]
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for h in hooks:
            h.remove()
    heads = {}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if selfish.get(child):
                attn = SelfAttention(child)
                setattr(parent, name, attn)
                heads[attn.qkv] = attn.num_heads
    return heads
