"""What the fine-tuning examples share: importing lightseq (installed, or from the source tree),
and training one model per way (PyTorch, lightseq.compile) on the same batches, printing each
one's median step time and its loss curve's ends."""
import copy
import os
import sys
import time

import torch

try:
    import lightseq._C  # noqa: F401  (an installed lightseq)
    import lightseq
except ImportError:  # the source tree, built with scripts/build
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "frontends", "python"))
    import lightseq

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(doc: str, name: str, add_more=None):
    """The examples' command line (model sizes, batch, steps, dtype; `add_more(parser)` adds an
    example's own), parsed; exits with the reason where no GPU is usable."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if add_more:
        add_more(ap)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit(f"{name}: needs a CUDA GPU")
    return args


def right_padded_mask(batch: int, seq: int, min_len: int, gen: torch.Generator) -> torch.Tensor:
    """A [batch, seq] attention mask (1 = token, 0 = padding) of random lengths in [min_len, seq]."""
    lengths = torch.randint(min_len, seq + 1, (batch,), device="cuda", generator=gen)
    return (torch.arange(seq, device="cuda")[None, :] < lengths[:, None]).long()


def train_both(base: torch.nn.Module, data: list, loss_of, dtype_name: str, lr: float) -> None:
    """Trains a copy of `base` as PyTorch runs it and a lightseq-compiled copy on the same batches
    (loss_of(model, batch) -> loss), under autocast to `dtype_name` (fp32: none), with AdamW;
    prints lightseq.explain and, per model, the median step time and the loss's first and last
    values."""
    dtype = DTYPES[dtype_name]
    models = {"pytorch": copy.deepcopy(base), "lightseq": lightseq.compile(copy.deepcopy(base))}
    print(lightseq.explain(models["lightseq"]))
    times_of = {}
    for name, model in models.items():
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        model.train()
        losses, times = [], []
        for b in data:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                loss = loss_of(model, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
        steady = sorted(times[10:] or times)
        times_of[name] = steady[len(steady) // 2]
        tail = losses[-10:]
        print(f"{name:8s} {dtype_name}: median step {1e3 * times_of[name]:.2f} ms, "
              f"loss {losses[0]:.3f} -> {sum(tail) / len(tail):.3f}")
    print(f"speed-up: {times_of['pytorch'] / times_of['lightseq']:.2f}x")
