"""torch's scaled_dot_product_attention on the shapes of attention_bench (batch·T = 16384 tokens,
hidden 2048, heads = 2048 / d), per backend (FlashAttention-2 and cuDNN), forward and
forward + backward, with and without dropout: milliseconds and TFLOP/s counted as attention_bench
counts them (forward 4·B·H·T²·d, halved when causal; backward 2.5× the forward). A backend that
refuses a configuration prints "n/a" and why.

    python3 benchmarks/attention_peers.py [--dtype bf16|fp16] [--dims 64 128] [--seqs 512 ...]
                                          [--causal] [--iters N]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def time_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    print(f"attention_peers on {torch.cuda.get_device_name()}: torch {torch.__version__}, "
          f"{args.dtype}, hidden 2048, batch·T = 16384{', causal' if args.causal else ''}, "
          f"{args.iters} iterations")
    print(f"{'backend':>8} {'d':>4} {'T':>6} {'batch':>5} {'heads':>6} {'drop':>5} {'fwd ms':>10} "
          f"{'TFLOP/s':>8} {'fwd+bwd ms':>12} {'TFLOP/s':>8}")
    for d in args.dims:
        for t in args.seqs:
            batch, heads = max(1, 16384 // t), 2048 // d
            q, k, v = (torch.randn(batch, heads, t, d, device="cuda", dtype=dtype, requires_grad=True)
                       for _ in range(3))
            grad = torch.randn(batch, heads, t, d, device="cuda", dtype=dtype)
            flops = 4.0 * batch * heads * t * t * d * (0.5 if args.causal else 1.0)
            for name, backend in BACKENDS.items():
                for p in (0.0, 0.1):
                    def fwd():
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=args.causal)

                    def fwd_bwd():
                        torch.autograd.grad(fwd(), (q, k, v), grad)

                    head = f"{name:>8} {d:>4} {t:>6} {batch:>5} {heads:>6} {p:>5}"
                    try:
                        with torch.no_grad():
                            f_ms = time_ms(fwd, args.iters)
                        a_ms = time_ms(fwd_bwd, args.iters)
                    except RuntimeError as why:
                        print(f"{head} n/a: {str(why).splitlines()[0][:100]}")
                        continue
                    print(f"{head} {f_ms:>10.3f} {flops / f_ms * 1e-9:>8.1f} {a_ms:>12.3f} "
                          f"{3.5 * flops / a_ms * 1e-9:>8.1f}", flush=True)
            del q, k, v, grad
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
