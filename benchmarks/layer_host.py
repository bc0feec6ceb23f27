"""What one compiled layer's forward + backward costs the host from Python (issue 11, item 1):
a lightseq-compiled nn.TransformerEncoderLayer against the same layer in PyTorch eager, at
512/8/2048 post-LN bf16 with dropout 0.1 and a padding mask, batch 128 × 32 tokens (the issue's
configuration), on the same card in the same run:

  wall ms    CUDA events around N back-to-back fwd+bwd calls, per call (host and GPU overlapped:
             the slower of the two, once the launch queue is full)
  host ms    median time the host takes to issue one call while sleep kernels hold the GPU (so the
             host never waits on a full queue or the GPU): 4 rounds of 5 calls (host_timing.py)
  gpu ms     the GPU's time per call for the calls enqueued behind a sleep (run back to back)
  --profile  cProfile of N calls: where the host time goes, by function (tottime)

lightseq runs twice: issuing every launch ("no graphs", the default) and replaying each call's
launches from a CUDA graph once the call recurs (runtime/call_graphs.h, LIGHTSEQ_LAYER_GRAPHS=1).

Each twice: with the gradients accumulating into existing .grad tensors (an add per parameter, as
in gradient accumulation), and with .grad set to None before each call (what a training loop's
optimizer.zero_grad() does by default: backward then assigns the gradients).

usage: python3 benchmarks/layer_host.py [--iters 200] [--profile] [--config 512,8,2048,128,32]
"""
import argparse
import copy
import cProfile
import os
import pstats
import statistics
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "frontends", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lightseq  # noqa: E402
from host_timing import wall_host_gpu  # noqa: E402


def run(name, layer, x, pad, g, iters, profile, fresh):
    def call():
        if fresh:  # a training loop's optimizer.zero_grad() (set_to_none): backward assigns .grad
            for w in layer.parameters():
                w.grad = None
            x.grad = None
        y = layer(x, src_key_padding_mask=pad)
        y.backward(g)
    wall, host, gpu = wall_host_gpu(call, iters)
    name += " (.grad = None)" if fresh else " (.grad +=)"
    print(f"{name:34s} wall {wall:.3f} ms/call  host {statistics.median(host):.3f} ms/call  gpu {gpu:.3f} "
          f"ms/call  (host median of {len(host)} calls behind sleep kernels)")
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(iters):
            call()
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--config", default="512,8,2048,128,32")
    args = ap.parse_args()
    H, heads, ffn, B, T = (int(v) for v in args.config.split(","))
    torch.manual_seed(0)
    base = nn.TransformerEncoderLayer(H, heads, ffn, dropout=0.1, batch_first=True).cuda().to(torch.bfloat16)
    x = torch.randn(B, T, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(x)
    pad = torch.zeros(B, T, dtype=torch.bool, device="cuda")
    pad[::2, T - T // 8:] = True
    print(torch.cuda.get_device_name(), f"{H}/{heads}/{ffn} {B}x{T} bf16")
    compiled = lightseq.compile(copy.deepcopy(base))
    for fresh in (False, True):
        run("eager", base, x, pad, g, args.iters, False, fresh)
        lightseq._ops.LAYER_GRAPHS = False
        run("lightseq no graphs", compiled, x, pad, g, args.iters, False, fresh)
        lightseq._ops.LAYER_GRAPHS = True
        run("lightseq layer graphs", compiled, x, pad, g, args.iters, args.profile and fresh, fresh)
    stats = [lay.handle.graph_stats() for lay in lightseq._ops._layers]
    print("lightseq layer graphs:", {k: sum(s[k] for s in stats) for k in stats[0]})


if __name__ == "__main__":
    main()
