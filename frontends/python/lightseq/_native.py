"""Access to the compiled extension lightseq._C, with a clear error where it is missing."""
from __future__ import annotations

import importlib
import sys

from ._errors import ArgumentError, Error

_ext = None


def extension():
    """The extension module; raises Error saying how to build it when it is absent."""
    global _ext
    if _ext is None:
        try:
            _ext = importlib.import_module("lightseq._C")
        except ImportError as e:
            raise Error(f"lightseq's native extension is not built ({e}); install the package with "
                        "`pip install .` from the repository, or build it with scripts/build "
                        "(-DLIGHTSEQ_BUILD_PYTHON=ON)") from e
    return _ext


def check_choice(where: str, name: str, value, path: str) -> None:
    """Raises ArgumentError unless `value` is one of the names the spec's enumerated field `path`
    takes ("embedding.positions"; the compiler's own list, lightseq._C.spec_choices()). Without the
    extension nothing is checked here: the first call that needs it says it is missing."""
    try:
        allowed = _choices()[path]
    except Error:
        return
    if value not in allowed:
        raise ArgumentError(f"{where}: {name}={value!r}; give one of " + ", ".join(map(repr, allowed)))


def _choices() -> dict:
    global _spec_choices
    if _spec_choices is None:
        _spec_choices = dict(extension().spec_choices())
    return _spec_choices


_spec_choices = None


def gpu_available() -> tuple[bool, str]:
    """(True, "") when lightseq can run on a GPU here, else (False, why)."""
    C = extension()
    if C.device_count() > 0:
        return True, ""
    return False, C.no_gpu_reason()


def assume_constant_result(fn):
    """torch._dynamo.assume_constant_result(fn) (torch.compile then calls fn while tracing and bakes
    in its result) without importing torch._dynamo, which costs 1-4 s at `import lightseq`: the
    decorator only marks the function, and dynamo reads the mark when it traces.
    tests/python/test_cpu.py checks that the mark is the one torch's decorator sets."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        return dynamo.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn
