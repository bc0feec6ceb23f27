"""Standalone compiled modules, for models built from scratch."""
from __future__ import annotations

from typing import Optional

import torch

from . import _compile, _spec
from ._embedding import Embedding, sinusoidal_table
from ._loss import CrossEntropyLoss, LinearCrossEntropyLoss
from ._errors import ArgumentError, Unsupported

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "Embedding", "CrossEntropyLoss", "LinearCrossEntropyLoss",
           "sinusoidal_table"]


# The activation names lightseq.nn takes -> what torch's layer is built with.
_TORCH_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh")}


def _check_arguments(cls_name: str, hidden: int, heads: int, ffn: int, activation: str) -> None:
    if activation not in _TORCH_ACTIVATIONS:
        raise ArgumentError(f"lightseq.nn.{cls_name}: activation '{activation}': lightseq compiles "
                            + ", ".join(f"'{a}'" for a in _TORCH_ACTIVATIONS))
    try:
        _spec.check_sizes(hidden, heads, ffn)
    except Unsupported as why:
        raise Unsupported(f"lightseq.nn.{cls_name}: {why}") from None


def _init(module, torch_cls, extract, hidden, heads, ffn, dropout, activation, norm_first, eps, batch_first,
          cache_dir, device, dtype) -> None:
    """Builds `module` as its torch base class `torch_cls` would, then marks it compiled."""
    _check_arguments(torch_cls.__name__, hidden, heads, ffn, activation)
    if dtype is not None:
        try:
            _spec.dtype_name(dtype)
        except Unsupported as why:
            raise Unsupported(f"lightseq.nn.{torch_cls.__name__}: {why}") from None
    act = _TORCH_ACTIVATIONS[activation]
    torch_cls.__init__(module, d_model=hidden, nhead=heads, dim_feedforward=ffn, dropout=dropout,
                       activation=act if isinstance(act, str) else act(), layer_norm_eps=eps, batch_first=batch_first, norm_first=norm_first,
                       device=device, dtype=dtype)
    state = _compile._LayerState(extract(module), dtype or torch.get_default_dtype(), cache_dir)
    issues = _compile._compiler_issues(state, "")
    if issues:
        raise Unsupported(f"lightseq.nn.{torch_cls.__name__}: " + "; ".join(issues))
    setattr(module, _compile._STATE, state)


class TransformerEncoderLayer(_compile.CompiledTransformerEncoderLayer):
    """An encoder layer (self-attention + FFN) compiled by lightseq. Its parameters have the names
    and layout of torch.nn.TransformerEncoderLayer (self_attn.in_proj_weight, linear1, norm1, ...),
    so state_dicts move between the two.

        layer = lightseq.nn.TransformerEncoderLayer(768, 12, 3072, activation="gelu").cuda()
        y = layer(x, src_key_padding_mask=pad)   # x: [B, T, 768]
    """

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1, activation: str = "relu",
                 norm_first: bool = False, eps: float = 1e-5, batch_first: bool = True,
                 cache_dir: Optional[str] = None, device=None, dtype: Optional[torch.dtype] = None):
        _init(self, torch.nn.TransformerEncoderLayer, _spec.from_torch_encoder_layer, hidden, heads, ffn, dropout,
              activation, norm_first, eps, batch_first, cache_dir, device, dtype)


class TransformerDecoderLayer(_compile.CompiledTransformerDecoderLayer):
    """A decoder layer (causal self-attention + cross-attention over the encoder output + FFN)
    compiled by lightseq, with the parameter names and layout of torch.nn.TransformerDecoderLayer
    (self_attn, multihead_attn, linear1, norm1..norm3, ...).

        layer = lightseq.nn.TransformerDecoderLayer(512, 8, 2048).cuda()
        y = layer(x, memory, tgt_is_causal=True, tgt_key_padding_mask=pad,
                  memory_key_padding_mask=memory_pad)   # x: [B, T, 512], memory: [B, S, 512]
    """

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1, activation: str = "relu",
                 norm_first: bool = False, eps: float = 1e-5, batch_first: bool = True,
                 cache_dir: Optional[str] = None, device=None, dtype: Optional[torch.dtype] = None):
        _init(self, torch.nn.TransformerDecoderLayer, _spec.from_torch_decoder_layer, hidden, heads, ffn, dropout,
              activation, norm_first, eps, batch_first, cache_dir, device, dtype)
