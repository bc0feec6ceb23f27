"""One optimizer step over Transformer-base's parameters (nn.Transformer 6+6 512/8/2048 + a
32000 × 512 embedding: 60.5M parameters in 186 tensors), lightseq.optim.AdamW against
torch.optim.AdamW (foreach and fused), same card, same run: ms per step (CUDA events over N steps
after warm-up), host time per step() call (median), and the floor (bytes moved / 4.3 TB/s: fp32
parameters read and written, gradients read, two moments read and written; 16-bit parameters add
the fp32 master copy and keep fp32 moments in lightseq, 16-bit ones in torch).

usage: python3 benchmarks/optim_bench.py [--iters 50]
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "frontends", "python"))
import lightseq  # noqa: E402


def model_params(dtype):
    torch.manual_seed(0)
    m = nn.ModuleList([nn.Embedding(32000, 512), nn.Transformer(512, 8, 6, 6, 2048, batch_first=True)])
    return [p for p in m.to(device="cuda", dtype=dtype).parameters()]


def measure(name, make, dtype, iters, masters=False):
    ps = model_params(dtype)
    opt = make(ps)
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(3):
        opt.step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host = []
    start.record()
    for _ in range(iters):
        t0 = time.perf_counter()
        opt.step()
        host.append(time.perf_counter() - t0)
    end.record()
    torch.cuda.synchronize()
    n, es = sum(p.numel() for p in ps), ps[0].element_size()
    moment = 4 if masters or dtype == torch.float32 else es  # torch keeps the moments in the parameters' dtype
    bytes_ = n * (3 * es + 4 * moment + (8 if masters else 0))
    print(f"{name:34s} {str(dtype):15s} {start.elapsed_time(end) / iters:7.3f} ms/step  host "
          f"{1e3 * statistics.median(host):6.3f} ms  floor {bytes_ / 4.3e12 * 1e3:6.3f} ms  ({n / 1e6:.1f}M params, "
          f"{len(ps)} tensors)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    kw = dict(lr=5e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=1e-4)
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    measure("torch.optim.AdamW(foreach)", lambda ps: torch.optim.AdamW(ps, foreach=True, **kw), torch.float32,
            args.iters)
    measure("torch.optim.AdamW(fused)", lambda ps: torch.optim.AdamW(ps, fused=True, **kw), torch.float32,
            args.iters)
    measure("lightseq.optim.AdamW", lambda ps: lightseq.optim.AdamW(ps, **kw), torch.float32, args.iters)
    measure("torch.optim.AdamW(fused), bf16 state", lambda ps: torch.optim.AdamW(ps, fused=True, **kw),
            torch.bfloat16, args.iters)
    measure("lightseq.optim.AdamW, fp32 masters", lambda ps: lightseq.optim.AdamW(ps, **kw), torch.bfloat16,
            args.iters, masters=True)


if __name__ == "__main__":
    main()
