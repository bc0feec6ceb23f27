"""Issue 11's per-layer table: one nn.TransformerEncoderLayer, forward + backward from Python, at the
five configurations of benchmarks/specs/*.json (bf16, dropout 0.1, ReLU, post- or pre-LN, half of
each batch with its last eighth padded), in one run on one card:

  lsc bench        the C++ executor alone (`lsc bench SPEC --batch B --seq T`, same card, same run):
                   its GPU time per layer fwd+bwd and its host issue time
  eager            PyTorch's nn.TransformerEncoderLayer (SDPA)
  eager+graphs     torch.cuda.make_graphed_callables of it
  compile          torch.compile(layer)
  lightseq         lightseq.compile(layer)
  lightseq+graphs  torch.cuda.make_graphed_callables of the compiled layer

Before each call the parameters' and the input's .grad are set to None (what optimizer.zero_grad()
does by default), so backward assigns the gradients. Columns:

  wall ms   CUDA events over --iters back-to-back calls, per call (host and GPU overlapped)
  host ms   median time the host takes to issue one call while a sleep kernel holds the GPU
            (5 calls behind each sleep, --rounds sleeps: the launch queue never fills)
  gpu ms    those calls' GPU time, per call
  peak MiB  the call's device allocations above what was allocated before it (graph modes: their
            memory pools are allocated at capture, so not shown)
  vs lsc    wall / lsc bench's GPU time (issue 11's goal: within 5%)

usage: python3 benchmarks/layer_python.py [--iters 50] [--rounds 4] [--lsc build-gpu/lsc]
                                          [--configs enc-512-post ...] [--modes ...]
"""
import argparse
import copy
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "frontends" / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import lightseq  # noqa: E402
from host_timing import wall_host_gpu  # noqa: E402

CONFIGS = {  # name: (batch, seq), the shapes of DESIGN.md's table
    "enc-512-post": (128, 32),
    "enc-1024-post": (128, 64),
    "enc-768-post": (64, 128),
    "enc-1024-pre": (32, 512),
    "enc-2048-pre": (8, 1024),
}
MODES = ["eager", "eager+graphs", "compile", "lightseq", "lightseq+graphs"]


def lsc_bench(lsc: str, name: str, batch: int, seq: int):
    """(GPU ms, host issue ms) per layer fwd+bwd from `lsc bench`, or (None, None)."""
    out = subprocess.run([lsc, "bench", str(ROOT / "benchmarks" / "specs" / f"{name}.json"), "--batch", str(batch),
                          "--seq", str(seq), "--iters", "50"], capture_output=True, text=True)
    ms = re.search(r"([\d.]+) ms per layer fwd\+bwd", out.stdout)
    host = re.search(r"host issue ([\d.]+) ms", out.stdout)
    if not ms:
        print(f"# lsc bench {name}: {out.stdout.strip()} {out.stderr.strip()}")
        return None, None
    return float(ms.group(1)), float(host.group(1)) if host else None


class Padded(nn.Module):
    """layer(x, src_key_padding_mask=pad) with positional tensors (make_graphed_callables)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, pad):
        return self.layer(x, src_key_padding_mask=pad)


def build(mode: str, base: nn.Module, x, pad):
    layer = copy.deepcopy(base)
    if mode.startswith("lightseq"):
        layer = lightseq.compile(layer)
    fn = Padded(layer)
    if mode == "compile":
        fn = torch.compile(fn, dynamic=False)
    if mode.endswith("+graphs"):
        fn = torch.cuda.make_graphed_callables(fn, (x, pad), num_warmup_iters=3)
    return fn, list(layer.parameters())


def measure(fn, params, x, pad, g, iters: int, rounds: int, graphs: bool) -> dict:
    def zero():
        for p in params:
            p.grad = None
        x.grad = None

    def call():
        zero()
        fn(x, pad).backward(g)

    for _ in range(5):
        call()
    torch.cuda.synchronize()
    peak = None
    if not graphs:
        zero()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(x, pad).backward(g)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    wall, host, gpu = wall_host_gpu(call, iters, rounds)
    return {"wall": wall, "host": statistics.median(host), "gpu": gpu, "peak": peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--lsc", default=str(ROOT / "build-gpu" / "lsc"))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, dropout 0.1, .grad = None "
          "before each call")
    print(f"{'config':<14} {'B x T':>9} {'mode':<16} {'wall ms':>8} {'host ms':>8} {'gpu ms':>8} "
          f"{'peak MiB':>9} {'vs lsc':>7}")
    rows = []
    for name in a.configs:
        batch, seq = CONFIGS[name]
        spec = json.loads((ROOT / "benchmarks" / "specs" / f"{name}.json").read_text())["layers"][0]
        lsc_ms, lsc_host = lsc_bench(a.lsc, name, batch, seq) if os.path.exists(a.lsc) else (None, None)
        print(f"{name:<14} {batch:>4}x{seq:<4} {'lsc bench':<16} {lsc_ms or float('nan'):8.3f} "
              f"{lsc_host or float('nan'):8.3f} {lsc_ms or float('nan'):8.3f}")
        torch.manual_seed(0)
        base = nn.TransformerEncoderLayer(spec["hidden"], spec["heads"], spec["ffn"], dropout=0.1, batch_first=True,
                                          norm_first=spec["norm"] == "pre").cuda().to(torch.bfloat16)
        x = torch.randn(batch, seq, spec["hidden"], device="cuda", dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn_like(x)
        pad = torch.zeros(batch, seq, dtype=torch.bool, device="cuda")
        pad[::2, seq - seq // 8:] = True
        for mode in a.modes:
            try:
                fn, params = build(mode, base, x, pad)
                r = measure(fn, params, x, pad, g, a.iters, a.rounds, mode.endswith("+graphs"))
            except Exception as e:  # noqa: BLE001 - a peer that cannot run this configuration is reported
                print(f"{name:<14} {batch:>4}x{seq:<4} {mode:<16} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            ratio = f"{r['wall'] / lsc_ms:7.2f}" if lsc_ms else ""
            peak = f"{r['peak']:9.0f}" if r["peak"] is not None else f"{'':9}"
            print(f"{name:<14} {batch:>4}x{seq:<4} {mode:<16} {r['wall']:8.3f} {r['host']:8.3f} {r['gpu']:8.3f} "
                  f"{peak} {ratio}", flush=True)
            rows.append({"config": name, "mode": mode, **r, "lsc_ms": lsc_ms, "lsc_host": lsc_host})
            del fn, params
            torch.cuda.empty_cache()
    stats = [lay.handle.graph_stats() for lay in lightseq._ops._layers]
    if stats:
        print("# lightseq layer graphs (runtime/call_graphs.h):", {k: sum(s[k] for s in stats) for k in stats[0]})
    print("JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
