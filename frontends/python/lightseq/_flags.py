"""Error flags a kernel sets on the device (a bad token, a bad target), read on the host without
synchronizing: each call's flag is copied to pinned memory behind an event, and read once the
copy is done — a bad input is reported by a later call, or at once by check(wait=True)."""
from __future__ import annotations

import torch

from ._errors import ArgumentError


class ErrorFlags:
    def __init__(self):
        self.pending = []  # (event, pinned flag)

    def __getstate__(self):  # copies and pickles leave the pending flags (CUDA events) behind
        return {"pending": None}  # (not empty: pickle protocols 0 and 1 skip __setstate__ for {})

    def __setstate__(self, state):
        self.pending = []

    def watch(self, flag: torch.Tensor) -> None:
        if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
            return  # no host copies while tracing or capturing
        host = torch.zeros(1, dtype=flag.dtype, pin_memory=True)
        stream = torch.cuda.current_stream(flag.device)  # where the copy is queued
        with torch.cuda.stream(stream):
            host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
        self.pending.append((event, host))

    def check(self, message: str, wait: bool = False) -> None:
        """Raises ArgumentError(message) if a finished call (with wait: any call) set its flag."""
        if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
            return
        keep, bad = [], False
        for event, host in self.pending:
            if wait:
                event.synchronize()
            elif not event.query():
                keep.append((event, host))
                continue
            bad = bad or int(host[0]) != 0
        self.pending = [] if bad else keep
        if bad:
            raise ArgumentError(message)
