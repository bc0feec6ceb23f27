"""Whole training step of a Transformer (examples/transformer-base.json: 6+6 layers, 512/8/2048,
post-LN, ReLU, vocab 32000, tied output projection, label smoothing 0.1, AdamW, dropout 0.1, bf16),
one mode per process (so each mode's peak memory is its own), on the same card in one run:

  lightseq        lightseq._C.TrainStep, the C++ whole-model step, replaying a CUDA graph per shape
  lightseq-eager  the same step uncaptured (every launch issued by the host)
  eager           PyTorch: nn.Embedding + sinusoidal positions + nn.TransformerEncoder/Decoder
                  (SDPA) + tied projection + F.cross_entropy(label_smoothing) + fused AdamW, the
                  model in bf16 (weights, gradients and AdamW moments all bf16)
  eager-amp       the same with fp32 weights under bf16 autocast (fp32 gradients and moments:
                  the mixed-precision recipe whose state matches lightseq's fp32 master weights)
  compile         torch.compile(model) of the same (default mode)
  compile-ro      torch.compile(model, mode="reduce-overhead")
  layers          lightseq.compile(model): the layers compiled, the rest PyTorch

Per tokens-per-batch (B x 128 source and target tokens): ms per step (CUDA events over N
back-to-back steps after warm-up), the host's issue time per step (wall time of the call that
enqueues it, median), and peak device memory (torch: max_memory_allocated; lightseq's TrainStep:
the high-water marks of the CUDA memory pool it allocates from and of its graphs' memory,
after the warm-up).

With --gpus N (N > 1) every mode runs as N processes (torch.distributed.run, one GPU each), each on
its own batch of the given tokens: lightseq's TrainStep in a process group (its gradients summed
through NCCL as the backward produces them), PyTorch's modes under DistributedDataParallel (NCCL,
its default buckets). Rows are rank 0's: ms per step and tokens/s per GPU; scaling efficiency is a
row's tokens/s per GPU over the --gpus 1 row's.

usage: python3 benchmarks/train_step.py [--modes ...] [--tokens 512 4096 16384 65536] [--iters 20] [--gpus N]
"""
import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODES = ["lightseq", "lightseq-eager", "eager", "eager-amp", "compile", "compile-ro", "layers"]
SEQ = 128


def spec():
    return json.loads((ROOT / "examples" / "transformer-base.json").read_text())


def batch(tokens, V, device, rank=0):
    import torch
    g = torch.Generator().manual_seed(tokens + 1000003 * rank)
    B = max(1, tokens // SEQ)
    mk = lambda: torch.randint(2, V, (B, SEQ), generator=g).to(device)  # noqa: E731
    return mk(), mk(), mk()


def torch_model(s):
    import torch
    from torch import nn
    import torch.nn.functional as F

    e, enc, dec = s["embedding"], s["layers"][0], s["layers"][1]
    H, V, pad = e["hidden"], e["vocab"], e["padding_idx"]
    p = enc["dropout"]["hidden"]

    class MT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(V, H, padding_idx=pad)
            el = nn.TransformerEncoderLayer(H, enc["heads"], enc["ffn"], dropout=p, batch_first=True)
            dl = nn.TransformerDecoderLayer(H, dec["heads"], dec["ffn"], dropout=p, batch_first=True)
            self.encoder = nn.TransformerEncoder(el, enc["count"], enable_nested_tensor=False)
            self.decoder = nn.TransformerDecoder(dl, dec["count"])
            half = H // 2
            freq = torch.exp(torch.arange(half) * -(math.log(10000.0) / (half - 1)))
            ang = torch.arange(e["max_positions"])[:, None] * freq[None, :]
            self.register_buffer("pos", torch.cat([ang.sin(), ang.cos()], 1), persistent=False)
            self.drop = nn.Dropout(e["dropout"])

        def embed(self, t):
            x = self.embed_tokens(t) * math.sqrt(H) + self.pos[: t.shape[1]].to(self.embed_tokens.weight.dtype)
            return self.drop(x)

        def forward(self, src, tgt, targets):
            mem = self.encoder(self.embed(src), src_key_padding_mask=src == pad)
            T = tgt.shape[1]
            causal = nn.Transformer.generate_square_subsequent_mask(T, device=tgt.device, dtype=mem.dtype)
            out = self.decoder(self.embed(tgt), mem, tgt_mask=causal, tgt_is_causal=True,
                               tgt_key_padding_mask=tgt == pad, memory_key_padding_mask=src == pad)
            logits = out @ self.embed_tokens.weight.t()
            return F.cross_entropy(logits.view(-1, V).float(), targets.view(-1), ignore_index=pad,
                                   label_smoothing=s["criterion"]["label_smoothing"])

    return MT()


def run_mode(mode, tokens_list, iters):
    import torch
    sys.path.insert(0, str(ROOT / "frontends" / "python"))
    import lightseq
    import lightseq._C  # noqa: F401  (the extension: TrainStep, memory figures)

    s = spec()
    V = s["embedding"]["vocab"]
    o = s["optimizer"]
    rows = []
    # Under torch.distributed.run (--gpus N): this process is one rank, on GPU LOCAL_RANK.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    group = None
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("nccl", device_id=device)
        group = dist.group.WORLD
    if mode.startswith("lightseq"):
        model = lightseq._C.CompiledModel.load(json.dumps(s), device.index, None)
        comm = lightseq._train._communicator(lightseq._C, group, device) if group is not None else None
        step = lightseq._C.TrainStep(model, seed=1, cuda_graphs=(mode == "lightseq"), comm=comm)
        step.init_parameters(1)
        stream = torch.cuda.Stream()
        sid = stream.cuda_stream
        for tokens in tokens_list:
            src, tgt, y = batch(tokens, V, device, rank)
            call = lambda: step.run(src.data_ptr(), tgt.data_ptr(), y.data_ptr(), src.shape[0],  # noqa: E731
                                    SEQ, SEQ, sid)
            # After the warm-up (an uncaptured run, then the capture): the pool holds the arenas,
            # the graph its replays' temporaries.
            d = device.index
            reset = lambda: (lightseq._C.pool_peak_bytes(d, True), lightseq._C.graph_peak_bytes(d, True))  # noqa: E731
            peak = lambda: lightseq._C.pool_peak_bytes(d, False) + lightseq._C.graph_peak_bytes(d, False)  # noqa: E731
            rows.append(measure(mode, tokens, call, stream, iters, peak=peak, reset=reset))
            st = step.stats(sid)
            rows[-1]["loss"] = st["loss"] / st["tokens"]
        return rows
    torch.manual_seed(0)
    net = torch_model(s).to(device)
    if mode != "eager-amp":
        net = net.to(torch.bfloat16)
    if mode == "layers":
        net = lightseq.compile(net)
    if group is not None:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index])
    opt = torch.optim.AdamW(net.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                            weight_decay=o["weight_decay"], fused=True)
    fwd = net
    if mode == "compile":
        fwd = torch.compile(net)
    elif mode == "compile-ro":
        fwd = torch.compile(net, mode="reduce-overhead")
    stream = torch.cuda.Stream()
    for tokens in tokens_list:
        src, tgt, y = batch(tokens, V, device, rank)

        def call():
            with torch.cuda.stream(stream):
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "eager-amp"):
                    loss = fwd(src, tgt, y)
                loss.backward()
                opt.step()
                call.loss = loss

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        rows.append(measure(mode, tokens, call, stream, iters, peak=torch.cuda.max_memory_allocated,
                            reset=torch.cuda.reset_peak_memory_stats))
        rows[-1]["loss"] = float(call.loss)
    return rows


def measure(mode, tokens, call, stream, iters, peak, reset):
    import torch
    for _ in range(3):  # the first run of a shape is eager, the second captures (lightseq); compiles
        call()
    torch.cuda.synchronize()
    reset()
    issue = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        issue.append((time.perf_counter() - t0) * 1e3)
    end.record(stream)
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    return {"mode": mode, "tokens": tokens, "ms": ms, "issue_ms": statistics.median(issue),
            "tokens_per_s": tokens / ms * 1e3, "peak_gib": peak() / 2**30}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--tokens", nargs="+", type=int, default=[512, 4096, 16384, 65536])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        rows = run_mode(a.one, a.tokens, a.iters)
        if os.environ.get("RANK", "0") == "0":
            for r in rows:
                print("ROW " + json.dumps(dict(r, gpus=int(os.environ.get("WORLD_SIZE", "1")))), flush=True)
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
        return
    import torch
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {SEQ} source and target "
          f"tokens per sequence, bf16, dropout 0.1, {a.gpus} GPU(s): tokens and tok/s per GPU")
    print(f"{'mode':<15} {'tokens':>6} {'ms/step':>8} {'issue ms':>8} {'tok/s':>10} {'peak GiB':>8} {'loss':>7}")
    for mode in a.modes:
        cmd = [sys.executable, __file__, "--one", mode, "--iters", str(a.iters), "--tokens",
               *map(str, a.tokens)]
        if a.gpus > 1:
            cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.gpus}"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        rows = [json.loads(l[4:]) for l in p.stdout.splitlines() if l.startswith("ROW ")]
        for r in rows:
            print(f"{r['mode']:<15} {r['tokens']:>6} {r['ms']:>8.2f} {r['issue_ms']:>8.2f} "
                  f"{r['tokens_per_s']:>10.0f} {r['peak_gib']:>8.2f} {r['loss']:>7.3f}", flush=True)
        if p.returncode != 0:
            print(f"{mode}: failed (exit {p.returncode}):\n{p.stderr[-3000:]}", flush=True)


if __name__ == "__main__":
    main()
