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


class WindowHeadsAttention(nn.Module):
    """torchvision's Swin attention (``ShiftedWindowAttention``) with some heads removed, and its input and
    output widths free: torchvision's function derives a head's width from its input's (``C // num_heads``),
    which a compacted one no longer has. The same computation otherwise: pad to whole windows, shift,
    attend within each window with the surviving heads' relative position biases and the shift mask,
    project, shift back, unpad."""

    def __init__(self, attention: nn.Module, kept_heads: torch.Tensor, head_dim: int):
        super().__init__()
        self.qkv, self.proj = attention.qkv, attention.proj
        table = attention.relative_position_bias_table.detach().index_select(1, kept_heads)
        self.relative_position_bias_table = nn.Parameter(table.contiguous())
        self.register_buffer("relative_position_index", attention.relative_position_index.clone())
        self.window_size, self.shift_size = list(attention.window_size), list(attention.shift_size)
        self.heads, self.head_dim = int(kept_heads.numel()), head_dim
        self.attention_dropout, self.dropout = attention.attention_dropout, attention.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        (wh, ww), tokens = self.window_size, self.window_size[0] * self.window_size[1]
        x = F.pad(x, (0, 0, 0, (ww - width % ww) % ww, 0, (wh - height % wh) % wh))
        rows, cols = x.shape[1], x.shape[2]
        shift = [s if w < size else 0 for s, w, size in zip(self.shift_size, self.window_size, (rows, cols))]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (rows // wh) * (cols // ww)
        x = x.view(batch, rows // wh, wh, cols // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch * windows, tokens, channels)
        qkv = self.qkv(x).reshape(batch * windows, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q * self.head_dim**-0.5).matmul(k.transpose(-2, -1)) + self._position_bias(tokens)
        if sum(shift) > 0:
            mask = _shift_mask(x, rows, cols, self.window_size, shift)
            scores = scores.view(batch, windows, self.heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.heads, tokens, tokens)
        attention = F.dropout(F.softmax(scores, dim=-1), p=self.attention_dropout, training=self.training)
        x = attention.matmul(v).transpose(1, 2).reshape(batch * windows, tokens, self.heads * self.head_dim)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)
        out = x.shape[-1]
        x = x.view(batch, rows // wh, cols // ww, wh, ww, out).permute(0, 1, 3, 2, 4, 5).reshape(batch, rows, cols, out)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()

    def _position_bias(self, tokens: int) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index]
        return bias.view(tokens, tokens, -1).permute(2, 0, 1).contiguous().unsqueeze(0)


def _shift_mask(x: torch.Tensor, rows: int, cols: int, window: list[int], shift: list[int]) -> torch.Tensor:
    """-100 between tokens of a shifted window that came from different regions of the image, as Swin does."""
    region = x.new_zeros((rows, cols))
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            region[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    region = region.view(rows // window[0], window[0], cols // window[1], window[1]).permute(0, 2, 1, 3)
    region = region.reshape(-1, window[0] * window[1])
    mask = region.unsqueeze(1) - region.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
