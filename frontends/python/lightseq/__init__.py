"""lightseq: Transformer training layers compiled for the GPU they run on.

    import lightseq
    model = lightseq.compile(model)     # swaps supported layers in place, same nn.Parameters
    print(lightseq.explain(model))      # what was compiled, and why the rest was not

    step = lightseq.TrainStep(embedding=..., transformer=..., loss=..., optimizer=...)
    loss = step(src, tgt, targets)      # a whole training step in C++, one CUDA graph replay
"""
from __future__ import annotations

from . import nn, optim
from ._compile import compile, explain  # noqa: A004 - the public name is compile
from ._errors import ArgumentError, ArgumentTypeError, Error, SpecError, Unsupported
from ._native import gpu_available
from ._train import TrainStep

__version__ = "0.1.0"
__all__ = ["compile", "explain", "nn", "optim", "TrainStep", "Error", "ArgumentError", "ArgumentTypeError", "Unsupported",
           "SpecError", "gpu_available", "__version__"]
