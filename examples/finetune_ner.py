"""Fine-tunes a small token classifier (NER-style tagging; RoBERTa, BERT or DistilBERT, randomly
initialised from its config: no download) on a synthetic tagging task, with and without
lightseq.compile, and prints both step times.

The task: each token's tag is its "entity class" (token id mod the number of tags, for ids in the
upper half of the vocabulary; "O" below), padded batches of varied lengths, padding ignored.

    python3 examples/finetune_ner.py [--model roberta --layers 4 --hidden 256 --steps 100 --dtype bf16]
"""
import torch

from _finetune import parse_args, right_padded_mask, train_both

VOCAB, TAGS = 1000, 9  # tags: O and B/I of four entity types, as CoNLL-2003


def model_for(name, layers, hidden, heads, seq):
    import transformers
    if name == "distilbert":
        cfg = transformers.DistilBertConfig(vocab_size=VOCAB, dim=hidden, n_layers=layers, n_heads=heads,
                                            hidden_dim=4 * hidden, max_position_embeddings=max(512, seq),
                                            num_labels=TAGS)
        return transformers.DistilBertForTokenClassification(cfg)
    Config = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[name]
    Model = {"bert": transformers.BertForTokenClassification, "roberta": transformers.RobertaForTokenClassification}[name]
    cfg = Config(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=4 * hidden, max_position_embeddings=max(512, seq) + 2, num_labels=TAGS,
                 pad_token_id=1)
    return Model(cfg)


def main():
    args = parse_args(__doc__, "finetune_ner", lambda ap: ap.add_argument(
        "--model", choices=["roberta", "bert", "distilbert"], default="roberta"))
    torch.manual_seed(0)
    base = model_for(args.model, args.layers, args.hidden, args.heads, args.seq).cuda()
    gen = torch.Generator(device="cuda").manual_seed(1)

    def batch():
        ids = torch.randint(2, VOCAB, (args.batch, args.seq), device="cuda", generator=gen)
        mask = right_padded_mask(args.batch, args.seq, args.seq // 4, gen)
        tags = torch.where(ids >= VOCAB // 2, ids % (TAGS - 1) + 1, 0)
        return ids.masked_fill(mask == 0, 1), mask, tags.masked_fill(mask == 0, -100)

    train_both(base, [batch() for _ in range(args.steps)],
               lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss, args.dtype,
               5e-5 if args.hidden >= 512 else 2e-4)


if __name__ == "__main__":
    main()
