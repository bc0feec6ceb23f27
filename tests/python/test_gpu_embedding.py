"""lightseq.nn.Embedding on the GPU against its PyTorch function in float64 (the CPU tests tie that
function to BERT's, RoBERTa's, GPT-2's and fairseq's embeddings): output and every table's
gradient, fp32/fp16/bf16 and autocast; dropout's keep rate, scaling and gradient; bad tokens
reported without a synchronizing call."""
import copy

import pytest
import torch

import lightseq

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRESETS = {
    "bert": lambda: lightseq.nn.Embedding.bert(1000, 256, max_positions=64),
    "roberta": lambda: lightseq.nn.Embedding.roberta(1000, 256, max_positions=70),
    "gpt2": lambda: lightseq.nn.Embedding.gpt2(1001, 256, max_positions=64),
    "fairseq": lambda: lightseq.nn.Embedding.fairseq(1000, 256, padding_idx=1, max_positions=70),
    "fairseq_learned": lambda: lightseq.nn.Embedding.fairseq(1000, 256, padding_idx=1, max_positions=70,
                                                             learned=True),
}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all(), "non-finite values"
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def tokens_for(emb, batch=4, seq=48, seed=0):
    c = emb.config
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, c.vocab, (batch, seq), generator=g)
    tok[:, 0] = 7  # a repeated token: the deterministic scatter sums it in row order
    if c.padding_idx is not None:
        tok[tok == c.padding_idx] = c.padding_idx + 1
        tok[0, -5:] = c.padding_idx
        tok[1, :3] = c.padding_idx
    return tok.cuda()


def reference(emb, tok, types, grad):
    """emb's PyTorch function in float64 on the same tables: output and parameter gradients."""
    ref = copy.deepcopy(emb).double().eval()
    y = ref.torch_forward(tok, types)
    y.backward(grad.double())
    return y, {n: p.grad for n, p in ref.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_matches_pytorch_in_float64(preset, dtype):
    dtype = DTYPES[dtype]
    torch.manual_seed(11)
    emb = PRESETS[preset]().cuda().eval()
    with torch.no_grad():
        for p in emb.parameters():
            p.normal_()
    emb = emb.to(dtype)
    tok = tokens_for(emb)
    types = torch.randint(0, emb.config.token_types, tok.shape, device="cuda") if emb.config.token_types > 1 else None
    y = emb(tok, types)
    assert y.dtype == dtype and y.shape == (*tok.shape, 256)
    grad = torch.randn_like(y)
    y.backward(grad)
    want, want_grads = reference(emb, tok, types, grad)
    tol = TOL[dtype] * (4 if emb.config.layernorm else 1)
    assert rel_err(y, want) <= tol, f"output: {rel_err(y, want):.3g}"
    for name, p in emb.named_parameters():
        e = rel_err(p.grad, want_grads[name])
        assert e <= tol * 4, f"{name}.grad: relative error {e:.3g}"
    pad = emb.config.padding_idx
    if pad is not None:
        assert emb.embed_tokens.weight.grad[pad].abs().max() == 0, "the padding token's row got a gradient"
    emb.check_tokens()  # no bad tokens


def test_autocast_runs_in_the_autocast_dtype():
    torch.manual_seed(12)
    emb = PRESETS["bert"]().cuda().eval()
    tok = tokens_for(emb)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = emb(tok)
    assert y.dtype == torch.bfloat16
    want = emb.torch_forward(tok)
    assert rel_err(y, want) <= 4 * TOL[torch.bfloat16]


@pytest.mark.parametrize("preset", ["gpt2", "bert"])
def test_dropout_keep_rate_scaling_and_gradient(preset):
    """Training mode: about 1 - p of the elements kept, the kept ones scaled by 1/(1 - p), the
    gradient through the same mask; the same torch seed gives the same mask."""
    torch.manual_seed(13)
    emb = PRESETS[preset]().cuda().train()
    emb.dropout.p = 0.25
    tok = tokens_for(emb, batch=8, seq=64)
    torch.manual_seed(5)
    y = emb(tok)
    torch.manual_seed(5)
    assert torch.equal(emb(tok), y), "the same seed must give the same mask"
    base = emb.eval().torch_forward(tok).detach()
    emb.train()
    keep = (y != 0).double()
    rate = keep.mean().item()
    assert abs(rate - 0.75) < 0.01, f"keep rate {rate:.4f}, expected 0.75"
    torch.testing.assert_close(y.double(), base.double() * keep / 0.75, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    got = {n: p.grad.clone() for n, p in emb.named_parameters()}
    ref = copy.deepcopy(emb).double()
    ref.zero_grad()
    (ref.eval().torch_forward(tok) * keep / 0.75).backward(grad.double())
    for name, p in ref.named_parameters():
        assert rel_err(got[name], p.grad) <= 1e-5, name


def test_bad_tokens_are_reported_without_a_sync():
    emb = PRESETS["gpt2"]().cuda()
    tok = tokens_for(emb)
    tok[2, 5] = 5000  # outside the vocabulary
    y = emb(tok)  # no error yet: the flag is copied to the host asynchronously
    assert y[2, 5].abs().max() == 0, "a bad token gives a zero row"
    with pytest.raises(lightseq.ArgumentError, match=r"outside \[0, 1001\)"):
        emb.check_tokens()
    tok[2, 5] = 3
    emb(tok)
    emb.check_tokens()  # reported once; the next good call is fine
    long = torch.zeros(1, 65, dtype=torch.long, device="cuda")
    emb(long)
    with pytest.raises(lightseq.ArgumentError, match="max_positions 64"):
        emb.check_tokens()


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_mib", [256, 1])
def test_linear_cross_entropy_matches_pytorch_in_float64(dtype, reduction, chunk_mib):
    """lightseq.nn.LinearCrossEntropyLoss against cross_entropy(hidden · Wᵀ) in float64: the loss and
    the gradients of hidden and W, with label smoothing, ignored targets and an upstream gradient
    other than 1; chunk_mib 1 runs the logits in many chunks of rows (vocab 32000: 16 rows each in
    bf16)."""
    dtype = DTYPES[dtype]
    torch.manual_seed(21)
    h = torch.randn(4, 50, 256, device="cuda").to(dtype).requires_grad_(True)
    w = (torch.randn(32000, 256, device="cuda") * 0.05).to(dtype).requires_grad_(True)
    t = torch.randint(0, 32000, (4, 50), device="cuda")
    t[0, -7:] = 1
    loss_fn = lightseq.nn.LinearCrossEntropyLoss(ignore_index=1, label_smoothing=0.1, reduction=reduction,
                                                 logits_chunk_mib=chunk_mib)
    loss = loss_fn(h, w, t)
    (loss * 3).backward()
    h64, w64 = h.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
    want = torch.nn.functional.cross_entropy((h64 @ w64.t()).reshape(-1, 32000), t.reshape(-1), ignore_index=1,
                                             label_smoothing=0.1, reduction=reduction)
    (want * 3).backward()
    tol = TOL[dtype] * 4
    assert abs(loss.item() - want.item()) <= tol * abs(want.item()), (loss.item(), want.item())
    assert rel_err(h.grad, h64.grad) <= tol, rel_err(h.grad, h64.grad)
    assert rel_err(w.grad, w64.grad) <= tol, rel_err(w.grad, w64.grad)
    loss_fn.check_targets()


def test_linear_cross_entropy_bad_targets_are_reported():
    loss_fn = lightseq.nn.LinearCrossEntropyLoss()
    h = torch.randn(6, 64, device="cuda")
    w = torch.randn(100, 64, device="cuda")
    t = torch.tensor([1, 2, 3, 100, -100, 5], device="cuda")
    loss = loss_fn(h, w, t)
    want = torch.nn.functional.cross_entropy(h @ w.t(), torch.tensor([1, 2, 3, -100, -100, 5], device="cuda"))
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-4)  # the bad target counted as ignored
    with pytest.raises(lightseq.ArgumentError, match="outside"):
        loss_fn.check_targets()


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("vocab, rows", [(32000, 200), (50257, 96), (256000, 40)])
@pytest.mark.parametrize("smoothing, reduction", [(0.0, "mean"), (0.1, "mean"), (0.1, "sum")])
def test_cross_entropy_matches_pytorch_in_float64(dtype, vocab, rows, smoothing, reduction):
    """lightseq.nn.CrossEntropyLoss on logits against F.cross_entropy in float64: the loss and the
    logits' gradient, ignored targets included, an upstream gradient other than 1."""
    dtype = DTYPES[dtype]
    torch.manual_seed(vocab + rows)
    x = (torch.randn(rows, vocab, device="cuda") * 3).to(dtype).requires_grad_(True)
    t = torch.randint(0, vocab, (rows,), device="cuda")
    t[::7] = -100
    loss_fn = lightseq.nn.CrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)
    assert loss_fn.runs_lightseq(x, t) == ""
    loss = loss_fn(x, t)
    (loss * 3).backward()
    x64 = x.detach().double().requires_grad_(True)
    want = torch.nn.functional.cross_entropy(x64, t, label_smoothing=smoothing, reduction=reduction)
    (want * 3).backward()
    tol = TOL[dtype] * 4
    assert loss.dtype == torch.float32
    assert abs(loss.item() - want.item()) <= tol * abs(want.item()), (loss.item(), want.item())
    assert rel_err(x.grad, x64.grad) <= tol, rel_err(x.grad, x64.grad)
    assert x.grad[::7].abs().max() == 0  # ignored rows get no gradient
    loss_fn.check_targets()


def test_cross_entropy_runs_torch_where_lightseq_does_not_and_is_swapped_by_compile():
    loss_fn = lightseq.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(4, 10, 3, device="cuda")  # [N, C, d]: torch's
    t = torch.randint(0, 10, (4, 3), device="cuda")
    assert "lightseq takes [N, C]" in loss_fn.runs_lightseq(x, t)
    torch.testing.assert_close(loss_fn(x, t), torch.nn.functional.cross_entropy(x, t, label_smoothing=0.1))
    probs = torch.softmax(torch.randn(4, 10, device="cuda"), -1)
    x2 = torch.randn(4, 10, device="cuda")
    torch.testing.assert_close(loss_fn(x2, probs), torch.nn.functional.cross_entropy(x2, probs, label_smoothing=0.1))
    bad = torch.tensor([1, 2, 10, 3], device="cuda")
    loss_fn(x2, bad)  # counted as ignored, reported later
    with pytest.raises(lightseq.ArgumentError, match="outside"):
        loss_fn.check_targets()

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 50)
            self.loss = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)

        def forward(self, h, y):
            return self.loss(self.proj(h), y)

    torch.manual_seed(3)
    ref = Head().cuda()
    model = lightseq.compile(copy.deepcopy(ref))
    assert type(model.loss) is lightseq.nn.CrossEntropyLoss and "loss (CrossEntropyLoss): compiled" in lightseq.explain(model)
    h, y = torch.randn(32, 16, device="cuda"), torch.randint(0, 50, (32,), device="cuda")
    a, b = model(h, y), ref(h, y)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.proj.weight.grad, ref.proj.weight.grad, rtol=1e-4, atol=1e-6)
