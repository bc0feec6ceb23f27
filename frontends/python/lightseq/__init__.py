"""lightseq: Transformer training layers compiled for the GPU they run on.

    import lightseq
    model = lightseq.compile(model)     # swaps supported layers in place, same nn.Parameters
    print(lightseq.explain(model))      # what was compiled, and why the rest was not

    step = lightseq.TrainStep(embedding=..., transformer=..., loss=..., optimizer=...)
    loss = step(src, tgt, targets)      # a whole training step in C++, one CUDA graph replay

    out = lightseq.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, dropout_p=0.1)
                                        # the fused attention, padded or packed (variable lengths)
"""
from __future__ import annotations

from . import nn, optim
from ._attention import attention
from ._compile import compile, explain  # noqa: A004 - the public name is compile
from ._errors import ArgumentError, ArgumentTypeError, Error, SpecError, Unsupported
from ._native import gpu_available
from ._train import TrainStep

__version__ = "0.1.0"
__all__ = ["compile", "explain", "attention", "nn", "optim", "TrainStep", "Error", "ArgumentError", "ArgumentTypeError", "Unsupported",
           "SpecError", "gpu_available", "__version__"]
