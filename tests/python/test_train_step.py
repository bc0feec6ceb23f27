"""The whole-model training step (runtime/step.h, lightseq._C.TrainStep) against PyTorch.

A small Transformer (nn.Embedding with sinusoidal positions + nn.TransformerEncoder/Decoder +
tied output projection + label-smoothed F.cross_entropy + torch.optim.AdamW) and the C++ step from
the same initial weights, dropout off, trained for several steps on the same batches: losses step
by step (fp32 tight, bf16 within its noise), every gradient of the first step, the weights after the
last. A graph-replayed run equals an uncaptured one bit for bit; two runs with one seed are bitwise
identical; a checkpoint resumes bit for bit; an fp16 overflow skips the update and leaves the weights
bit-identical.
"""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightseq

pytestmark = pytest.mark.gpu

V, H, HEADS, FFN, PAD = 997, 64, 4, 128, 1
LR, BETAS, EPS, WD, SMOOTH = 2e-3, (0.9, 0.98), 1e-8, 0.01, 0.1


def spec(precision, layers=(2, 2), dropout=0.0, vocab=V, token_types=0, norm="post", final_norm=False):
    stack = lambda kind, n: {  # noqa: E731
        "type": kind, "count": n, "hidden": H, "heads": HEADS, "ffn": FFN, "activation": "relu",
        "norm": norm, "eps": 1e-5, "final_norm": final_norm,
        "dropout": {"attention": dropout, "activation": dropout, "hidden": dropout}}
    s = {
        "name": "train-step-test", "precision": precision,
        "embedding": {"vocab": vocab, "hidden": H, "positions": "sinusoidal", "max_positions": 64,
                      "padding_idx": PAD, "scale": "sqrt_hidden", "dropout": dropout,
                      "layernorm": False, "tie_output": True, "token_types": token_types},
        "layers": [stack("encoder", layers[0])] + ([stack("decoder", layers[1])] if layers[1] else []),
        "criterion": {"type": "cross_entropy", "label_smoothing": SMOOTH, "ignore_index": PAD},
        "optimizer": {"type": "adamw", "lr": LR, "betas": list(BETAS), "eps": EPS,
                      "weight_decay": WD},
    }
    return json.dumps(s)


_models = {}


def step_for(precision, seed=0, graphs=True, **kw):
    key = (precision, tuple(sorted(kw.items())))
    if key not in _models:
        _models[key] = lightseq._C.CompiledModel.load(spec(precision, **kw), 0, None)
    return lightseq._C.TrainStep(_models[key], seed=seed, cuda_graphs=graphs)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sinusoids(T):
    """fairseq's table: sin in [0, H/2), cos in [H/2, H), positions 0 .. T-1 (fp32)."""
    half = H // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * freq[None, :]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)


class Reference(nn.Module):
    def __init__(self, n_enc=2, n_dec=2, norm_first=False, final_norm=False):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, H, padding_idx=PAD)
        # fairseq's initialization: with nn.Embedding's N(0, 1) the scaled embeddings and the tied
        # projection give logits ~±60 and a loss of ~47 nats, where the softmax is so peaked that
        # bf16 rounding alone moves the gradients a lot (PyTorch's own bf16 gradients differ from
        # its fp32 ones by 8-13% there, on the CPU; lightseq's bf16 embedding gradient differed from
        # PyTorch's bf16 one by 93% on the H200, 2026-12-06). With this one the loss is ~7.5 and
        # PyTorch's bf16 gradients are within 2% (median) to 8% (linear1, ReLU kinks) of fp32.
        nn.init.normal_(self.embed_tokens.weight, 0.0, H ** -0.5)
        with torch.no_grad():
            self.embed_tokens.weight[PAD].zero_()
        enc = nn.TransformerEncoderLayer(H, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=norm_first)
        dec = nn.TransformerDecoderLayer(H, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=norm_first)
        # final_norm: nn.TransformerEncoder/Decoder's `norm` (encoder.norm.weight, ...), Fairseq's
        # encoder/decoder_normalize_before
        self.encoder = nn.TransformerEncoder(enc, n_enc, enable_nested_tensor=False,
                                             norm=nn.LayerNorm(H) if final_norm else None)
        self.decoder = nn.TransformerDecoder(dec, n_dec, norm=nn.LayerNorm(H) if final_norm else None)

    def embed(self, tokens):
        pad = tokens == PAD
        w = self.embed_tokens.weight
        x = self.embed_tokens(tokens) * math.sqrt(H) + sinusoids(tokens.shape[1]).to(w.device, w.dtype)
        return x.masked_fill(pad[..., None], 0.0), pad  # lightseq's padding rows are zeros

    def forward(self, src, tgt, targets):
        x, src_pad = self.embed(src)
        mem = self.encoder(x, src_key_padding_mask=src_pad)
        y, tgt_pad = self.embed(tgt)
        T = tgt.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=tgt.device)
        out = self.decoder(y, mem, tgt_mask=causal, tgt_is_causal=True,
                           tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
        logits = out @ self.embed_tokens.weight.t()
        return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1),
                               ignore_index=PAD, label_smoothing=SMOOTH)


def batches(n, B=6, S=13, T=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src = torch.randint(2, V, (B, S), generator=g)
        tgt = torch.randint(2, V, (B, T), generator=g)
        tgt_out = torch.randint(2, V, (B, T), generator=g)
        for b in range(1, B, 2):  # every other sequence padded at its end (never all of it)
            k = 1 + b % 3
            src[b, S - k:] = PAD
            tgt[b, T - k:] = PAD
            tgt_out[b, T - k:] = PAD
        out.append((src.cuda(), tgt.cuda(), tgt_out.cuda()))
    return out


def load_into(step, ref, dtype):
    sd = ref.state_dict()
    for name, _shape in step.parameters():
        t = sd[name].detach().to(dtype).cpu().contiguous()
        step.set_parameter(name, t.data_ptr(), t.numel() * t.element_size())


def read(step, name, shape, dtype, grad=False):
    t = torch.empty(shape, dtype=dtype)
    (step.get_gradient if grad else step.get_parameter)(name, t.data_ptr(), t.numel() * t.element_size())
    return t


def run(step, batch):
    src, tgt, tgt_out = batch
    B, S = src.shape
    T = tgt.shape[1]
    s = torch.cuda.current_stream().cuda_stream
    step.run(src.data_ptr(), tgt.data_ptr(), tgt_out.data_ptr(), B, S, T, s)
    st = step.stats(s)
    return st["loss"] / st["tokens"], st


def rel_err(a, b):
    return float((a.float().cpu() - b.float().cpu()).norm() / max(float(b.float().norm()), 1e-12))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_whole_step_trains_like_pytorch(precision):
    """Against PyTorch in fp32 from the same (dtype-rounded) weights. bf16: every gradient within
    2x PyTorch's own bf16 error (the same model run by PyTorch in bf16, against fp32) + 1%, the
    losses within 2%: lightseq keeps fp32 master weights, so it follows the fp32 run; the weights
    after 8 steps within 2x those of PyTorch in bf16 with fp32 master weights."""
    torch.manual_seed(0)
    dtype = DTYPES[precision]
    ref = Reference().cuda()
    with torch.no_grad():  # the weights both sides start from, representable in `dtype`
        for p in ref.parameters():
            p.copy_(p.to(dtype).float())
    step = step_for(precision)
    load_into(step, ref, dtype)
    ref16 = copy.deepcopy(ref).to(dtype) if dtype != torch.float32 else None
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    if ref16 is not None:  # the peer: PyTorch in bf16 with fp32 master weights (lightseq's recipe)
        master = [p.detach().float().clone().requires_grad_() for p in ref16.parameters()]
        opt16 = torch.optim.AdamW(master, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    data = batches(8)
    tol = {"fp32": 2e-4, "bf16": 2e-2}[precision]
    for i, b in enumerate(data):
        opt.zero_grad()
        want = ref(*b)
        want.backward()
        got, st = run(step, b)
        if ref16 is not None:
            ref16.zero_grad(set_to_none=True)
            ref16(*b).backward()
        if i == 0:  # every gradient of the first step
            sd = dict(ref.named_parameters())
            sd16 = dict(ref16.named_parameters()) if ref16 is not None else None
            bad = []  # every gradient's error, so that a failure shows where it starts
            for name, shape in step.parameters():
                mine = read(step, name, shape, dtype, grad=True)
                g = sd[name].grad
                err = rel_err(mine, g)
                limit = 1e-3 if ref16 is None else 2 * rel_err(sd16[name].grad, g) + 1e-2
                if not err <= limit:
                    bad.append(f"{name}: rel err {err:.3g} > {limit:.3g} (|ours| "
                               f"{float(mine.float().norm()):.3g}, |torch| {float(g.norm()):.3g})")
            assert not bad, "gradients off:\n" + "\n".join(bad)
        opt.step()
        if ref16 is not None:
            for m, p in zip(master, ref16.parameters()):
                m.grad = p.grad.float()
            opt16.step()
            with torch.no_grad():
                for m, p in zip(master, ref16.parameters()):
                    p.copy_(m)
        assert st["tokens"] == int((b[2] != PAD).sum())
        assert not st["bad_token"] and not st["bad_target"]
        assert abs(got - want.item()) <= tol * abs(want.item()), f"step {i}: {got} vs {want.item()}"
    assert st["updates"] == len(data)
    # the weights after the last step. The key bias's gradient is zero in exact arithmetic (a
    # softmax does not change when every score of a query moves by the same q·b): both sides
    # update it from rounding noise, which Adam scales to steps of about lr, so it is compared
    # absolutely (within the 2·lr per step the two noisy runs can drift apart). In bf16 every
    # parameter is within 2x the peer's own distance from the fp32 run + 0.1%: bf16 storage, and
    # bf16-noisy gradients that Adam's normalization turns into whole lr-sized steps where the true
    # gradient is small (the biases that start at zero drift ~5-10% in both).
    sd = ref.state_dict()
    sd16 = ref16.state_dict() if ref16 is not None else None

    def key_part_apart(name, t):
        q, k, v = t.chunk(3)
        return k, torch.cat([q, v])

    for name, shape in step.parameters():
        mine, theirs = read(step, name, shape, dtype).float().cpu(), sd[name].float().cpu()
        peer = sd16[name].float().cpu() if sd16 is not None else None
        if name.endswith("in_proj_bias"):
            (k, mine), (tk, theirs) = key_part_apart(name, mine), key_part_apart(name, theirs)
            drift = float((k - tk).abs().max())
            assert drift <= 2 * LR * len(data), f"{name} (key part): |diff| {drift}"
            if peer is not None:
                peer = key_part_apart(name, peer)[1]
        err = rel_err(mine, theirs)
        limit = 1e-4 if peer is None else 2 * rel_err(peer, theirs) + 1e-3
        assert err < limit, f"{name}: rel err {err} (limit {limit})"
    assert step.graphs_captured == 1 and step.graph_replays == len(data) - 1


def test_pre_ln_with_final_norms_trains_like_pytorch():
    """A pre-LN encoder-decoder with a LayerNorm after each kind's last stack (spec final_norm;
    nn.TransformerEncoder/Decoder's `norm`): the final norms' parameters are in the step under
    PyTorch's names, and three steps follow PyTorch in fp32: losses, every first-step gradient and
    the weights after."""
    torch.manual_seed(1)
    ref = Reference(norm_first=True, final_norm=True).cuda()
    with torch.no_grad():  # LayerNorm weights away from 1 and biases away from 0: they matter
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    step = step_for("fp32", norm="pre", final_norm=True)
    names = dict(step.parameters())
    assert {"encoder.norm.weight", "encoder.norm.bias", "decoder.norm.weight", "decoder.norm.bias"} <= names.keys()
    assert names.keys() == dict(ref.named_parameters()).keys()
    load_into(step, ref, torch.float32)
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    for i, b in enumerate(batches(3, seed=4)):
        opt.zero_grad()
        want = ref(*b)
        want.backward()
        got, _ = run(step, b)
        assert abs(got - want.item()) <= 2e-4 * abs(want.item()), f"step {i}: {got} vs {want.item()}"
        if i == 0:
            for name, shape in step.parameters():
                err = rel_err(read(step, name, shape, torch.float32, grad=True), ref.get_parameter(name).grad)
                assert err <= 1e-3, f"grad {name}: rel err {err}"
        opt.step()
    sd = ref.state_dict()
    for name, shape in step.parameters():
        if name.endswith("in_proj_bias"):
            continue  # its key part: rounding noise through Adam (test_whole_step_trains_like_pytorch)
        err = rel_err(read(step, name, shape, torch.float32), sd[name])
        assert err <= 1e-4, f"{name}: rel err {err}"


def params_of(step, dtype=torch.bfloat16):
    return {n: read(step, n, s, dtype) for n, s in step.parameters()}


def test_graph_replay_equals_uncaptured_run_bitwise_with_dropout():
    data = batches(5)
    results = []
    for graphs in (True, False, True):
        step = step_for("bf16", seed=7, graphs=graphs, dropout=0.1)
        step.init_parameters(3)
        losses = [run(step, b)[0] for b in data]
        results.append((losses, params_of(step)))
        assert step.graphs_captured == (1 if graphs else 0)
    for losses, params in results[1:]:
        assert losses == results[0][0]
        for n, t in params.items():
            assert torch.equal(t, results[0][1][n]), n
    # a different seed draws other masks
    step = step_for("bf16", seed=8, dropout=0.1)
    step.init_parameters(3)
    assert [run(step, b)[0] for b in data] != results[0][0]


def test_checkpoint_resumes_bit_for_bit(tmp_path):
    data = batches(6)
    full = step_for("bf16", seed=5, dropout=0.1)
    full.init_parameters(1)
    want = [run(full, b)[0] for b in data]
    part = step_for("bf16", seed=5, dropout=0.1)
    part.init_parameters(1)
    for b in data[:3]:
        run(part, b)
    s = torch.cuda.current_stream().cuda_stream
    part.save(str(tmp_path / "ckpt"), s)
    resumed = step_for("bf16", seed=99, dropout=0.1)  # the seed comes from the checkpoint
    resumed.load(str(tmp_path / "ckpt"), s)
    assert [run(resumed, b)[0] for b in data[3:]] == want[3:]
    other = lightseq._C.TrainStep(lightseq._C.CompiledModel.load(spec("bf16", layers=(1, 1)), 0, None))
    with pytest.raises(lightseq.Error, match="is of another model"):
        other.load(str(tmp_path / "ckpt"), s)


def test_fp16_overflow_skips_the_update():
    step = step_for("fp16")
    step.init_parameters(2)
    data = batches(2)
    run(step, data[0])
    before = params_of(step, torch.float16)
    # a huge loss scale makes the fp16 gradients overflow: the update is skipped, the scale backs off
    s = torch.cuda.current_stream().cuda_stream
    st0 = step.stats(s)
    step2 = lightseq._C.TrainStep(_models[("fp16", ())], loss_scale=3e38)
    for n, shape in step.parameters():
        t = before[n].contiguous()
        step2.set_parameter(n, t.data_ptr(), t.numel() * t.element_size())
    _, st = run(step2, data[1])
    assert st["skipped_updates"] == 1 and st["updates"] == 0
    assert st["loss_scale"] == pytest.approx(1.5e38)
    after = params_of(step2, torch.float16)
    for n, t in before.items():
        assert torch.equal(t, after[n]), n
    assert st0["updates"] == 1


def test_bad_batches_are_refused():
    step = step_for("fp32")
    src, tgt, tgt_out = batches(1)[0]
    s = torch.cuda.current_stream().cuda_stream
    with pytest.raises(lightseq.Error, match="src_tokens is null"):
        step.run(0, tgt.data_ptr(), tgt_out.data_ptr(), 6, 13, 11, s)
    with pytest.raises(lightseq.Error, match="longer than the embedding's max_positions 64"):
        step.run(src.data_ptr(), tgt.data_ptr(), tgt_out.data_ptr(), 1, 65, 11, s)
    with pytest.raises(lightseq.Error, match="has no parameter 'encoder.layers.9.norm1.weight'"):
        step.get_parameter("encoder.layers.9.norm1.weight", 0, 4)


def test_token_types_enter_the_embedding():
    """A token-type table (BERT's segments) on the target stream: no ids means every token is type
    0, bit for bit; other ids change the loss, and only the rows of the types used get a gradient
    (type 0: the source stream's tokens, which take no ids); ids given to a model without a table
    are refused."""
    step = step_for("fp32", token_types=3)
    step.init_parameters(1)
    src, tgt, y = batches(1)[0]
    B, S = src.shape
    T = tgt.shape[1]
    s = torch.cuda.current_stream().cuda_stream
    zeros, ones = torch.zeros_like(tgt), torch.ones_like(tgt)

    def loss(types):
        return step.evaluate(src.data_ptr(), tgt.data_ptr(), y.data_ptr(), B, S, T, s,
                             token_types=types)["loss"]

    none = loss(0)
    assert loss(zeros.data_ptr()) == none
    assert loss(ones.data_ptr()) != none
    step.run(src.data_ptr(), tgt.data_ptr(), y.data_ptr(), B, S, T, s, token_types=ones.data_ptr())
    shape = dict(step.parameters())["embed_token_types.weight"]
    g = read(step, "embed_token_types.weight", shape, torch.float32, grad=True)
    assert torch.count_nonzero(g[1]) > 0, "the type used got no gradient"
    assert torch.count_nonzero(g[0]) > 0, "type 0 (every source token) got no gradient"
    assert torch.count_nonzero(g[2]) == 0, "the unused type did"
    plain = step_for("fp32")
    plain.init_parameters(1)
    with pytest.raises(lightseq.Error, match="no token-type table"):
        plain.run(src.data_ptr(), tgt.data_ptr(), y.data_ptr(), B, S, T, s,
                  token_types=ones.data_ptr())



# ---- lightseq.TrainStep: the step from Python, on the module's own parameters --------------------

class MT(nn.Module):
    """An MT model as people write it: nn.Embedding (padding row zero and frozen, as nn.Embedding
    does), fairseq's sinusoidal positions, nn.Transformer (with its final LayerNorms), a tied output
    projection and a label-smoothed cross-entropy."""

    def __init__(self, norm_first=False, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(V, H, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, 0.0, H ** -0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.transformer = nn.Transformer(H, HEADS, 2, 2, FFN, dropout=dropout, batch_first=True,
                                          norm_first=norm_first)
        self.loss = nn.CrossEntropyLoss(label_smoothing=SMOOTH, ignore_index=PAD)

    def embed_tokens(self, t):
        return self.embed(t) * math.sqrt(H) + sinusoids(t.shape[1]).to(t.device, self.embed.weight.dtype)

    def forward(self, src, tgt, targets):
        T = tgt.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=tgt.device)
        out = self.transformer(self.embed_tokens(src), self.embed_tokens(tgt), tgt_mask=causal, tgt_is_causal=True,
                               src_key_padding_mask=src == PAD, tgt_key_padding_mask=tgt == PAD,
                               memory_key_padding_mask=src == PAD)
        return self.loss((out @ self.embed.weight.t()).reshape(-1, V).float(), targets.reshape(-1))


def python_step(model, opt, **kw):
    return lightseq.TrainStep(embedding=model.embed, transformer=model.transformer, loss=model.loss, optimizer=opt,
                              max_positions=64, **kw)


def test_python_train_step_trains_the_modules_parameters_like_pytorch():
    """fp32, an LR schedule, 6 steps: each returned loss equals PyTorch's, the module's own
    parameters (now views of the step's arena) equal PyTorch's after training, and an in-place
    change to them (load_state_dict) is what the next step trains from."""
    torch.manual_seed(2)
    ref = MT().cuda()
    mine = copy.deepcopy(ref)
    opts = [torch.optim.AdamW(m.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD) for m in (ref, mine)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: min(1.0, (i + 1) / 3)) for o in opts]
    step = python_step(mine, opts[1])
    assert set(step.parameter_names()) == {n[len("transformer."):] if n.startswith("transformer.") else "embed_tokens.weight"
                                           for n, _ in ref.named_parameters()}
    data = batches(6, seed=11)
    for i, b in enumerate(data):
        opts[0].zero_grad()
        want = ref(*b)
        want.backward()
        opts[0].step()
        got = step(*b)
        assert got.dtype == torch.float32 and got.dim() == 0
        assert abs(got.item() - want.item()) <= 2e-4 * abs(want.item()), f"step {i}: {got.item()} vs {want.item()}"
        assert step.stats()["loss"] == pytest.approx(got.item(), rel=1e-6)
        for s in scheds:
            s.step()
    assert step.graph_replays == len(data) - 1
    for name, p in mine.named_parameters():
        want_p = ref.get_parameter(name)
        if name.endswith("in_proj_bias"):  # the key part: rounding noise through Adam (see above)
            assert float((p - want_p).abs().max()) <= 2 * LR * len(data), name
            continue
        assert rel_err(p.detach(), want_p.detach()) <= 1e-4, name
    # the module's parameters are the step's: an in-place load is trained from at the next step
    mine.load_state_dict(ref.state_dict())
    b = batches(1, seed=12)[0]
    assert step.evaluate(*b)["loss"] == pytest.approx(ref(*b).item(), rel=2e-4)


def test_python_train_step_fp32_module_in_bf16_keeps_its_masters():
    """fp32 parameters trained in bf16: the module's parameters are the fp32 master weights (they
    change by steps smaller than bf16 can hold), the losses follow PyTorch's fp32 run within 2%,
    padding to a multiple of 8 changes nothing but the graphs' shapes, and dropout runs."""
    torch.manual_seed(3)
    ref = MT().cuda()
    mine = copy.deepcopy(ref)
    opts = [torch.optim.AdamW(m.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD) for m in (ref, mine)]
    step = python_step(mine, opts[1], dtype=torch.bfloat16, pad_to_multiple=8)
    assert all(p.dtype == torch.float32 for p in mine.parameters())
    w0 = mine.transformer.encoder.layers[0].linear1.weight.detach().clone()
    for i, b in enumerate(batches(4, seed=13)):
        opts[0].zero_grad()
        want = ref(*b)
        want.backward()
        opts[0].step()
        got = step(*b).item()
        assert abs(got - want.item()) <= 2e-2 * abs(want.item()), f"step {i}: {got} vs {want.item()}"
    w1 = mine.transformer.encoder.layers[0].linear1.weight.detach()
    assert not torch.equal(w1, w0) and not torch.equal(w1, w1.bfloat16().float()), "not fp32 master weights"
    assert step.graphs_captured == 1  # T = 11 and S = 13 padded to 16: one shape
    # dropout: a model with dropout trains too, and its losses differ from dropout-free ones
    torch.manual_seed(3)
    drop = MT(dropout=0.1).cuda()
    dstep = python_step(drop, torch.optim.AdamW(drop.parameters(), lr=LR), dtype=torch.bfloat16, seed=1)
    b = batches(1, seed=14)[0]
    losses = [dstep(*b).item() for _ in range(3)]
    assert all(math.isfinite(x) for x in losses) and losses[0] != losses[1]


def test_python_train_step_refuses_what_it_cannot_train():
    torch.manual_seed(4)
    m = MT().cuda()
    opt = torch.optim.AdamW(m.parameters(), lr=LR)
    with pytest.raises(lightseq.Unsupported, match="reduction is 'sum'"):
        lightseq.TrainStep(embedding=m.embed, transformer=m.transformer, optimizer=opt,
                           loss=nn.CrossEntropyLoss(reduction="sum"))
    with pytest.raises(lightseq.ArgumentError, match="exactly the parameters"):
        lightseq.TrainStep(embedding=m.embed, transformer=m.transformer, loss=m.loss,
                           optimizer=torch.optim.AdamW(m.transformer.parameters(), lr=LR))
    with pytest.raises(lightseq.ArgumentTypeError, match="torch.optim.AdamW or"):
        lightseq.TrainStep(embedding=m.embed, transformer=m.transformer, loss=m.loss,
                           optimizer=torch.optim.SGD(m.parameters(), lr=LR))
    step = python_step(m, opt)
    src, tgt, tgt_out = batches(1)[0]
    with pytest.raises(lightseq.ArgumentError, match="takes \\(src, tgt, targets\\)"):
        step(tgt, tgt_out)
    with pytest.raises(lightseq.ArgumentError, match="targets has 10 positions, the target tokens 11"):
        step(src, tgt, tgt_out[:, :10])
    with pytest.raises(lightseq.ArgumentError, match="is on cpu"):
        step(src.cpu(), tgt, tgt_out)


def test_python_train_step_encoder_only_with_token_types_and_a_bert_embedding():
    """An encoder-only model (BERT-like: lightseq.nn.Embedding.bert with token types, an untied
    projection) trains from Python: the step's loss equals PyTorch's on the same weights (dropout
    off, evaluate), token types change it, and a step moves the loss."""
    torch.manual_seed(5)
    emb = lightseq.nn.Embedding.bert(V, H, max_positions=64, token_types=2, dropout=0.0).cuda()
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(H, HEADS, FFN, dropout=0.0, batch_first=True,
                                                           activation="gelu"), 2, enable_nested_tensor=False).cuda()
    proj = nn.Linear(H, V, bias=False).cuda()
    params = list(emb.parameters()) + list(enc.parameters()) + list(proj.parameters())
    loss = nn.CrossEntropyLoss(ignore_index=-100)
    step = lightseq.TrainStep(embedding=emb, encoder=enc, output_projection=proj, loss=loss,
                              optimizer=torch.optim.AdamW(params, lr=LR))
    g = torch.Generator().manual_seed(6)
    tokens = torch.randint(2, V, (4, 12), generator=g).cuda()
    types = (torch.arange(12) >= 6).long().expand(4, 12).contiguous().cuda()
    targets = torch.randint(2, V, (4, 12), generator=g).cuda()
    targets[:, ::3] = -100
    with torch.no_grad():
        want = loss((enc(emb(tokens, types)) @ proj.weight.t()).reshape(-1, V), targets.reshape(-1)).item()
    got = step.evaluate(tokens, targets, token_types=types)["loss"]
    assert got == pytest.approx(want, rel=2e-4)
    assert step.evaluate(tokens, targets)["loss"] != pytest.approx(want, rel=1e-6)  # type 0 everywhere differs
    first = step(tokens, targets, token_types=types).item()
    assert first == pytest.approx(want, rel=2e-4)
    assert step.evaluate(tokens, targets, token_types=types)["loss"] < first
    with pytest.raises(lightseq.ArgumentError, match="token_types is"):
        step(tokens, targets, token_types=types[:, :5])


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_train_step_in_a_process_group_of_one_equals_the_step_alone():
    """process_group (torch.distributed, NCCL, one process): the id handed through the group, the
    parameters broadcast from rank 0, the targets counted and every gradient summed by lightseq's
    communicator: over one process a sum is the identity, so the losses and the parameters after 4
    steps equal the step without a group bit for bit."""
    import torch.distributed as dist
    if lightseq._C.comm_unavailable_reason():
        pytest.skip("NCCL unavailable: " + lightseq._C.comm_unavailable_reason())
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            device_id=torch.device("cuda", 0))
    try:
        torch.manual_seed(3)
        a = MT().cuda()
        b = copy.deepcopy(a)
        opts = [torch.optim.AdamW(m.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD) for m in (a, b)]
        alone = python_step(a, opts[0], seed=9)
        grouped = python_step(b, opts[1], seed=9, process_group=dist.group.WORLD)
        for i, batch in enumerate(batches(4, seed=13)):
            la, lb = alone(*batch), grouped(*batch)
            assert la.item() == lb.item(), f"step {i}"
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), name
    finally:
        dist.destroy_process_group()


def _group_rank(rank, world, port, out):
    import torch.distributed as dist
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=torch.device("cuda", rank))
    try:
        torch.manual_seed(4)
        model = MT().cuda()  # every rank builds the same; the step broadcasts rank 0's anyway
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
        step = python_step(model, opt, process_group=dist.group.WORLD)
        src, tgt, y = batches(1, B=2 * world, seed=14)[0]
        share = slice(2 * rank, 2 * rank + 2)
        step(src[share], tgt[share], y[share])
        grads = {n: step.gradient(n).detach().cpu() for n in step.parameter_names()}
        params = {n: p.detach().cpu() for n, p in model.named_parameters()}
        torch.save({"grads": grads, "params": params}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_python_train_step_on_two_gpus_equals_one_gpu_on_the_whole_batch(tmp_path):
    """Two processes (torch.multiprocessing, NCCL), each on half of a batch: the summed gradient is
    the one the step computes alone on the whole batch (fp32, to summation order), and both ranks
    hold the same parameters after the update, bit for bit."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, this machine has {torch.cuda.device_count()} (scripts/gpu-step OUT group)")
    import torch.multiprocessing as mp
    mp.spawn(_group_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    torch.manual_seed(4)
    model = MT().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    alone = python_step(model, opt)
    alone(*batches(1, B=4, seed=14)[0])
    for name in alone.parameter_names():
        assert rel_err(r0["grads"][name], alone.gradient(name)) <= 1e-5, name
