"""GPU tests of the transformers families lightseq.compile swaps in (BERT and the layers that run
its code, GPT-2, ViT, DistilBERT): a compiled model against a float64 copy of the uncompiled one, its output
at valid positions, a loss and every parameter gradient, in training and eval mode, in fp32, bf16
and under bf16 autocast, with both of transformers' attention implementations."""
import copy
import warnings

import pytest
import torch

import lightseq
from test_gpu import TOL, _precise_fp32, check_close  # noqa: F401 - _precise_fp32 is an autouse fixture

pytestmark = pytest.mark.gpu
transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def bert_like(family):
    def make(impl):
        cfg = getattr(transformers, family + "Config")(vocab_size=128, max_position_embeddings=64,
                                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                                        attn_implementation=impl, **SMALL)
        return getattr(transformers, family + "Model")(cfg), f"{family}Layer"
    return make


def gpt2(impl):
    cfg = transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=impl)
    return transformers.GPT2Model(cfg), "GPT2Block"


def vit(impl):
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                 attn_implementation=impl, **SMALL)
    return transformers.ViTModel(cfg, add_pooling_layer=False), "ViTLayer"


def distilbert(impl):
    cfg = transformers.DistilBertConfig(vocab_size=128, max_position_embeddings=64, dim=64, n_layers=2, n_heads=4,
                                        hidden_dim=128, dropout=0.0, attention_dropout=0.0, attn_implementation=impl)
    return transformers.DistilBertModel(cfg), "TransformerBlock"


FAMILIES = {"Bert": bert_like("Bert"), "Roberta": bert_like("Roberta"), "Electra": bert_like("Electra"),
            "GPT2": gpt2, "ViT": vit, "DistilBert": distilbert}


def inputs(family):
    """The model's keyword inputs and the [B, T] bool of the positions whose output is defined:
    token models get right padding (no query row is wholly masked), ViT images none."""
    if family == "ViT":
        return {"pixel_values": torch.randn(3, 3, 32, 32, device="cuda")}, torch.ones(3, 17, dtype=torch.bool,
                                                                                     device="cuda")
    ids = torch.randint(1, 128, (3, 21), device="cuda")
    attn = torch.ones(3, 21, dtype=torch.long, device="cuda")
    attn[0, 15:] = 0
    attn[2, 5:] = 0
    kw = {"input_ids": ids, "attention_mask": attn}
    if family == "GPT2":
        kw["use_cache"] = False
    return kw, attn.bool()


def grads(m, kw, keep, autocast=None):
    """Output, loss = Σ out · w over valid positions (w: a fixed ramp in [-1, 1]), Σ |out · w| (the
    loss's scale: its terms cancel), and every parameter gradient."""
    for p in m.parameters():
        p.grad = None
    with torch.autocast("cuda", dtype=autocast, enabled=autocast is not None):
        out = m(**kw).last_hidden_state
    w = torch.linspace(-1, 1, out.numel(), device="cuda").reshape(out.shape).double() * keep[..., None]
    terms = out.double() * w
    terms.sum().backward()
    return (out.detach(), terms.sum().detach(), terms.abs().sum().item(),
            {n: p.grad for n, p in m.named_parameters() if p.grad is not None})


def compare(reference, compiled, kw, keep, tol, autocast=None, peer=None):
    """compiled against the float64 reference: output at valid positions, loss, every parameter
    gradient. With `peer` (the uncompiled model in bf16, run without autocast: a compiled layer
    runs wholly in the autocast dtype, residual stream included, where PyTorch's autocast keeps
    fp32 residuals and LayerNorms), each bound is the dtype's or twice PyTorch's own error in
    bf16, whichever is larger."""
    def cast(v, dtype):
        return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    y0, l0, scale0, g0 = grads(reference, {k: cast(v, torch.float64) for k, v in kw.items()}, keep)
    dtype = torch.float32 if autocast else next(compiled.parameters()).dtype
    run_kw = {k: cast(v, dtype) for k, v in kw.items()}
    y1, l1, _, g1 = grads(compiled, run_kw, keep, autocast)
    peer_kw = {k: cast(v, torch.bfloat16) for k, v in kw.items()}
    y2, l2, _, g2 = grads(peer, peer_kw, keep) if peer is not None else (None, None, None, None)

    def bound(got, want):
        return tol if got is None else max(tol, 2 * ((got.double() - want).norm() / want.norm()).item())

    check_close("output (valid positions)", y1[keep], y0[keep], bound(None if y2 is None else y2[keep], y0[keep]))
    loss_tol = tol if l2 is None else max(tol, 2 * abs(l2.item() - l0.item()) / scale0)
    assert abs(l1.item() - l0.item()) <= loss_tol * scale0, f"loss {l1.item()} vs {l0.item()} (scale {scale0:.3g})"
    assert g0.keys() == g1.keys()
    scale = max(g.norm().item() for g in g0.values())
    for name in g0:
        if g0[name].norm().item() < 1e-9 * scale:  # the key bias: softmax ignores it
            assert g1[name].norm().item() <= tol * scale, name
            continue
        # the embeddings sum every position's gradient: twice the bound
        b = bound(None if g2 is None else g2[name], g0[name])
        check_close(f"grad {name}", g1[name], g0[name], 2 * b if "emb" in name or name.startswith("wte") or
                    name.startswith("wpe") else b)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "autocast"])
@pytest.mark.parametrize("training", [True, False])
def test_family_matches_transformers(family, impl, precision, training):
    torch.manual_seed(7)
    model, layer_name = FAMILIES[family](impl)
    model = model.cuda().train(training)
    reference = copy.deepcopy(model).double()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peer = copy.deepcopy(model).to(torch.bfloat16) if precision != "fp32" else None
    compiled = lightseq.compile(copy.deepcopy(model).to(dtype))
    assert lightseq.explain(compiled).count(f"({layer_name}): compiled") == 2, lightseq.explain(compiled)
    kw, keep = inputs(family)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no call falls back
        compare(reference, compiled, kw, keep, TOL[torch.float32 if precision == "fp32" else torch.bfloat16],
                torch.bfloat16 if precision == "autocast" else None, peer)


def test_gpt2_with_a_cache_runs_lightseq_in_training_and_pytorch_in_generation():
    torch.manual_seed(8)
    model, _ = gpt2("sdpa")
    model = model.cuda()
    reference = copy.deepcopy(model).double()
    compiled = lightseq.compile(copy.deepcopy(model))
    kw, keep = inputs("GPT2")
    kw["use_cache"] = True
    with pytest.warns(UserWarning, match="does not fill the returned key/value cache"):
        compare(reference.train(), compiled.train(), kw, keep, TOL[torch.float32])
    compiled.eval()
    with pytest.warns(UserWarning, match="key/value cache .generation.*run PyTorch's implementation"):
        out = compiled(**kw)
    ref = reference.eval()(**kw)
    check_close("eval output with a cache", out.last_hidden_state[keep], ref.last_hidden_state[keep], TOL[torch.float32])
    cache = out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5.2x
    assert cache.get_seq_length() == 21


def test_gpt2_lm_head_model_trains_with_labels():
    torch.manual_seed(9)
    cfg = transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
                                  use_cache=False)
    model = transformers.GPT2LMHeadModel(cfg).cuda()
    reference = copy.deepcopy(model)
    compiled = lightseq.compile(copy.deepcopy(model))
    ids = torch.randint(0, 128, (4, 32), device="cuda")
    for m in (reference, compiled):
        m.eval()
    l0 = reference(input_ids=ids, labels=ids).loss
    l1 = compiled(input_ids=ids, labels=ids).loss
    check_close("loss", l1.reshape(1), l0.reshape(1), TOL[torch.float32])
