"""lightseq's exceptions. Every error lightseq raises is a lightseq.Error, and each also subclasses
the builtin a caller would catch for it: a bad value is a ValueError, a wrong type a TypeError.
The native extension raises these same classes (binding.cpp imports them). Pure Python."""
from __future__ import annotations


class Error(RuntimeError):
    """The base of every lightseq error; raised as such for failures at run time (CUDA, NVRTC, the
    kernel cache, a missing extension)."""


class ArgumentError(Error, ValueError):
    """An argument or input with a value lightseq cannot take (a shape, a device, a mask)."""


class ArgumentTypeError(Error, TypeError):
    """An argument or input of the wrong type (not a tensor, not a module, a dtype it was not
    compiled for)."""


class Unsupported(ArgumentError):
    """A module, configuration or dtype lightseq cannot compile; the message says why.
    lightseq.compile leaves such a module as it was and explain() reports the reason."""


class SpecError(ArgumentError):
    """A model spec that breaks a rule of docs/spec.md (the native SpecError); the message lists
    every issue, each naming its path, value, rule and fix."""


for _cls in (Error, ArgumentError, ArgumentTypeError, Unsupported, SpecError):
    _cls.__module__ = "lightseq"  # tracebacks and reprs say lightseq.SpecError, as it is exported


def a_type(value) -> str:
    """ "an int", "a str", "a Tensor": the type of `value` with its article, for messages."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


__all__ = ["Error", "ArgumentError", "ArgumentTypeError", "Unsupported", "SpecError"]
