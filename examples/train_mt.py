"""Train a Transformer MT model as people write it — nn.Embedding + sinusoidal positions +
nn.Transformer + tied output projection + label-smoothed cross-entropy + AdamW — once with PyTorch
and once through lightseq.TrainStep (the whole step in C++, one CUDA graph per batch shape), from
the same initial weights on the same batches (a synthetic copy task), and print both step times and
loss curves. lightseq changes a few lines: the training loop's body becomes `loss = step(...)`.

    python3 examples/train_mt.py                          # Transformer-base, 4096 tokens per batch
    python3 examples/train_mt.py --tokens 512 --steps 200
    python3 examples/train_mt.py --modes lightseq eager compile

PyTorch runs with fp32 weights under bf16 autocast (fp32 AdamW state: the recipe whose state
matches lightseq's fp32 master weights); lightseq trains the same fp32 module in bf16.
"""
import argparse
import copy
import math
import sys
import time

import torch
from torch import nn

from _finetune import lightseq  # an installed lightseq, or the source tree's

PAD, BOS = 1, 2


class MT(nn.Module):
    def __init__(self, vocab, hidden, heads, ffn, layers, dropout, max_positions=1024):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, hidden, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, 0.0, hidden ** -0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.transformer = nn.Transformer(hidden, heads, layers, layers, ffn, dropout=dropout, batch_first=True)
        self.loss = nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=PAD)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("positions", lightseq.nn.sinusoidal_table(max_positions, hidden), persistent=False)

    def embed_tokens(self, tokens):
        x = self.embed(tokens) * math.sqrt(self.hidden) + self.positions[: tokens.shape[1]]
        return self.drop(x)

    def forward(self, src, tgt, targets):
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        out = self.transformer(self.embed_tokens(src), self.embed_tokens(tgt), tgt_mask=causal, tgt_is_causal=True,
                               src_key_padding_mask=src == PAD, tgt_key_padding_mask=tgt == PAD,
                               memory_key_padding_mask=src == PAD)
        logits = out @ self.embed.weight.t()
        return self.loss(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def copy_batches(n, batch, seq, vocab, seed):
    """(src, tgt_in, tgt_out): copy src; lengths in [seq/2, seq], padded with PAD."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    out = []
    for _ in range(n):
        src = torch.randint(BOS + 1, vocab, (batch, seq), device="cuda", generator=g)
        lengths = torch.randint(seq // 2, seq + 1, (batch,), device="cuda", generator=g)
        pad = torch.arange(seq, device="cuda")[None, :] >= lengths[:, None]
        src = src.masked_fill(pad, PAD)
        tgt_in = torch.cat([torch.full((batch, 1), BOS, device="cuda"), src[:, :-1]], dim=1).masked_fill(pad, PAD)
        out.append((src, tgt_in, src.clone()))
    return out


def schedule(warmup):
    return lambda i: min((i + 1) / warmup, math.sqrt(warmup / (i + 1)))  # inverse square root


def run(mode, base, data, args):
    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=1e-4,
                            fused=mode != "lightseq")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(args.warmup))
    if mode == "lightseq":
        # The lines that change: the step is built from the model's parts...
        step = lightseq.TrainStep(embedding=model.embed, transformer=model.transformer, loss=model.loss,
                                  optimizer=opt, dtype=torch.bfloat16, pad_to_multiple=8)

        def train(batch):  # ...and runs forward, backward and the update in one call
            return step(*batch)
    else:
        # dynamic=False: every batch has the same shape; a recompilation for dynamic shapes (which
        # the variable padding can otherwise trigger) would land in the timed steps
        fwd = torch.compile(model, dynamic=False) if mode == "compile" else model

        def train(batch):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(*batch)
            loss.backward()
            opt.step()
            return loss.detach()
    model.train()
    losses, host = [], []
    warm = min(10, len(data) // 2)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i, b in enumerate(data):
        if i == warm:
            torch.cuda.synchronize()
            start.record()
        t0 = time.perf_counter()
        losses.append(train(b))
        sched.step()
        host.append(time.perf_counter() - t0)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / (len(data) - warm)
    curve = [x.item() for x in losses]
    issue = sorted(host[warm:])[len(host[warm:]) // 2] * 1e3
    return ms, issue, curve


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="target tokens per batch (batch x seq)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--modes", nargs="+", choices=("eager", "compile", "lightseq"), default=["eager", "lightseq"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_mt: needs a CUDA GPU")
    torch.manual_seed(0)
    base = MT(args.vocab, args.hidden, args.heads, args.ffn, args.layers, args.dropout).cuda()
    data = copy_batches(args.steps, max(1, args.tokens // args.seq), args.seq, args.vocab, seed=1)
    print(f"Transformer {args.layers}+{args.layers} {args.hidden}/{args.heads}/{args.ffn}, vocab {args.vocab}, "
          f"{args.tokens} tokens per batch ({args.tokens // args.seq} x {args.seq}), {args.steps} steps, bf16")
    results = {}
    for mode in args.modes:
        ms, issue, curve = run(mode, base, data, args)
        results[mode] = ms
        marks = sorted({0, len(curve) // 4, len(curve) // 2, 3 * len(curve) // 4, len(curve) - 1})
        print(f"{mode:9s} {ms:8.2f} ms/step ({args.tokens / ms * 1e3 / 1e3:.0f}k tokens/s), host issue "
              f"{issue:.2f} ms; loss " + " ".join(f"[{i}] {curve[i]:.3f}" for i in marks))
    if "lightseq" in results:
        for mode, ms in results.items():
            if mode != "lightseq":
                print(f"lightseq vs {mode}: {ms / results['lightseq']:.2f}x")


if __name__ == "__main__":
    main()
