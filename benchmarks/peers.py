"""Peer timings for one Transformer encoder layer, forward + backward, on the same card and in the
same run as `lsc bench`: PyTorch eager with explicit attention (Fairseq style), PyTorch's
nn.TransformerEncoderLayer (scaled_dot_product_attention), and torch.compile of the latter.
Then one decoder layer (nn.TransformerDecoderLayer: causal self-attention, cross-attention over an
encoder output that also gets its gradient), eager and compiled, at the sizes of
`lsc bench examples/transformer-base.json`.

Configurations are DESIGN.md's table (and benchmarks/specs/*.json): bf16, dropout 0.1 everywhere,
ReLU, half of each batch with its last eighth padded. Times are CUDA-event medians over
iterations after warm-up, in ms per layer (forward + backward).

usage: python3 benchmarks/peers.py [--iters 50] [--no-compile]
"""
import argparse
import math
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = [  # name, hidden, heads, ffn, norm_first, batch, seq
    ("enc-512-post", 512, 8, 2048, False, 128, 32),
    ("enc-1024-post", 1024, 16, 4096, False, 128, 64),
    ("enc-768-post", 768, 12, 3072, False, 64, 128),
    ("enc-1024-pre", 1024, 16, 4096, True, 32, 512),
    ("enc-2048-pre", 2048, 16, 8192, True, 8, 1024),
]

DECODER_CONFIGS = [  # name, hidden, heads, ffn, norm_first, batch, seq, src_seq
    ("dec-512-post", 512, 8, 2048, False, 32, 128, 128),
]


class ExplicitEncoderLayer(nn.Module):
    """Fairseq-style layer: attention as explicit matmul + masked softmax + dropout."""

    def __init__(self, h, heads, ffn, norm_first, p):
        super().__init__()
        self.h, self.heads, self.norm_first, self.p = h, heads, norm_first, p
        self.in_proj = nn.Linear(h, 3 * h)
        self.out_proj = nn.Linear(h, h)
        self.linear1 = nn.Linear(h, ffn)
        self.linear2 = nn.Linear(ffn, h)
        self.norm1 = nn.LayerNorm(h)
        self.norm2 = nn.LayerNorm(h)

    def attention(self, x, pad):
        b, t, _ = x.shape
        d = self.h // self.heads
        q, k, v = self.in_proj(x).view(b, t, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
        a = F.dropout(torch.softmax(s, dim=-1), self.p, self.training)
        o = torch.matmul(a, v).transpose(1, 2).reshape(b, t, self.h)
        return F.dropout(self.out_proj(o), self.p, self.training)

    def ffn(self, x):
        return F.dropout(self.linear2(F.dropout(F.relu(self.linear1(x)), self.p, self.training)),
                         self.p, self.training)

    def forward(self, x, pad):
        if self.norm_first:
            x = x + self.attention(self.norm1(x), pad)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attention(x, pad))
        return self.norm2(x + self.ffn(x))


def time_layer(layer, x, pad, grad, iters, warmup=10):
    def step():
        y = layer(x, pad)
        y.backward(grad)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    dtype = torch.bfloat16
    print(f"peers on {torch.cuda.get_device_name()} torch {torch.__version__}, bf16, dropout 0.1, "
          f"ms per layer fwd+bwd (median of {args.iters})")
    print(f"{'config':<14} {'B×T':>9} {'eager explicit':>15} {'eager SDPA':>11} {'torch.compile':>14}")
    for name, h, heads, ffn, norm_first, b, t in CONFIGS:
        torch.manual_seed(0)
        x = torch.randn(b, t, h, device=dev, dtype=dtype, requires_grad=True)
        grad = torch.randn(b, t, h, device=dev, dtype=dtype)
        pad = torch.zeros(b, t, dtype=torch.bool, device=dev)
        pad[::2, t - t // 8:] = True
        explicit = ExplicitEncoderLayer(h, heads, ffn, norm_first, 0.1).to(dev, dtype).train()
        sdpa = nn.TransformerEncoderLayer(h, heads, ffn, dropout=0.1, activation="relu",
                                          batch_first=True, norm_first=norm_first).to(dev, dtype).train()
        t_explicit = time_layer(explicit, x, pad, grad, args.iters)
        t_sdpa = time_layer(lambda x, pad: sdpa(x, src_key_padding_mask=pad), x, pad, grad, args.iters)
        t_compile = float("nan")
        if not args.no_compile:
            compiled = torch.compile(sdpa)
            t_compile = time_layer(lambda x, pad: compiled(x, src_key_padding_mask=pad), x, pad, grad,
                                   args.iters)
        print(f"{name:<14} {f'{b}×{t}':>9} {t_explicit:>15.3f} {t_sdpa:>11.3f} {t_compile:>14.3f}",
              flush=True)

    print(f"{'decoder config':<14} {'B×T (S)':>13} {'eager SDPA':>11} {'torch.compile':>14}")
    for name, h, heads, ffn, norm_first, b, t, s in DECODER_CONFIGS:
        torch.manual_seed(0)
        x = torch.randn(b, t, h, device=dev, dtype=dtype, requires_grad=True)
        memory = torch.randn(b, s, h, device=dev, dtype=dtype, requires_grad=True)
        grad = torch.randn(b, t, h, device=dev, dtype=dtype)
        pad = torch.zeros(b, t, dtype=torch.bool, device=dev)
        pad[::2, t - t // 8:] = True
        mem_pad = torch.zeros(b, s, dtype=torch.bool, device=dev)
        mem_pad[::2, s - s // 8:] = True
        causal = torch.ones(t, t, dtype=torch.bool, device=dev).triu(1)  # True = masked, like the pads
        layer = nn.TransformerDecoderLayer(h, heads, ffn, dropout=0.1, activation="relu", batch_first=True,
                                           norm_first=norm_first).to(dev, dtype).train()

        def run(module):
            return lambda x, pad: module(x, memory, tgt_mask=causal, tgt_key_padding_mask=pad,
                                         memory_key_padding_mask=mem_pad, tgt_is_causal=True)

        t_eager = time_layer(run(layer), x, pad, grad, args.iters)
        t_compile = float("nan")
        if not args.no_compile:
            t_compile = time_layer(run(torch.compile(layer)), x, pad, grad, args.iters)
        print(f"{name:<14} {f'{b}×{t} ({s})':>13} {t_eager:>11.3f} {t_compile:>14.3f}", flush=True)


if __name__ == "__main__":
    main()
