"""Run with torchrun --nproc_per_node 2 [-- --model bert] [-- --backend gloo]: DistributedDataParallel
over compiled layers gives the gradients one process computes on the whole batch. --model encoder:
nn.TransformerEncoder of compiled layers; bert: a transformers BertModel (compiled embeddings and
layers, padding masks). --backend nccl (one GPU per rank) or gloo (ranks may share a GPU: the
check then runs on a one-GPU machine too)."""
import argparse
import copy
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

if os.environ.get("LIGHTSEQ_PYTEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "frontends", "python"))
import lightseq  # noqa: E402


def encoder_model():
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def call(m, x, pad):
        return m(x, src_key_padding_mask=pad)
    return model, call, "float"


def bert_model():
    import transformers
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(cfg, add_pooling_layer=False)

    def call(m, ids, pad):
        return m(input_ids=ids, attention_mask=(~pad).long()).last_hidden_state
    return model, call, "tokens"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("encoder", "bert"), default="encoder")
    ap.add_argument("--backend", choices=("nccl", "gloo"), default="nccl")
    args = ap.parse_args()
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = rank % torch.cuda.device_count()
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    base, call, inputs = (encoder_model if args.model == "encoder" else bert_model)()
    base = base.cuda()
    single = lightseq.compile(copy.deepcopy(base))
    ddp = nn.parallel.DistributedDataParallel(lightseq.compile(copy.deepcopy(base)), device_ids=[device])
    gen = torch.Generator(device="cuda").manual_seed(1)
    if inputs == "float":
        x = torch.randn(4 * world, 10, 64, device="cuda", generator=gen)
    else:
        x = torch.randint(0, 128, (4 * world, 10), device="cuda", generator=gen)
    pad = torch.zeros(4 * world, 10, dtype=torch.bool, device="cuda")
    pad[::3, 7:] = True
    call(single, x, pad).pow(2).mean().backward()
    part = slice(rank * 4, (rank + 1) * 4)
    call(ddp, x[part], pad[part]).pow(2).mean().backward()
    worst = 0.0
    pairs = list(zip(single.named_parameters(), ddp.module.parameters()))
    scale = max(p.grad.norm().item() for (_, p), _ in pairs)
    for (name, p), q in pairs:
        # A gradient that is zero in exact arithmetic (BERT's key bias: softmax ignores it) is rounding
        # noise in both runs, which sum different halves of the batch: compared absolutely, against
        # the largest gradient.
        denom = p.grad.norm().item() if p.grad.norm().item() > 1e-5 * scale else scale
        err = (p.grad - q.grad).norm().item() / max(denom, 1e-30)
        worst = max(worst, err)
        assert err < 1e-4, f"rank {rank}: {name}: relative error {err:.3g}"
    dist.barrier()
    if rank == 0:
        print(f"DDP gradients match ({args.model}, {args.backend}, world {world}, worst relative error "
              f"{worst:.3g})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
