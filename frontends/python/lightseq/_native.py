"""Access to the compiled extension lightseq._C, with a clear error where it is missing."""
from __future__ import annotations

import importlib

from ._errors import Error

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


def gpu_available() -> tuple[bool, str]:
    """(True, "") when lightseq can run on a GPU here, else (False, why)."""
    C = extension()
    if C.device_count() > 0:
        return True, ""
    return False, C.no_gpu_reason()
