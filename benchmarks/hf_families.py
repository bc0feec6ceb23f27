"""Training-step time of Hugging Face models built from configs (no download), per family and size:
PyTorch eager, lightseq.compile (the layers compiled, the rest PyTorch) and torch.compile, in one
run on one card. The model keeps fp32 weights and trains under bf16 autocast (the Trainer's bf16
recipe) with fused AdamW, dropout as the config's defaults.

  bert   BertForMaskedLM        B x 128 tokens, 15% of them labelled
  gpt2   GPT2LMHeadModel        B x 128 tokens, use_cache=False
  vit    ViTForImageClassification  224 x 224 images, patch 16 (197 tokens), 1000 classes

Sizes: small (4 layers, 256/4/1024) and base (12 layers, 768/12/3072). Per row: ms per step (CUDA
events over back-to-back steps after warm-up), the host's issue time per step (median wall time
of the call) and peak memory; one process per family and size.

usage: python3 benchmarks/hf_families.py [--families bert gpt2 vit] [--sizes small base]
           [--modes eager lightseq compile] [--batch 32] [--iters 10]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SIZES = {"small": dict(layers=4, hidden=256, heads=4, ffn=1024), "base": dict(layers=12, hidden=768, heads=12, ffn=3072)}
FAMILIES = ["bert", "gpt2", "vit"]
MODES = ["eager", "lightseq", "compile"]
SEQ = 128


def build(family, size, batch):
    """(model, inputs) for one family and size, on the GPU."""
    import torch
    import transformers
    z = SIZES[size]
    g = torch.Generator().manual_seed(0)
    if family == "bert":
        cfg = transformers.BertConfig(hidden_size=z["hidden"], num_hidden_layers=z["layers"],
                                      num_attention_heads=z["heads"], intermediate_size=z["ffn"])
        model = transformers.BertForMaskedLM(cfg)
        ids = torch.randint(0, cfg.vocab_size, (batch, SEQ), generator=g)
        labels = torch.where(torch.rand(batch, SEQ, generator=g) < 0.15, ids, -100)
        kw = {"input_ids": ids, "labels": labels}
    elif family == "gpt2":
        cfg = transformers.GPT2Config(n_embd=z["hidden"], n_layer=z["layers"], n_head=z["heads"], n_inner=z["ffn"],
                                      use_cache=False)
        model = transformers.GPT2LMHeadModel(cfg)
        ids = torch.randint(0, cfg.vocab_size, (batch, SEQ), generator=g)
        kw = {"input_ids": ids, "labels": ids}
    else:
        cfg = transformers.ViTConfig(hidden_size=z["hidden"], num_hidden_layers=z["layers"],
                                     num_attention_heads=z["heads"], intermediate_size=z["ffn"], num_labels=1000)
        model = transformers.ViTForImageClassification(cfg)
        kw = {"pixel_values": torch.randn(batch, 3, 224, 224, generator=g),
              "labels": torch.randint(0, 1000, (batch,), generator=g)}
    return model.cuda().train(), {k: v.cuda() for k, v in kw.items()}


def run(family, size, modes, batch, iters):
    import copy

    import torch
    sys.path.insert(0, str(ROOT / "frontends" / "python"))
    import lightseq
    from train_step import measure

    base, kw = build(family, size, batch)
    tokens = batch * (197 if family == "vit" else SEQ)
    rows = []
    for mode in modes:
        model = copy.deepcopy(base)
        if mode == "lightseq":
            lightseq.compile(model)
            assert "not compiled" not in lightseq.explain(model), lightseq.explain(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        fwd = torch.compile(model) if mode == "compile" else model
        stream = torch.cuda.Stream()

        def call():
            with torch.cuda.stream(stream):
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = fwd(**kw).loss
                loss.backward()
                opt.step()
                call.loss = loss

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        r = measure(mode, tokens, call, stream, iters, peak=torch.cuda.max_memory_allocated,
                    reset=torch.cuda.reset_peak_memory_stats)
        r.update(family=family, size=size, loss=float(call.loss))
        rows.append(r)
        del model, opt, fwd
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        for r in run(*a.one, a.modes, a.batch, a.iters):
            print("ROW " + json.dumps(r), flush=True)
        return
    import torch
    import transformers
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"batch {a.batch}, fp32 weights under bf16 autocast, fused AdamW")
    print(f"{'family':<6} {'size':<6} {'mode':<9} {'tokens':>6} {'ms/step':>8} {'issue ms':>8} {'peak GiB':>8} {'loss':>7}")
    for family in a.families:
        for size in a.sizes:
            cmd = [sys.executable, __file__, "--one", family, size, "--modes", *a.modes, "--batch", str(a.batch),
                   "--iters", str(a.iters)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            for line in p.stdout.splitlines():
                if line.startswith("ROW "):
                    r = json.loads(line[4:])
                    print(f"{family:<6} {size:<6} {r['mode']:<9} {r['tokens']:>6} {r['ms']:>8.2f} {r['issue_ms']:>8.2f} "
                          f"{r['peak_gib']:>8.2f} {r['loss']:>7.3f}", flush=True)
            if p.returncode != 0:
                print(f"{family} {size}: failed (exit {p.returncode}):\n{p.stderr[-3000:]}", flush=True)


if __name__ == "__main__":
    main()
