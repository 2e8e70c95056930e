"""Multi-head attention with heads removed.

``nn.MultiheadAttention`` ties its heads' width to its input's (``embed_dim = heads * head_dim``), so an
attention that lost heads, or whose residual stream lost channels, is no longer one. `HeadsAttention`
computes what ``nn.MultiheadAttention`` computes with its surviving heads only: the packed input
projection keeps their Q, K and V rows, the output projection their columns, and the scores keep the
original scale (1 / sqrt(head_dim): a head's width never changes). It takes the same arguments and returns
``(output, None)``: evopop only follows attentions whose weights nobody reads. Plain tensor operations and
``F.scaled_dot_product_attention``: ``torch.export`` and ONNX see standard operators.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HeadsAttention(nn.Module):
    def __init__(
        self,
        in_proj_weight: torch.Tensor,
        in_proj_bias: torch.Tensor | None,
        out_proj: nn.Linear,
        kept_heads: torch.Tensor,
        head_dim: int,
        batch_first: bool,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_proj_weight = nn.Parameter(in_proj_weight)
        self.in_proj_bias = nn.Parameter(in_proj_bias) if in_proj_bias is not None else None
        self.out_proj = out_proj
        self.register_buffer("kept_heads", kept_heads, persistent=False)  # for per-head masks
        self.heads, self.head_dim = int(kept_heads.numel()), head_dim
        self.batch_first, self.dropout = batch_first, dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens = x.shape[0], x.shape[1]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = self._mask(attn_mask, key_padding_mask, batch, q.dtype)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        y = self.out_proj(y.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))
        return (y if self.batch_first else y.transpose(0, 1)), None

    def _mask(self, attn_mask, key_padding_mask, batch: int, dtype) -> torch.Tensor | None:
        """``nn.MultiheadAttention``'s masks (True: may not attend; floats: added) as one additive mask of
        shape (batch, kept heads, L, S) for the surviving heads."""
        if attn_mask is None and key_padding_mask is None:
            return None
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:  # (batch * all heads, L, S): keep the surviving heads' planes
                mask = mask.view(batch, -1, *mask.shape[1:]).index_select(1, self.kept_heads)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        return mask


def _additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
