"""Fine-tunes a small BERT classifier (randomly initialised from a BertConfig: no download) on a
synthetic task, with and without lightseq.compile, and prints both step times.

    python3 examples/finetune_bert.py [--layers 4 --hidden 256 --steps 100 --dtype bf16]
"""
import argparse
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("finetune_bert: needs a CUDA GPU")
    from transformers import BertConfig, BertForSequenceClassification

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                     max_position_embeddings=max(512, args.seq), num_labels=2)
    base = BertForSequenceClassification(cfg).cuda()
    models = {"pytorch": copy.deepcopy(base), "lightseq": lightseq.compile(copy.deepcopy(base))}
    print(lightseq.explain(models["lightseq"]))
    gen = torch.Generator(device="cuda").manual_seed(1)

    def batch():
        ids = torch.randint(1, 1000, (args.batch, args.seq), device="cuda", generator=gen)
        lengths = torch.randint(args.seq // 2, args.seq + 1, (args.batch,), device="cuda", generator=gen)
        mask = (torch.arange(args.seq, device="cuda")[None, :] < lengths[:, None]).long()
        labels = (ids[:, 0] > 500).long()  # the first token decides the class
        return ids, mask, labels

    data = [batch() for _ in range(args.steps)]
    for name, model in models.items():
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5 if args.hidden >= 512 else 2e-4)
        model.train()
        losses, times = [], []
        for step, (ids, mask, labels) in enumerate(data):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
        steady = sorted(times[10:] or times)
        print(f"{name:8s} {args.dtype}: median step {1e3 * steady[len(steady) // 2]:.2f} ms, "
              f"loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f}")


if __name__ == "__main__":
    main()
