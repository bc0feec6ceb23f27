"""Fine-tunes a small BERT classifier (randomly initialised from a BertConfig: no download) on a
synthetic task, with and without lightseq.compile, and prints both step times.

    python3 examples/finetune_bert.py [--layers 4 --hidden 256 --steps 100 --dtype bf16]
"""
import torch

from _finetune import parse_args, right_padded_mask, train_both


def main():
    args = parse_args(__doc__, "finetune_bert")
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                     max_position_embeddings=max(512, args.seq), num_labels=2)
    gen = torch.Generator(device="cuda").manual_seed(1)

    def batch():
        ids = torch.randint(1, 1000, (args.batch, args.seq), device="cuda", generator=gen)
        mask = right_padded_mask(args.batch, args.seq, args.seq // 2, gen)
        labels = (ids[:, 0] > 500).long()  # the first token decides the class
        return ids, mask, labels

    train_both(BertForSequenceClassification(cfg).cuda(), [batch() for _ in range(args.steps)],
               lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss, args.dtype,
               5e-5 if args.hidden >= 512 else 2e-4)


if __name__ == "__main__":
    main()
