"""lightseq.attention on the GPU: the fused attention as a function against a float64 reference
(padded with a key padding mask, causal, cross-attention; packed batches of variable lengths per
sequence; q, k, v as slices of one packed projection), every gradient; with dropout, a packed
batch draws what its padded form draws; a captured CUDA graph draws fresh dropout at each replay;
a packed sequence longer than the maximum given is reported."""
import math

import pytest
import torch

import lightseq

pytestmark = pytest.mark.gpu

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


def reference(q, k, v, scale, causal=False, pad=None):
    """float64 attention of one padded batch: q [B, T, h, d], k, v [B, S, h, d]; pad [B, S] True =
    padding; causal aligned to the end (key j seen by query i when j <= i + S - T). Rows whose keys
    are all masked give 0."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))  # [B, h, len, d]
    s = q @ k.transpose(-1, -2) * scale
    T, S = s.shape[-2], s.shape[-1]
    mask = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    if causal:
        i = torch.arange(T, device=s.device)[:, None]
        j = torch.arange(S, device=s.device)[None, :]
        mask = mask | (j > i + S - T)
    if pad is not None:
        mask = mask | pad[:, None, None, :].bool()
    s = s.masked_fill(mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p @ v).transpose(1, 2)


def rel_err(got, want):
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all(), "non-finite values"
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def leaves(*shapes, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.empty(s, device="cuda", dtype=dtype).uniform_(-1, 1, generator=g).requires_grad_() for s in shapes]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_padded_matches_float64(dtype, d, causal):
    B, T, h = 3, 150, 2
    q, k, v = leaves((B, T, h, d), (B, T, h, d), (B, T, h, d), dtype=dtype, seed=1)
    pad = torch.zeros(B, T, dtype=torch.bool, device="cuda")
    pad[1, 100:] = True
    pad[2, 7:] = True
    out = lightseq.attention(q, k, v, key_padding_mask=pad, causal=causal)
    go = torch.randn_like(out)
    want = reference(q, k, v, d ** -0.5, causal, pad)
    assert rel_err(out, want) < TOL[dtype]
    grads = torch.autograd.grad(out, (q, k, v), go)
    wants = torch.autograd.grad(want, (q, k, v), go.double())
    for name, g, w in zip("qkv", grads, wants):
        assert rel_err(g, w) < 2 * TOL[dtype], name


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("causal", [False, True])
def test_packed_matches_each_sequence_in_float64(dtype, causal):
    h, d = 4, 64
    lens = [1, 77, 0, 200, 128, 33]
    total = sum(lens)
    # q, k and v as slices of one packed projection [total, 3, h, d] (the kernels read its rows
    # with their stride; the gradient comes back in one buffer of the same layout)
    qkv = leaves((total, 3, h, d), dtype=dtype, seed=2)[0]
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    out = lightseq.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, causal=causal)
    assert out.shape == q.shape
    go = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, go)
    start = 0
    for n in lens:
        if n == 0:
            continue
        rows = slice(start, start + n)
        leaf = qkv[rows].detach().double().requires_grad_()
        want = reference(leaf[None, :, 0], leaf[None, :, 1], leaf[None, :, 2], d ** -0.5, causal)[0]
        assert rel_err(out[rows], want) < TOL[dtype], f"sequence of {n}"
        (want_grad,) = torch.autograd.grad(want, leaf, go[rows].double())
        assert rel_err(grad[rows], want_grad) < 2 * TOL[dtype], f"gradient, sequence of {n}"
        start += n


def test_cross_attention_packed_keys_of_their_own_lengths():
    dtype, h, d = torch.bfloat16, 2, 128
    q_lens, k_lens = [5, 64, 130], [300, 1, 40]
    q, = leaves((sum(q_lens), h, d), dtype=dtype, seed=3)
    k, v = leaves((sum(k_lens), h, d), (sum(k_lens), h, d), dtype=dtype, seed=4)
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    out = lightseq.attention(q, k, v, cu_seqlens_q=cu(q_lens), cu_seqlens_k=cu(k_lens),
                             max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens))
    go = torch.randn_like(out)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), go)
    qs, ks = 0, 0
    for m, n in zip(q_lens, k_lens):
        lq = q[qs:qs + m].detach().double().requires_grad_()
        lk = k[ks:ks + n].detach().double().requires_grad_()
        lv = v[ks:ks + n].detach().double().requires_grad_()
        want = reference(lq[None], lk[None], lv[None], d ** -0.5)[0]
        assert rel_err(out[qs:qs + m], want) < TOL[dtype]
        wq, wk, wv = torch.autograd.grad(want, (lq, lk, lv), go[qs:qs + m].double())
        assert rel_err(gq[qs:qs + m], wq) < 2 * TOL[dtype]
        assert rel_err(gk[ks:ks + n], wk) < 2 * TOL[dtype]
        assert rel_err(gv[ks:ks + n], wv) < 2 * TOL[dtype]
        qs, ks = qs + m, ks + n


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_packed_draws_what_its_padded_form_draws(causal):
    dtype, h, d = torch.float16, 2, 64
    lens = [50, 129, 3]
    T = max(lens)
    packed, = leaves((sum(lens), 3, h, d), dtype=dtype, seed=5)
    padded = torch.zeros(len(lens), T, 3, h, d, dtype=dtype, device="cuda")
    pad = torch.ones(len(lens), T, dtype=torch.bool, device="cuda")
    start = 0
    for b, n in enumerate(lens):
        padded[b, :n] = packed[start:start + n].detach()
        pad[b, :n] = False
        start += n
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    torch.manual_seed(11)
    a = lightseq.attention(packed[:, 0], packed[:, 1], packed[:, 2], cu_seqlens_q=cu, cu_seqlens_k=cu,
                           causal=causal, dropout_p=0.3)
    torch.manual_seed(11)
    b = lightseq.attention(padded[:, :, 0], padded[:, :, 1], padded[:, :, 2], key_padding_mask=pad, causal=causal,
                           dropout_p=0.3)
    torch.manual_seed(12)
    c = lightseq.attention(packed[:, 0], packed[:, 1], packed[:, 2], cu_seqlens_q=cu, cu_seqlens_k=cu,
                           causal=causal, dropout_p=0.3)
    start = 0
    for i, n in enumerate(lens):
        assert torch.equal(a[start:start + n], b[i, :n]), f"sequence {i}"
        start += n
    assert not torch.equal(a, c), "another seed, the same dropout"


def test_a_captured_call_draws_fresh_dropout_at_each_replay():
    dtype, B, T, h, d = torch.bfloat16, 2, 96, 2, 64
    q, k, v = (torch.randn(B, T, h, d, device="cuda", dtype=dtype) for _ in range(3))
    lightseq.attention(q, k, v, dropout_p=0.2)  # compiles the variant outside the capture
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            out = lightseq.attention(q, k, v, dropout_p=0.2)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out), "two replays, the same dropout"
    no_drop = lightseq.attention(q, k, v)
    assert rel_err(first, no_drop) < 1.0  # the same function, only dropped


def test_a_packed_sequence_longer_than_its_maximum_is_reported():
    h, d = 1, 64
    q = torch.randn(45, h, d, device="cuda", dtype=torch.float16)
    cu = torch.tensor([0, 5, 45], dtype=torch.int32, device="cuda")
    lightseq.attention(q, q, q, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=32, max_seqlen_k=32)
    torch.cuda.synchronize()
    with pytest.raises(lightseq.ArgumentError, match="longer than the max_seqlen"):
        lightseq.attention(q, q, q, cu_seqlens_q=cu, cu_seqlens_k=cu)


def test_max_seqlen_computed_and_cu_seqlens_checked():
    q = torch.randn(10, 1, 64, device="cuda", dtype=torch.float16)
    bad = torch.tensor([0, 6, 4, 10], dtype=torch.int32, device="cuda")
    with pytest.raises(lightseq.ArgumentError, match="never decreasing"):
        lightseq.attention(q, q, q, cu_seqlens_q=bad, cu_seqlens_k=bad)
    short = torch.tensor([0, 6], dtype=torch.int32, device="cuda")
    with pytest.raises(lightseq.ArgumentError, match="rise from 0 to the 10 rows"):
        lightseq.attention(q, q, q, cu_seqlens_q=short, cu_seqlens_k=short)
