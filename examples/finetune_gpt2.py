"""Fine-tunes a small GPT-2 causal language model (randomly initialised from a GPT2Config: no
download) on a synthetic task, with and without lightseq.compile, and prints both step times.

The task: each sequence is a random prefix repeated (a model that learns to copy predicts the
second half), right-padded to varied lengths, padding ignored by the loss.

    python3 examples/finetune_gpt2.py [--layers 4 --hidden 256 --steps 100 --dtype bf16]
"""
import torch

from _finetune import parse_args, right_padded_mask, train_both

VOCAB = 1000


def main():
    args = parse_args(__doc__, "finetune_gpt2")
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
        mask = right_padded_mask(args.batch, 2 * half, half + 1, gen)
        return ids.masked_fill(mask == 0, 1), mask, ids.masked_fill(mask == 0, -100)

    train_both(GPT2LMHeadModel(cfg).cuda(), [batch() for _ in range(args.steps)],
               lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss, args.dtype,
               5e-4 if args.hidden < 512 else 1e-4)


if __name__ == "__main__":
    main()
