"""First-call latency (issue 11, item 6): a BERT-base masked-LM model (transformers, built from its
config: no download) trains one step (bf16 autocast, fused AdamW, B x 128 tokens) in a fresh
process, three ways, one process each:

  eager           PyTorch alone
  lightseq-cold   lightseq.compile(model) with an empty kernel cache (a new --cache-dir)
  lightseq-warm   the same, a second process on the cache the cold one filled

Per process: seconds to import (torch, transformers, lightseq), to build the model on the GPU, for
lightseq.compile(), and for the first step (forward, backward, optimizer step, synchronized), and
the second step for comparison. The cost lightseq adds to a first step is its first step minus
eager's (goal: <= 2 s cold, <= 50 ms warm).

usage: python3 benchmarks/first_call.py [--batch 32] [--cache-dir DIR]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def one(mode: str, batch: int, cache_dir: str) -> dict:
    t0 = time.perf_counter()
    import torch
    import transformers
    sys.path.insert(0, str(ROOT / "frontends" / "python"))
    if mode != "eager":
        import lightseq
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = transformers.BertConfig()  # bert-base: 12 layers, 768/12/3072
    model = transformers.BertForMaskedLM(cfg).cuda()
    torch.cuda.synchronize()
    t_build = time.perf_counter() - t0
    t_compile = 0.0
    if mode != "eager":
        t0 = time.perf_counter()
        model = lightseq.compile(model, cache_dir=cache_dir)
        t_compile = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, cfg.vocab_size, (batch, 128), generator=g).cuda()
    labels = torch.where(torch.rand(batch, 128, generator=g).cuda() < 0.15, ids, torch.full_like(ids, -100))

    def step():
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    first = step()
    second = step()
    return {"mode": mode, "import_s": t_import, "build_s": t_build, "compile_s": t_compile, "first_step_s": first,
            "second_step_s": second}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cache-dir", help="the kernel cache the cold run fills (default: a new temporary directory)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("ROW " + json.dumps(one(a.one, a.batch, a.cache_dir)), flush=True)
        return
    cache = a.cache_dir or tempfile.mkdtemp(prefix="lightseq-first-call-")
    if os.listdir(cache):
        sys.exit(f"first_call.py: {cache} is not empty; the cold run needs an empty cache")
    rows = []
    for mode in ("eager", "lightseq-cold", "lightseq-warm"):
        p = subprocess.run([sys.executable, __file__, "--one", mode, "--batch", str(a.batch), "--cache-dir", cache],
                           capture_output=True, text=True)
        got = [json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("ROW ")]
        if not got:
            print(f"# {mode} failed (rc {p.returncode}): {p.stderr.strip()[-1500:]}")
            continue
        rows.append(got[0])
    print(f"# BERT-base masked LM, batch {a.batch} x 128, bf16 autocast, fused AdamW; cache {cache}")
    print(f"{'mode':<15} {'import s':>9} {'build s':>8} {'compile s':>10} {'1st step s':>11} {'2nd step s':>11} "
          f"{'+ vs eager 1st':>15}")
    eager = next((r["first_step_s"] for r in rows if r["mode"] == "eager"), None)
    for r in rows:
        extra = r["first_step_s"] + r["compile_s"] - eager if eager is not None else float("nan")
        print(f"{r['mode']:<15} {r['import_s']:9.2f} {r['build_s']:8.2f} {r['compile_s']:10.3f} "
              f"{r['first_step_s']:11.3f} {r['second_step_s']:11.3f} {extra:15.3f}")


if __name__ == "__main__":
    main()
