"""A call's wall, host-issue and GPU time apart (issue 11's method), for the benchmarks that time
Python calls (layer_host.py, layer_python.py):

  wall  CUDA events over `iters` back-to-back calls, per call (host and GPU overlapped: the slower
        of the two once the launch queue is full)
  host  the time the host takes to issue one call, sampled while a sleep kernel holds the GPU:
        `per_round` calls enqueued behind each sleep (few enough that the launch queue, ~1000
        entries, never fills, so the host never waits on the GPU), `rounds` sleeps
  gpu   per round, those calls' GPU time per call, run back to back once the sleep ends
"""
import statistics
import time

import torch


def wall_host_gpu(call, iters: int, rounds: int = 4, per_round: int = 5, sleep_cycles: int = int(1e9)):
    """(wall ms, [host ms per call], median gpu ms) of `call` after 5 untimed calls."""
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        call()
    end.record()
    torch.cuda.synchronize()
    wall = start.elapsed_time(end) / iters
    host, gpu = [], []
    for _ in range(rounds):
        torch.cuda._sleep(sleep_cycles)  # 1e9 cycles: ~0.5 s at ~2 GHz, longer than the issue
        start.record()
        for _ in range(per_round):
            t0 = time.perf_counter()
            call()
            host.append((time.perf_counter() - t0) * 1e3)
        end.record()
        torch.cuda.synchronize()
        gpu.append(start.elapsed_time(end) / per_round)
    return wall, host, statistics.median(gpu)
