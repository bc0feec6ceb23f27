"""lightseq.nn.Embedding without a GPU: its PyTorch function (what CPU inputs run, and the GPU
tests' reference) is BERT's, RoBERTa's, GPT-2's and fairseq's embedding, forward and every
gradient, with the same parameters; its arguments and the compiler's rules give clear errors."""
import math

import pytest
import torch

import lightseq
from lightseq._embedding import sinusoidal_table

transformers = pytest.importorskip("transformers")


def copy_params(dst: torch.nn.Module, src: torch.nn.Module, names: dict) -> None:
    """dst.<key> = src.<value> for each parameter name pair."""
    with torch.no_grad():
        for mine, theirs in names.items():
            dst.get_parameter(mine).copy_(src.get_parameter(theirs))


def grads_match(a: torch.nn.Module, b: torch.nn.Module, names: dict) -> None:
    for mine, theirs in names.items():
        ga, gb = a.get_parameter(mine).grad, b.get_parameter(theirs).grad
        torch.testing.assert_close(ga, gb, msg=lambda m: f"{mine} vs {theirs}: {m}")


def tokens_with_padding(vocab: int, pad: int, batch: int = 3, seq: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, vocab, (batch, seq), generator=g)
    t[t == pad] = (pad + 1) % vocab
    t[0, -3:] = pad  # right padding
    t[1, :2] = pad   # left padding
    return t


BERT_NAMES = {"embed_tokens.weight": "word_embeddings.weight",
              "embed_positions.weight": "position_embeddings.weight",
              "embed_token_types.weight": "token_type_embeddings.weight",
              "layernorm.weight": "LayerNorm.weight", "layernorm.bias": "LayerNorm.bias"}


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_bert_and_roberta_embeddings(family):
    """lightseq.nn.Embedding.bert/.roberta compute BertEmbeddings'/RobertaEmbeddings' function:
    forward, and every table's gradient (the padding token's row, and RoBERTa's padding
    position's row, get none)."""
    torch.manual_seed(1)
    if family == "bert":
        cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, max_position_embeddings=40, type_vocab_size=2,
                                      hidden_dropout_prob=0.0, pad_token_id=0)
        theirs = transformers.models.bert.modeling_bert.BertEmbeddings(cfg)
        mine = lightseq.nn.Embedding.bert(97, 32, max_positions=40, dropout=0.0)
    else:
        cfg = transformers.RobertaConfig(vocab_size=97, hidden_size=32, max_position_embeddings=40, type_vocab_size=1,
                                         hidden_dropout_prob=0.0, pad_token_id=1)
        theirs = transformers.models.roberta.modeling_roberta.RobertaEmbeddings(cfg)
        mine = lightseq.nn.Embedding.roberta(97, 32, max_positions=40, dropout=0.0)
    with torch.no_grad():  # random tables everywhere, padding rows included
        for p in theirs.parameters():
            p.normal_()
    copy_params(mine, theirs, BERT_NAMES)
    pad = cfg.pad_token_id
    tok = tokens_with_padding(97, pad)
    types = torch.randint(0, cfg.type_vocab_size, tok.shape)
    want = theirs(input_ids=tok, token_type_ids=types)
    got = mine(tok, types)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    grads_match(mine, theirs, BERT_NAMES)
    assert mine.embed_tokens.weight.grad[pad].abs().max() == 0
    if family == "roberta":
        assert mine.embed_positions.weight.grad[pad].abs().max() == 0


def test_gpt2_embedding():
    """.gpt2: wte(ids) + wpe(arange) + dropout, as GPT2Model computes it."""
    torch.manual_seed(2)
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=1, n_head=4, embd_pdrop=0.0)
    model = transformers.GPT2Model(cfg)
    mine = lightseq.nn.Embedding.gpt2(101, 32, max_positions=32, dropout=0.0)
    names = {"embed_tokens.weight": "wte.weight", "embed_positions.weight": "wpe.weight"}
    copy_params(mine, model, names)
    tok = torch.randint(0, 101, (2, 9))
    want = model.wte(tok) + model.wpe(torch.arange(9)[None, :])
    torch.testing.assert_close(mine(tok), want)


def test_fairseq_embedding():
    """.fairseq: tokens × √hidden + fairseq's sinusoids at positions counted over the non-padding
    tokens (from padding_idx + 1), zero rows and no gradient for padding."""
    torch.manual_seed(3)
    mine = lightseq.nn.Embedding.fairseq(50, 16, padding_idx=1, max_positions=64, dropout=0.0)
    tok = tokens_with_padding(50, 1, seq=9)
    got = mine(tok)
    pos = torch.cumsum((tok != 1).long(), 1) * (tok != 1).long() + 1
    table = torch.zeros(64, 16)
    half = 8
    for t in range(64):
        for k in range(half):
            f = math.exp(-k * math.log(10000.0) / (half - 1))
            table[t, k], table[t, half + k] = math.sin(t * f), math.cos(t * f)
    want = mine.embed_tokens.weight[tok] * 4.0 + table[pos]
    want = want.masked_fill((tok == 1)[..., None], 0.0)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(sinusoidal_table(64, 16), table)
    got.sum().backward()
    assert mine.embed_tokens.weight.grad[1].abs().max() == 0


def test_arguments_and_rules():
    with pytest.raises(lightseq.ArgumentError, match="positions='rotary'"):
        lightseq.nn.Embedding(10, 16, positions="rotary")
    with pytest.raises(lightseq.ArgumentError, match="padding_rows="):
        lightseq.nn.Embedding(10, 16, padding_rows="skip")
    with pytest.raises(TypeError, match="vocab is"):
        lightseq.nn.Embedding(10.0, 16)
    with pytest.raises(lightseq.Unsupported, match="float64"):
        lightseq.nn.Embedding(10, 16, dtype=torch.float64)
    emb = lightseq.nn.Embedding(10, 16)
    with pytest.raises(lightseq.ArgumentError, match="token_types given"):
        emb(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(lightseq.ArgumentError, match=r"\[batch, seq\] integer"):
        emb(torch.zeros(2, 3))
    with pytest.raises(lightseq.ArgumentError, match="outside"):
        emb(torch.tensor([[3, 10]]))
    with pytest.raises(lightseq.ArgumentError, match="max_positions"):
        lightseq.nn.Embedding(10, 16, max_positions=4)(torch.zeros(1, 5, dtype=torch.long))


def test_compiler_rules_are_the_specs():
    """What the compiler refuses is refused at construction, in its words (needs the extension)."""
    try:
        lightseq._native.extension()
    except lightseq.Error as e:
        pytest.skip(f"extension not built: {e}")
    with pytest.raises(lightseq.SpecError, match="embedding.hidden = 12"):
        lightseq.nn.Embedding(10, 12)
    with pytest.raises(lightseq.SpecError, match="embedding.positions_from"):
        lightseq.nn.Embedding(10, 16, positions_from="tokens")  # counted positions need a padding token


def small_bert(family="Bert", **kw):
    cfg = getattr(transformers, family + "Config")(vocab_size=128, hidden_size=64, num_hidden_layers=1,
                                                    num_attention_heads=4, intermediate_size=128,
                                                    max_position_embeddings=64, **kw)
    return getattr(transformers, family + "Model")(cfg)


@pytest.mark.parametrize("family", ["Bert", "Roberta", "Electra"])
def test_compile_swaps_the_embeddings_and_cpu_inputs_run_pytorch(family):
    """lightseq.compile compiles BERT's and RoBERTa's embeddings (and the classes that run their
    code), in place with the same parameters; CPU inputs run PyTorch's forward, bit for bit;
    compiled models copy and pickle."""
    import copy
    import pickle
    torch.manual_seed(4)
    model = small_bert(family).eval()
    ref = copy.deepcopy(model)
    lightseq.compile(model)
    assert f"embeddings ({family}Embeddings): compiled: embedding" in lightseq.explain(model)
    assert type(model.embeddings).__name__ == f"Compiled{family}Embeddings"
    assert isinstance(model.embeddings, type(ref.embeddings))
    ids = torch.randint(2, 128, (2, 9))
    assert torch.equal(model(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state)
    again = pickle.loads(pickle.dumps(copy.deepcopy(model)))
    assert torch.equal(again(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state)


def test_embeddings_lightseq_cannot_prove_are_explained():
    model = small_bert()
    emb = model.embeddings

    class OtherEmbeddings(type(emb)):
        def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                    cache_length=0):
            return super().forward(input_ids, token_type_ids, position_ids, inputs_embeds, cache_length) * 2

    emb.__class__ = OtherEmbeddings
    lightseq.compile(model)
    assert "embeddings (OtherEmbeddings): not compiled: OtherEmbeddings is shaped like a BERT embedding, but " \
           "its code is not" in lightseq.explain(model)
    bad = small_bert(position_embedding_type="relative_key") if "position_embedding_type" in \
        transformers.BertConfig().to_dict() else None
    if bad is not None:
        lightseq.compile(bad)
        assert "position_embedding_type 'relative_key'" in lightseq.explain(bad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_on_cpu_is_torchs(reduction):
    """lightseq.nn.LinearCrossEntropyLoss's definition is torch's cross_entropy of hidden · Wᵀ
    (label smoothing, ignore_index, reduction), which CPU inputs run."""
    torch.manual_seed(5)
    h, w = torch.randn(3, 7, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (3, 7))
    t[0, :2] = -100
    loss_fn = lightseq.nn.LinearCrossEntropyLoss(label_smoothing=0.1, reduction=reduction)
    got = loss_fn(h, w, t)
    want = torch.nn.functional.cross_entropy((h @ w.t()).reshape(-1, 50), t.reshape(-1), label_smoothing=0.1,
                                             reduction=reduction)
    torch.testing.assert_close(got, want.view(t.shape) if reduction == "none" else want)


def test_linear_cross_entropy_arguments():
    with pytest.raises(lightseq.ArgumentError, match="reduction='avg'"):
        lightseq.nn.LinearCrossEntropyLoss(reduction="avg")
    loss_fn = lightseq.nn.LinearCrossEntropyLoss()
    with pytest.raises(lightseq.ArgumentError, match=r"\[vocab, hidden\]"):
        loss_fn(torch.randn(2, 8), torch.randn(10, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(lightseq.ArgumentError, match="targets must be integers"):
        loss_fn(torch.randn(2, 8), torch.randn(10, 8), torch.zeros(3, dtype=torch.long))
    try:
        lightseq._native.extension()
    except lightseq.Error:
        return
    with pytest.raises(lightseq.SpecError, match="criterion.label_smoothing"):
        lightseq.nn.LinearCrossEntropyLoss(label_smoothing=1.5)


def test_negative_padding_idx_counts_from_the_end_as_nn_embedding():
    emb = lightseq.nn.Embedding(16, 8, padding_idx=-1, padding_rows="zero", positions="sinusoidal")
    assert emb.config.padding_idx == 15 == emb.embed_tokens.padding_idx
    y = emb(torch.tensor([[3, 15, 4]]))
    assert y[0, 1].abs().max() == 0 and y[0, 0].abs().max() > 0
    with pytest.raises(lightseq.ArgumentError, match="padding_idx must be in"):
        lightseq.nn.Embedding(16, 8, padding_idx=16)


@pytest.mark.parametrize("protocol", [0, 1, 2, 5])
def test_modules_pickle_with_every_protocol(protocol):
    import pickle
    for m in (lightseq.nn.Embedding.gpt2(100, 16, max_positions=8), lightseq.nn.LinearCrossEntropyLoss()):
        again = pickle.loads(pickle.dumps(m, protocol=protocol))
        assert again._bad.pending == []


def test_a_compiled_model_unpickles_in_a_fresh_process(tmp_path):
    """The compiled transformers classes are made by lightseq.compile; a pickled compiled model
    rebuilds them when loaded in a process that never called it."""
    import pathlib
    import pickle
    import subprocess
    import sys
    torch.manual_seed(6)
    model = lightseq.compile(small_bert().eval())
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    ids = torch.randint(2, 128, (2, 9))
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(model(input_ids=ids).last_hidden_state, tmp_path / "want.pt")
    src = pathlib.Path(lightseq.__file__).resolve().parents[1]
    code = (f"import sys, pickle, torch; sys.path.insert(0, {str(src)!r}); "
            f"m = pickle.loads(open({str(path)!r}, 'rb').read()); "
            f"ids = torch.load({str(tmp_path / 'ids.pt')!r}); want = torch.load({str(tmp_path / 'want.pt')!r}); "
            "assert type(m.encoder.layer[0]).__name__ == 'CompiledBertLayer', type(m.encoder.layer[0]); "
            "assert type(m.embeddings).__name__ == 'CompiledBertEmbeddings'; "
            "assert torch.equal(m(input_ids=ids).last_hidden_state, want); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_cross_entropy_loss_is_a_drop_in_that_compile_swaps():
    """lightseq.nn.CrossEntropyLoss is an nn.CrossEntropyLoss (CPU calls run torch's); compile swaps
    an nn.CrossEntropyLoss submodule and says so; a transformers model's own loss is explained."""
    loss_fn = lightseq.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=0)
    assert isinstance(loss_fn, torch.nn.CrossEntropyLoss)
    x, t = torch.randn(6, 9), torch.randint(0, 9, (6,))
    assert "logits on cpu" in loss_fn.runs_lightseq(x, t)
    torch.testing.assert_close(loss_fn(x, t), torch.nn.functional.cross_entropy(x, t, label_smoothing=0.1,
                                                                                ignore_index=0))
    with pytest.raises(lightseq.ArgumentError, match="reduction='avg'"):
        lightseq.nn.CrossEntropyLoss(reduction="avg")
    model = torch.nn.Sequential(torch.nn.Linear(4, 9))
    model.loss = torch.nn.CrossEntropyLoss(weight=torch.ones(9))
    lightseq.compile(model)
    assert type(model.loss) is lightseq.nn.CrossEntropyLoss  # its class weights run torch's path
    assert "class weights" in model.loss.runs_lightseq(x, t)
    bert = transformers.BertForMaskedLM(transformers.BertConfig(hidden_size=64, num_hidden_layers=1,
                                                                num_attention_heads=4, intermediate_size=128,
                                                                vocab_size=100))
    assert "call the model without labels" in lightseq.explain(lightseq.compile(bert))


def test_enumerated_arguments_are_checked_against_the_compilers_own_lists():
    """Python keeps no copy of the spec's enum names: lightseq._C.spec_choices() is the parser's."""
    from lightseq import _native
    try:
        choices = _native.extension().spec_choices()
    except lightseq.Error:
        pytest.skip("the extension is not built")
    assert choices["embedding.positions"] == ["sinusoidal", "learned"]
    assert choices["criterion.input"] == ["hidden", "logits"]
    with pytest.raises(lightseq.ArgumentError, match="positions='rotary'; give one of 'sinusoidal', 'learned'"):
        lightseq.nn.Embedding(10, 8, positions="rotary")
    with pytest.raises(lightseq.ArgumentError, match="attention='flash'; give one of 'unfused', 'fused'"):
        lightseq.compile(torch.nn.Linear(2, 2), attention="flash")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_eager_loss_function_scales_the_forwards_gradients_as_the_ops_autograd_does(reduction):
    """_loss._EagerLoss (the losses outside torch.compile) and the custom ops' autograd
    registration, on a stand-in body that computes, as the kernels do, the loss and the gradients
    of the 'mean' loss ×_grad_scale in its forward: the backward gives torch's gradients for both
    reductions and an upstream gradient other than 1, two differentiable inputs included."""
    from lightseq import _loss

    def body(h, w, targets, lid, red, gh_on, gw_on):  # no autograd inside: custom op bodies run without it
        keep = targets != -100
        logp = torch.log_softmax(h @ w.t(), dim=-1)
        total = -logp[keep].gather(1, targets[keep, None]).sum()
        n = keep.sum().float()
        d = logp.exp()
        d[keep] -= torch.nn.functional.one_hot(targets[keep], w.shape[0]).float()
        d[~keep] = 0
        d = d / n * _loss._grad_scale(h.dtype)  # the 'mean' loss's gradient of the logits, scaled
        loss = total / n if red == "mean" else total
        return loss, d @ w, d.t() @ h, n.view(1), torch.zeros(1, dtype=torch.int32)

    # the same body as a custom op with the losses' autograd registration (their torch.compile path)
    name = f"lightseq_test::stand_in_{reduction}"
    op = torch.library.custom_op(name, lambda h, w, targets, lid, red, gh_on, gw_on: tuple(
        t.clone() for t in body(h, w, targets, lid, red, gh_on, gw_on)), mutates_args=(),
        schema="(Tensor h, Tensor w, Tensor targets, int lid, str red, bool gh_on, bool gw_on) -> "
               "(Tensor, Tensor, Tensor, Tensor, Tensor)")
    _loss._register_loss_autograd(name, reduction_at=4)

    t = torch.tensor([0, 1, -100, 3, 4, 2])
    h0, w0 = torch.randn(6, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    want = torch.nn.functional.cross_entropy(h0 @ w0.t(), t, reduction=reduction)
    (want * 3).backward()
    for run in (lambda h, w: _loss._run_loss(None, body, reduction, h, w, t, 0, reduction, True, True),
                lambda h, w: (lambda out: (out[0], out[-1]))(op(h, w, t, 0, reduction, True, True))):
        h, w = h0.detach().requires_grad_(True), w0.detach().requires_grad_(True)
        loss, bad = run(h, w)
        (loss * 3).backward()
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(h.grad, h0.grad)
        torch.testing.assert_close(w.grad, w0.grad)
        assert not bad.requires_grad
