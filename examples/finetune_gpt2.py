"""Fine-tunes a small GPT-2 causal language model (randomly initialised from a GPT2Config: no
download) on a synthetic task, with and without lightseq.compile, and prints both step times.

The task: each sequence is a random prefix repeated (a model that learns to copy predicts the
second half), right-padded to varied lengths, padding ignored by the loss.

    python3 examples/finetune_gpt2.py [--layers 4 --hidden 256 --steps 100 --dtype bf16]
"""
import argparse

import torch

from _finetune import need_gpu, train_both

VOCAB = 1000


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
    need_gpu("finetune_gpt2")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # use_cache=False: training needs no key/value cache (a compiled block does not fill one)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=max(512, args.seq), n_embd=args.hidden, n_layer=args.layers,
                     n_head=args.heads, bos_token_id=0, eos_token_id=0, use_cache=False)
    gen = torch.Generator(device="cuda").manual_seed(1)
    half = args.seq // 2

    def batch():
        prefix = torch.randint(2, VOCAB, (args.batch, half), device="cuda", generator=gen)
        ids = torch.cat([prefix, prefix], dim=1)
        lengths = torch.randint(args.seq // 2 + 1, 2 * half + 1, (args.batch,), device="cuda", generator=gen)
        mask = (torch.arange(2 * half, device="cuda")[None, :] < lengths[:, None]).long()
        return ids.masked_fill(mask == 0, 1), mask, ids.masked_fill(mask == 0, -100)

    train_both(GPT2LMHeadModel(cfg).cuda(), [batch() for _ in range(args.steps)],
               lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss, args.dtype,
               5e-4 if args.hidden < 512 else 1e-4)


if __name__ == "__main__":
    main()
