"""Run with torchrun --nproc_per_node 2: DistributedDataParallel over compiled layers gives the
gradients one GPU computes on the whole batch."""
import copy
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

if os.environ.get("LIGHTSEQ_PYTEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "frontends", "python"))
import lightseq  # noqa: E402


def main():
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    base = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).cuda()
    single = lightseq.compile(copy.deepcopy(base))
    ddp = nn.parallel.DistributedDataParallel(lightseq.compile(copy.deepcopy(base)), device_ids=[rank])
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4 * world, 10, 64, device="cuda", generator=gen)
    pad = torch.zeros(4 * world, 10, dtype=torch.bool, device="cuda")
    pad[::3, 7:] = True
    single(x, src_key_padding_mask=pad).pow(2).mean().backward()
    part = slice(rank * 4, (rank + 1) * 4)
    ddp(x[part], src_key_padding_mask=pad[part]).pow(2).mean().backward()
    worst = 0.0
    for (name, p), q in zip(single.named_parameters(), ddp.module.parameters()):
        err = ((p.grad - q.grad).norm() / p.grad.norm().clamp_min(1e-30)).item()
        worst = max(worst, err)
        assert err < 1e-4, f"rank {rank}: {name}: relative error {err:.3g}"
    dist.barrier()
    if rank == 0:
        print(f"DDP gradients match (world {world}, worst relative error {worst:.3g})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
