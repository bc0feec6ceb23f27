"""lightseq: Transformer training layers compiled for the GPU they run on.

    import lightseq
    model = lightseq.compile(model)     # swaps supported layers in place, same nn.Parameters
    print(lightseq.explain(model))      # what was compiled, and why the rest was not
"""
from __future__ import annotations

from . import nn
from ._compile import compile, explain  # noqa: A004 - the public name is compile
from ._native import Error, gpu_available

__version__ = "0.1.0"
__all__ = ["compile", "explain", "nn", "Error", "gpu_available", "__version__"]


def _adopt_extension_errors():
    """Make lightseq.Error catch the extension's errors too (they derive from RuntimeError)."""
    try:
        from . import _C
    except ImportError:
        return
    global Error
    Error = _C.Error


_adopt_extension_errors()
