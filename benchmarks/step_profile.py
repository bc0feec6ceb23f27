"""Where the GPU time of the whole-model step goes (issue 10): one `lightseq._C.TrainStep` of
examples/transformer-base.json (or --spec), run uncaptured and then as its replayed CUDA graph under
torch.profiler (CUPTI sees every kernel, ours and cuBLASLt's), at each --tokens (B x 128 source and
target tokens). Prints, per size:

  wall ms       CUDA events over --iters back-to-back replays of the graph
  busy ms       the sum of the kernels' durations per step (what the GPU computes)
  gap ms        wall - busy: the time between kernels (launch latency, dependencies)
  kernels       kernels per step; then the --top kernels by total time, grouped by name, with their
                count per step, mean duration, and share of the busy time

usage: python3 benchmarks/step_profile.py [--tokens 512 4096] [--iters 10] [--top 25] [--spec FILE]
                                          [--attention unfused|fused]
"""
import argparse
import collections
import json
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "frontends" / "python"))


def short(name: str) -> str:
    """A kernel's name without its template arguments' noise: our generated kernels keep their
    family and the first template argument, cuBLAS kernels their family."""
    name = re.sub(r"\(.*$", "", name)
    if name.startswith(("sm90_", "sm80_", "cutlass", "nvjet", "void cutlass")):
        return "gemm: " + re.sub(r"<.*", "", name)[:70]
    name = re.sub(r"^void ", "", name)
    m = re.match(r"([\w:]+)(<[^<>,]*)?", name)
    return (m.group(1) + (m.group(2) + ">" if m.group(2) else "")) if m else name[:80]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", nargs="+", type=int, default=[512, 4096])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--spec", default=str(ROOT / "examples" / "transformer-base.json"))
    ap.add_argument("--attention", choices=["unfused", "fused"], help="every stack's attention (default: the spec's)")
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    import lightseq._C as C
    from train_step import SEQ, batch

    s = json.loads(pathlib.Path(a.spec).read_text())
    V = s["embedding"]["vocab"]
    for stack in s["layers"] if a.attention else []:
        stack["attention"] = a.attention
    model = C.CompiledModel.load(json.dumps(s), 0, None)
    print(f"# {torch.cuda.get_device_name(0)}, {os.path.basename(a.spec)}, attention "
          f"{a.attention or 'as the spec says'}, {SEQ} source and target tokens per sequence")
    step = C.TrainStep(model, seed=1, cuda_graphs=True)
    step.init_parameters(1)
    stream = torch.cuda.Stream()
    for tokens in a.tokens:
        src, tgt, y = batch(tokens, V, "cuda")
        call = lambda: step.run(src.data_ptr(), tgt.data_ptr(), y.data_ptr(), src.shape[0], SEQ, SEQ,  # noqa: E731
                                stream.cuda_stream)
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(a.iters):
            call()
        end.record(stream)
        torch.cuda.synchronize()
        wall = start.elapsed_time(end) / a.iters
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(a.iters):
                call()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
        other = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                 and e not in kernels]
        busy = sum(e.device_time for e in kernels) / 1e3 / a.iters
        groups = collections.defaultdict(lambda: [0, 0.0])
        for e in kernels:
            g = groups[short(e.name)]
            g[0] += 1
            g[1] += e.device_time / 1e3
        gemms = sum(v[1] for k, v in groups.items() if k.startswith("gemm")) / a.iters
        print(f"\n## {tokens} tokens: wall {wall:.3f} ms/step (graph replay), busy {busy:.3f} ms, "
              f"gap {wall - busy:.3f} ms, {len(kernels) / a.iters:.0f} kernels/step "
              f"(+{len(other) / a.iters:.0f} memcpy/memset), GEMMs {gemms:.3f} ms")
        print(f"{'kernel':<72} {'n/step':>6} {'mean us':>8} {'ms/step':>8} {'share':>6}")
        for name, (n, ms) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:a.top]:
            print(f"{name[:72]:<72} {n / a.iters:6.0f} {ms / n * 1e3:8.2f} {ms / a.iters:8.3f} "
                  f"{ms / a.iters / busy:6.1%}")


if __name__ == "__main__":
    main()
