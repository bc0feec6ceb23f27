"""PyTorch's own run of the training that `lsc train --synthetic copy` does: the same model
(benchmarks/train_step.py's nn.Transformer version of examples/transformer-base.json), the same
initialization as TrainStep::init_parameters (embedding N(0, H^-1/2) with a zero padding row,
Xavier-uniform matrices, zero biases, unit LayerNorm weights), AdamW from the spec, the
inverse-sqrt schedule of docs/train.md, bf16 autocast over fp32 weights (lightseq keeps fp32 master
weights), and copy examples drawn like docs/train.md describes (lengths uniform in [1, 32], ids
uniform over the 100 smallest ids above BOS that are neither padding nor ignore_index).

It separates "the schedule does not train this model in N steps" from "lightseq's step has a
defect": run both with one schedule and compare the loss curves.

usage: python3 benchmarks/copy_task_torch.py [--steps 400] [--lr 1e-3] [--warmup 100]
                                              [--tokens-per-batch 4096] [--norm post|pre]
"""
import argparse
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_step  # noqa: E402  (the model and the spec)


def main():
    import torch
    from torch import nn

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    ap.add_argument("--norm", choices=["post", "pre"], default="post")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()

    s = train_step.spec()
    for layer in s["layers"]:
        layer["norm"] = a.norm
    e = s["embedding"]
    H, V, pad = e["hidden"], e["vocab"], e["padding_idx"]
    ignore = s["criterion"]["ignore_index"]
    bos = 0
    while bos in (pad, ignore):
        bos += 1
    ids = [i for i in range(bos + 1, V) if i not in (pad, ignore)][:100]
    torch.manual_seed(a.seed)
    net = train_step.torch_model(s)
    if a.norm == "pre":
        for m in net.modules():
            if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
                m.norm_first = True
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name == "embed_tokens.weight":
                p.normal_(0, H ** -0.5)
                p[pad].zero_()
            elif name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                nn.init.xavier_uniform_(p)
    net = net.to(a.device)
    o = s["optimizer"]
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, betas=tuple(o["betas"]), eps=o["eps"],
                            weight_decay=o["weight_decay"], fused=a.device == "cuda")
    g = torch.Generator().manual_seed(a.seed)
    max_len = 32
    rows = a.tokens_per_batch // max_len

    def batch():
        n = torch.randint(1, max_len + 1, (rows,), generator=g)
        x = torch.tensor(ids)[torch.randint(0, len(ids), (rows, max_len), generator=g)]
        keep = torch.arange(max_len)[None, :] < n[:, None]
        src = torch.where(keep, x, torch.full_like(x, pad))
        tgt = torch.cat([torch.full((rows, 1), bos), src[:, :-1]], 1)
        tgt = torch.where(keep, tgt, torch.full_like(tgt, pad))
        y = torch.where(keep, x, torch.full_like(x, ignore))
        return src.to(a.device), tgt.to(a.device), y.to(a.device)

    def lr_at(step):  # docs/train.md: the first update has peak / warmup
        if a.warmup and step < a.warmup:
            return a.lr * step / a.warmup
        return a.lr * math.sqrt(a.warmup / step) if a.warmup else a.lr

    print(f"# PyTorch copy task: {a.norm}-LN transformer-base, lr {a.lr} warmup {a.warmup}, "
          f"{rows}x{max_len} tokens per batch, bf16 autocast", flush=True)
    t0 = time.time()
    run_loss = 0.0
    for step in range(1, a.steps + 1):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        src, tgt, y = batch()
        with torch.autocast(a.device, dtype=torch.bfloat16):
            loss = net(src, tgt, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss += float(loss)
        if step % a.log_every == 0:
            net.eval()
            with torch.no_grad(), torch.autocast(a.device, dtype=torch.bfloat16):
                vs, vt, vy = batch()
                nll = float(net_nll(net, vs, vt, vy, pad, ignore))
            net.train()
            print(f"step {step:5d} | loss {run_loss / a.log_every:.4f} | valid nll {nll:.4f} | "
                  f"lr {lr_at(step):.2e} | {time.time() - t0:.1f}s", flush=True)
            run_loss = 0.0


def net_nll(net, src, tgt, y, pad, ignore):
    import torch
    from torch import nn
    import torch.nn.functional as F
    mem = net.encoder(net.embed(src), src_key_padding_mask=src == pad)
    causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device,
                                                            dtype=mem.dtype)
    out = net.decoder(net.embed(tgt), mem, tgt_mask=causal, tgt_is_causal=True,
                      tgt_key_padding_mask=tgt == pad, memory_key_padding_mask=src == pad)
    logits = (out @ net.embed_tokens.weight.t().to(out.dtype)).float()
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1), ignore_index=ignore)


if __name__ == "__main__":
    main()
