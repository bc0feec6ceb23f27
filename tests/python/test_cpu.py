"""CPU tests (CI): model walking, spec extraction, explain(), and the errors of compiled layers on
bad input, all without a GPU."""
import copy
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import lightseq
from lightseq import _hf, _spec


def encoder(hidden=64, heads=4, ffn=128, **kw):
    return nn.TransformerEncoderLayer(hidden, heads, ffn, **kw)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation,name", [("relu", "relu"), ("gelu", "gelu"), (torch.nn.functional.gelu, "gelu"),
                                             (torch.nn.functional.relu, "relu"),
                                             (torch.nn.GELU(approximate="tanh"), "gelu_tanh")])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_encoder_layer_config(norm_first, activation, name, batch_first):
    m = encoder(96, 6, 200, dropout=0.25, activation=activation, norm_first=norm_first, layer_norm_eps=1e-6,
                batch_first=batch_first)
    c = _spec.from_torch_encoder_layer(m)
    assert (c.hidden, c.heads, c.ffn) == (96, 6, 200)
    assert c.norm == ("pre" if norm_first else "post") and c.activation == name
    assert c.eps == 1e-6
    assert (c.dropout_attention, c.dropout_activation, c.dropout_hidden) == (0.25, 0.25, 0.25)
    spec = c.spec(torch.bfloat16)
    assert spec["precision"] == "bf16"
    assert spec["layers"][0]["dropout"] == {"attention": 0.25, "activation": 0.25, "hidden": 0.25}
    assert c.spec(torch.float16, dropout_on=False)["layers"][0]["dropout"] == {
        "attention": 0.0, "activation": 0.0, "hidden": 0.0}
    assert c.spec(torch.float32, causal=True)["layers"][0]["causal"] is True


def test_dropouts_read_from_each_module():
    m = encoder(dropout=0.1)
    m.self_attn.dropout = 0.2
    m.dropout.p = 0.3
    c = _spec.from_torch_encoder_layer(m)
    assert (c.dropout_attention, c.dropout_activation, c.dropout_hidden) == (0.2, 0.3, 0.1)


@pytest.mark.parametrize("make,reason", [
    (lambda: encoder(60, 4, 128), "hidden size 60"),
    (lambda: encoder(64, 16, 128), "head dimension 4"),
    (lambda: encoder(64, 4, 100), "feed-forward size 100"),
    (lambda: encoder(bias=False), "bias"),
    (lambda: encoder(activation=nn.SiLU()), "activation SiLU()"),
    (lambda: encoder(activation=torch.tanh), "activation"),
    (lambda: encoder().to(torch.float64), "float64"),
])
def test_unsupported_encoder_layers_say_why(make, reason):
    m = make()
    with pytest.raises(_spec.Unsupported, match=None) as e:
        _spec.from_torch_encoder_layer(m)
    assert reason in str(e.value)
    model = nn.Sequential(m)
    lightseq.compile(model)
    assert type(model[0]) is nn.TransformerEncoderLayer  # left as it was
    assert "not compiled" in lightseq.explain(model) and reason in lightseq.explain(model)


def test_attention_output_dropout_of_its_own_and_mismatched_eps():
    m = encoder()
    assert _spec.from_torch_encoder_layer(m).dropout_attention_output is None, "the same: one hidden dropout"
    m.dropout2.p = 0.3
    c = _spec.from_torch_encoder_layer(m)
    assert (c.dropout_hidden, c.dropout_attention_output) == (0.3, 0.1)
    assert c.spec(torch.float32)["layers"][0]["dropout"] == {"attention": 0.1, "activation": 0.1, "hidden": 0.3,
                                                            "attention_output": 0.1}
    assert c.probabilities(True) == (0.1, 0.1, 0.3, 0.0, 0.1) and c.probabilities(False) == (0.0,) * 5
    m = encoder()
    m.norm2.eps = 1e-3
    with pytest.raises(_spec.Unsupported, match="different eps"):
        _spec.from_torch_encoder_layer(m)


def test_compile_walks_the_tree_and_keeps_parameters():
    stack = nn.TransformerEncoder(encoder(), 3, enable_nested_tensor=False)
    model = nn.Sequential(nn.Linear(64, 64), stack, nn.LayerNorm(64))
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    assert lightseq.compile(model) is model
    assert {n: p for n, p in model.named_parameters()} == params  # same objects, same names
    assert list(model.state_dict()) == keys
    for layer in stack.layers:
        assert isinstance(layer, lightseq._compile.CompiledTransformerEncoderLayer)
        assert isinstance(layer, nn.TransformerEncoderLayer)
    assert isinstance(stack, lightseq._compile.CompiledTransformerEncoder)
    text = lightseq.explain(model)
    assert text.count("compiled: encoder 64/4/128 post-LN relu") == 3, text
    # compiling again changes nothing and says so
    lightseq.compile(model)
    assert lightseq.explain(model).count("already compiled") == 3
    # load_state_dict, deepcopy and pickle keep working
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    twin = copy.deepcopy(model)
    assert isinstance(twin[1].layers[0], lightseq._compile.CompiledTransformerEncoderLayer)
    assert all(p is not q for p, q in zip(twin.parameters(), model.parameters()))
    again = pickle.loads(pickle.dumps(model))
    assert type(again[1].layers[2]) is type(model[1].layers[2])


def test_explain_without_compile_and_without_layers():
    assert "has not been applied" in lightseq.explain(nn.Linear(2, 2))
    m = nn.Linear(2, 2)
    lightseq.compile(m)
    assert "found no layer" in lightseq.explain(m)
    with pytest.raises(TypeError, match="nn.Module"):
        lightseq.compile("not a model")


def small_bert_config(**kw):
    transformers = pytest.importorskip("transformers")
    args = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.05,
                layer_norm_eps=1e-12)
    args.update(kw)
    return transformers.BertConfig(**args)


def test_bert_layer_config_and_compile():
    from transformers import BertModel
    model = BertModel(small_bert_config())
    c = _hf.FAMILIES[0].config(model.encoder.layer[0])
    assert (c.hidden, c.heads, c.ffn, c.norm, c.activation, c.eps) == (64, 4, 128, "post", "gelu", 1e-12)
    assert (c.dropout_attention, c.dropout_activation, c.dropout_hidden) == (0.05, 0.0, 0.1)
    lightseq.compile(model)
    text = lightseq.explain(model)
    assert text.count("(BertLayer): compiled") == 2, text
    assert "encoder.layer.0" in text


@pytest.mark.parametrize("kw,reason", [({"hidden_act": "quick_gelu"}, "hidden_act 'quick_gelu'"),
                                       ({"hidden_size": 60, "num_attention_heads": 6}, "hidden size 60")])
def test_unsupported_bert_layers_say_why(kw, reason):
    from transformers import BertModel
    model = BertModel(small_bert_config(**kw))
    lightseq.compile(model)
    assert reason in lightseq.explain(model)
    assert type(model.encoder.layer[0]).__name__ == "BertLayer"


# The families whose layers run BertLayer's code (transformers copies it into each).
BERT_FAMILIES = [("RobertaModel", "RobertaConfig", "RobertaLayer"),
                 ("XLMRobertaModel", "XLMRobertaConfig", "XLMRobertaLayer"),
                 ("CamembertModel", "CamembertConfig", "CamembertLayer"),
                 ("ElectraModel", "ElectraConfig", "ElectraLayer"),
                 ("Data2VecTextModel", "Data2VecTextConfig", "Data2VecTextLayer")]


@pytest.mark.parametrize("model_name,config_name,layer_name", BERT_FAMILIES)
def test_bert_family_layers_compile_by_their_code(model_name, config_name, layer_name):
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, config_name)(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.05,
        **({"embedding_size": 64} if config_name == "ElectraConfig" else {}))
    model = getattr(transformers, model_name)(config)
    original = type(model.encoder.layer[0])
    assert original.__name__ == layer_name and _hf.match(model.encoder.layer[0])[1] == ""
    lightseq.compile(model)
    text = lightseq.explain(model)
    assert text.count(f"({layer_name}): compiled") == 2, text
    layer = model.encoder.layer[0]
    assert type(layer).__name__ == "Compiled" + layer_name and isinstance(layer, original)


def test_a_bert_shaped_layer_with_other_code_says_why():
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertLayer

    class ScaledLayer(BertLayer):  # BertLayer's parts, another function
        def forward(self, hidden_states, *args, **kwargs):
            return BertLayer.forward(self, hidden_states, *args, **kwargs) * 2

    layer = ScaledLayer(small_bert_config())
    assert "ScaledLayer is shaped like BertLayer, but its own forward is not BertLayer's code" in \
        _hf.match(layer)[1]
    lightseq.compile(layer)
    assert "not compiled: ScaledLayer is shaped like BertLayer" in lightseq.explain(layer)
    assert type(layer) is ScaledLayer


def test_standalone_layer_has_torch_names_and_validates():
    layer = lightseq.nn.TransformerEncoderLayer(64, 4, 128, activation="gelu", norm_first=True)
    ref = nn.TransformerEncoderLayer(64, 4, 128, activation="gelu", norm_first=True, batch_first=True)
    assert list(layer.state_dict()) == list(ref.state_dict())
    layer.load_state_dict(ref.state_dict())
    with pytest.raises(ValueError, match="head dimension"):
        lightseq.nn.TransformerEncoderLayer(64, 16, 128)
    with pytest.raises(ValueError, match="activation"):
        lightseq.nn.TransformerEncoderLayer(64, 4, 128, activation="silu")


def test_bad_inputs_raise_clear_errors_before_any_gpu_work():
    layer = lightseq.compile(nn.Sequential(encoder(batch_first=True)))[0]
    with pytest.raises(TypeError, match="not a tensor"):
        layer([1, 2, 3])


def test_spec_is_valid_for_the_compiler():
    C = pytest.importorskip("lightseq._C", reason="the extension is not built")
    c = _spec.from_torch_encoder_layer(encoder(512, 8, 2048, norm_first=True, activation="gelu"))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert C.validate_spec(_spec.spec_json(c.spec(dtype, causal=True))) == []
    bad = json.loads(_spec.spec_json(c.spec(torch.float16)))
    bad["layers"][0]["heads"] = 7
    assert any("heads" in line for line in C.validate_spec(json.dumps(bad)))


def test_no_gpu_is_a_clear_error():
    C = pytest.importorskip("lightseq._C", reason="the extension is not built")
    if C.device_count() > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(lightseq.Error, match="needs an NVIDIA GPU"):
        lightseq._ops.layer_id(_spec.spec_json(_spec.from_torch_encoder_layer(encoder()).spec(torch.float32)), 0, None)
    ok, why = lightseq.gpu_available()
    assert not ok and why


# ---- decoder layers ------------------------------------------------------------------------------

def decoder(hidden=64, heads=4, ffn=128, **kw):
    return nn.TransformerDecoderLayer(hidden, heads, ffn, **kw)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_torch_decoder_layer_config_and_spec(norm_first, activation):
    m = decoder(96, 6, 200, dropout=0.25, activation=activation, norm_first=norm_first, layer_norm_eps=1e-6)
    c = _spec.from_torch_decoder_layer(m)
    assert isinstance(c, _spec.DecoderConfig)
    assert (c.hidden, c.heads, c.ffn, c.activation, c.eps) == (96, 6, 200, activation, 1e-6)
    assert c.norm == ("pre" if norm_first else "post")
    assert c.describe().startswith("decoder 96/6/200")
    spec = c.spec(torch.float16)
    assert [s["type"] for s in spec["layers"]] == ["encoder", "decoder"]  # a decoder needs an encoder first
    assert spec["layers"][1]["dropout"] == {"attention": 0.25, "activation": 0.25, "hidden": 0.25}
    with pytest.raises(_spec.Unsupported, match="causal"):
        c.spec(torch.float16, causal=False)
    C = pytest.importorskip("lightseq._C", reason="the extension is not built")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for training in (False, True):
            assert C.validate_spec(_spec.spec_json(c.spec(dtype, dropout_on=training))) == []


def _kdim_decoder():
    m = decoder()
    m.multihead_attn = nn.MultiheadAttention(64, 4, kdim=32, vdim=32)
    return m


@pytest.mark.parametrize("make,reason", [
    (lambda: decoder(60, 4, 128), "hidden size 60"),
    (lambda: decoder(bias=False), "bias"),
    (lambda: decoder(activation=nn.Hardswish()), "activation Hardswish()"),
    (_kdim_decoder, "multihead_attn has separate key/value dimensions"),
])
def test_unsupported_decoder_layers_say_why(make, reason):
    m = make()
    with pytest.raises(_spec.Unsupported) as e:
        _spec.from_torch_decoder_layer(m)
    assert reason in str(e.value)
    model = nn.Sequential(m)
    lightseq.compile(model)
    assert type(model[0]) is nn.TransformerDecoderLayer
    assert reason in lightseq.explain(model)


def test_decoder_dropouts_must_agree():
    m = decoder()
    m.dropout3.p = 0.3  # the FFN's: hidden; the attentions' outputs: attention_output
    assert _spec.from_torch_decoder_layer(m).dropouts() == (0.1, 0.1, 0.3, 0.1)
    m.dropout2.p = 0.2
    with pytest.raises(_spec.Unsupported, match="dropout1 and dropout2 differ"):
        _spec.from_torch_decoder_layer(m)
    m = decoder()
    m.multihead_attn.dropout = 0.2
    with pytest.raises(_spec.Unsupported, match="different dropouts"):
        _spec.from_torch_decoder_layer(m)
    m = decoder()
    m.norm3.eps = 1e-3
    with pytest.raises(_spec.Unsupported, match="norm1, norm2 and norm3 have different eps"):
        _spec.from_torch_decoder_layer(m)


def test_compile_a_whole_transformer():
    model = nn.Transformer(64, 4, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=128, batch_first=True)
    params = {n: p for n, p in model.named_parameters()}
    lightseq.compile(model)
    assert {n: p for n, p in model.named_parameters()} == params
    text = lightseq.explain(model)
    assert text.count("(TransformerEncoderLayer): compiled: encoder 64/4/128") == 2, text
    assert text.count("(TransformerDecoderLayer): compiled: decoder 64/4/128") == 3, text
    again = pickle.loads(pickle.dumps(model))
    assert type(again.decoder.layers[0]) is lightseq._compile.CompiledTransformerDecoderLayer
    # on CPU inputs the compiled layers run PyTorch's implementation (tests/python/test_cpu_fallback.py)
    assert model.decoder.layers[0](torch.randn(2, 3, 64), torch.randn(2, 5, 64), tgt_is_causal=True).shape == (2, 3, 64)


def test_standalone_decoder_layer_has_torch_names():
    layer = lightseq.nn.TransformerDecoderLayer(64, 4, 128, norm_first=True)
    ref = nn.TransformerDecoderLayer(64, 4, 128, norm_first=True, batch_first=True)
    assert list(layer.state_dict()) == list(ref.state_dict())
    with pytest.raises(ValueError, match="head dimension"):
        lightseq.nn.TransformerDecoderLayer(64, 16, 128)


@pytest.mark.parametrize("batch_first", [True, False])
def test_decoder_fallback_builds_the_causal_mask_pytorch_needs(batch_first):
    """A call that runs PyTorch's layer (here on CPU, with a memory_mask) needs a mask with the
    tgt_is_causal hint; lightseq accepts the hint alone and makes the mask."""
    torch.manual_seed(0)
    layer = decoder(batch_first=batch_first, dropout=0.0)
    reference = copy.deepcopy(layer)
    compiled = lightseq.compile(nn.Sequential(layer))[0]
    x = torch.randn((2, 7, 64) if batch_first else (7, 2, 64))
    memory = torch.randn((2, 5, 64) if batch_first else (5, 2, 64))
    memory_mask = torch.zeros(7, 5)
    y = compiled(x, memory, tgt_is_causal=True, memory_mask=memory_mask)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    want = reference(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_mask=memory_mask)
    torch.testing.assert_close(y, want)


def test_ops_called_directly_check_their_inputs_against_the_manifest():
    """The generic op pair checks each argument against the layer's manifest (count, device,
    contiguity, dtype, shape at the call's B, T, S) before any GPU work."""
    from lightseq import _ops
    E = _ops.Entry
    fwd = (E("x", "input", ((1, 1, 1, 0), (64, 0, 0, 0)), torch.float32, False, False, ""),
           E("key_padding_mask", "input", ((1, 1, 0, 0), (1, 0, 1, 0)), torch.uint8, True, False, ""),
           E("w", "param", ((64, 0, 0, 0),), torch.float32, False, False, ""),
           E("y", "output", ((1, 1, 1, 0), (64, 0, 0, 0)), torch.float32, False, False, ""))
    _ops._layers.append(_ops.Layer(None, "layers[0]", (), fwd, ()))
    lid = len(_ops._layers) - 1
    try:
        x = torch.randn(10, 64)
        with pytest.raises(ValueError, match=r"lightseq::layer_fwd \(layers\[0\]\): 3 tensors \(x, key_padding_mask, "
                                             r"w\), got 1"):
            _ops.layer_fwd([x], lid, [2, 5, 0], [0.0] * 4)
        with pytest.raises(ValueError, match=r"'x' must be a contiguous CUDA torch.float32 tensor of shape \[10, 64\], "
                                             r"got a contiguous torch.float32 tensor of shape \[10, 64\] on cpu"):
            _ops.layer_fwd([x, torch.empty(0, dtype=torch.uint8), torch.randn(64)], lid, [2, 5, 0], [0.0] * 4)
        with pytest.raises(ValueError, match=r"no tensor for x, w"):
            _ops.run_layer(lid, {"x": None, "key_padding_mask": None}, (2, 5, 0), [0.0, 0.0, 0.0])
        with pytest.raises(ValueError, match=r"no tensor for w"):
            _ops.run_layer(lid, {"x": x}, (2, 5, 0), [0.0, 0.0, 0.0])
    finally:
        _ops._layers.pop()


def test_fused_attention_is_asked_for_and_explained():
    layer = lightseq.compile(encoder(norm_first=True).to(torch.bfloat16), attention="fused")
    text = lightseq.explain(layer)
    assert "fused attention in fp16/bf16 (and under autocast)" in text, text
    specs = layer._lightseq.specs
    for (dtype, _causal, _training), s in specs.items():
        assert ('"attention": "fused"' in s) == (dtype != torch.float32), (dtype, s)
    # a head dim the fused kernels do not take: unfused, and explain says why
    narrow = lightseq.compile(encoder(64, 8, 128), attention="fused")
    assert "attention unfused: head_dim 8" in lightseq.explain(narrow)
    assert not any('"fused"' in s for s in narrow._lightseq.specs.values())
    # the default compiles no fused attention; a changed dropout keeps the choice
    assert not any('"fused"' in s for s in lightseq.compile(encoder())._lightseq.specs.values())
    layer.dropout.p = 0.3
    state, why = lightseq._compile._call_state(layer.train())
    assert why is None and state.attention == "fused" and state is not None


def test_an_unknown_attention_backend_is_refused():
    # the names come from the compiler's own list (lightseq._C.spec_choices())
    pytest.importorskip("lightseq._C", reason="the extension is not built")
    with pytest.raises(lightseq.ArgumentError, match="attention='flash'"):
        lightseq.compile(encoder(), attention="flash")


def test_auto_attention_is_passed_to_the_compiler_and_explained():
    """attention="auto": every spec asks the compiler to choose per call (fp32 and head dims the
    fused kernels lack included: the compiler plans the unfused path alone there), and explain()
    says how it chooses, or why it cannot."""
    layer = lightseq.compile(encoder(norm_first=True).to(torch.bfloat16), attention="auto")
    assert "attention chosen per call by its lengths" in lightseq.explain(layer)
    assert all('"attention": "auto"' in s for s in layer._lightseq.specs.values())
    narrow = lightseq.compile(encoder(64, 8, 128), attention="auto")
    assert "attention unfused: head_dim 8" in lightseq.explain(narrow)


def _fake_layer(fused):
    from lightseq import _ops
    slot = (("saved", 4, 1, 1, 0),)  # 4·B·T bytes
    return _ops.Layer(None, "layers[0]", slot, (), (), fused)


def test_an_auto_layers_saved_arena_follows_its_rule():
    """The saved arena of an "auto" layer's call is its fused plan's where the rule admits the
    shape (at most max_keys in T and S, at most max_batch), the unfused plan's elsewhere."""
    from lightseq import _ops
    fused = (512, 100, (("lse", 2, 1, 1, 0),))  # 2·B·T bytes
    lay = _fake_layer(fused)
    align = lambda n: (n + 255) // 256 * 256  # noqa: E731
    assert _ops._saved_bytes(lay, 4, 512, 0) == align(2 * 4 * 512)
    assert _ops._saved_bytes(lay, 4, 513, 0) == align(4 * 4 * 513)
    assert _ops._saved_bytes(lay, 4, 64, 513) == align(4 * 4 * 64), "a cross-attention past the limit"
    assert _ops._saved_bytes(lay, 101, 64, 0) == align(4 * 101 * 64), "a batch past the fused grids"
    assert _ops._saved_bytes(_fake_layer(None), 4, 64, 0) == align(4 * 4 * 64)


def test_assume_constant_result_marks_as_torch_does(monkeypatch):
    """lightseq marks its layer lookups for torch.compile without importing torch._dynamo: the mark
    must be the one torch._dynamo.assume_constant_result sets."""
    import torch._dynamo
    from lightseq import _native

    def ours():
        return 1

    def torchs():
        return 1

    monkeypatch.delitem(sys.modules, "torch._dynamo")  # the branch taken at `import lightseq`
    assert _native.assume_constant_result(ours) is ours
    monkeypatch.undo()
    assert torch._dynamo.assume_constant_result(torchs) is torchs
    assert ours.__dict__ == torchs.__dict__ and ours.__dict__, (ours.__dict__, torchs.__dict__)


def test_import_lightseq_does_not_import_dynamo():
    """`import lightseq` stays cheap (issue 11, first-call latency): torch._dynamo (1-4 s) is loaded
    only by what needs it."""
    code = ("import sys, torch; before = 'torch._dynamo' in sys.modules; import lightseq; "
            "assert ('torch._dynamo' in sys.modules) == before, 'import lightseq imported torch._dynamo'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(lightseq.__file__)), os.environ.get("PYTHONPATH", "")] if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_layer_calling_convention_is_derived_once_from_the_manifest():
    """A layer's call positions come from its manifest (lightseq._ops.Layer): where each input and
    output sits in the native call's argument order, where each backward input comes from, which
    backward output is each forward input's gradient, and the padding masks of both directions."""
    from lightseq import _ops
    E = _ops.Entry
    tok = ((1, 1, 1, 0), (8, 0, 0, 0))
    fwd = (E("x", "input", tok, torch.float32, False, False, ""),
           E("key_padding_mask", "input", ((1, 1, 0, 0), (1, 0, 1, 0)), torch.uint8, True, False, ""),
           E("w", "param", ((8, 0, 0, 0),), torch.float32, False, False, ""),
           E("y", "output", tok, torch.float32, False, False, ""),
           E("bad", "output", ((1, 0, 0, 0),), torch.int32, False, True, ""))
    bwd = (E("w", "param", ((8, 0, 0, 0),), torch.float32, False, False, ""),
           E("grad_x", "grad_output", tok, torch.float32, False, False, "x"),
           E("key_padding_mask", "input", ((1, 1, 0, 0), (1, 0, 1, 0)), torch.uint8, True, False, ""),
           E("x", "input", tok, torch.float32, False, False, ""),
           E("grad_y", "grad_input", tok, torch.float32, False, False, "y"),
           E("grad.w", "param_grad", ((8, 0, 0, 0),), torch.float32, False, False, "w"))
    lay = _ops.Layer(None, "layers[0]", (), fwd, bwd)
    assert [e.name for e in lay.fwd_in] == ["x", "key_padding_mask", "w"]
    assert [e.name for e in lay.fwd_out] == ["y", "bad"]
    # args + outs = [x, mask, w, y, bad]: the manifest's order
    assert lay.fwd_order == (0, 1, 2, 3, 4)
    assert [e.name for e in lay.bwd_in] == ["w", "key_padding_mask", "x", "grad_y"]
    assert [e.name for e in lay.bwd_out] == ["grad_x", "grad.w"]
    # args + outs = [w, mask, x, grad_y, grad_x, grad.w] -> manifest order w, grad_x, mask, x, grad_y, grad.w
    assert lay.bwd_order == (0, 4, 1, 2, 3, 5)
    # backward inputs: w, mask, x from the forward's args; grad_y is output 0's gradient
    assert lay.bwd_from == ((False, 2), (False, 1), (False, 0), (True, 0))
    # the forward args' gradients: x -> grad_x (0), mask -> none, w -> grad.w (1)
    assert lay.grad_at == (0, -1, 1)
    assert lay.masks == ((1,), (1,)) and lay.anchor == (0, 0)
    shapes = _ops._Shapes(lay, (2, 5, 0))
    assert shapes.fwd_out == (((10, 8), torch.float32, False), ((1,), torch.int32, True))
    assert shapes.fwd_in[1] == (torch.Size([2, 5]), (torch.bool, torch.uint8), True)
    with pytest.raises(ValueError, match=r"the backward reads 'z', which the forward does not take"):
        _ops.Layer(None, "layers[0]", (), fwd, (E("z", "input", tok, torch.float32, False, False, ""),))


def test_bert_query_key_value_are_laid_out_together_and_joined_without_a_copy():
    """compile() moves a BERT layer's query, key and value parameters into one buffer (the same
    Parameter objects and values), so each call passes them as the graph's in_proj without a copy;
    gradients reach the three as through torch.cat. Parameters inside a larger buffer (an
    optimizer's flat arena) are left there and concatenated per call."""
    transformers = pytest.importorskip("transformers")
    from lightseq import _hf
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ref = copy.deepcopy(model)
    params = list(model.parameters())
    lightseq.compile(model)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    for layer, ref_layer in zip(model.encoder.layer, ref.encoder.layer):
        sa = layer.attention.self
        for w in ("weight", "bias"):
            q, k, v = (getattr(getattr(sa, n), w) for n in ("query", "key", "value"))
            assert k.data_ptr() == q.data_ptr() + q.numel() * q.element_size()
            assert v.data_ptr() == k.data_ptr() + k.numel() * k.element_size()
            assert torch.equal(q, getattr(ref_layer.attention.self.query, w))
        joined = layer._weights()
        W, b = joined["self_attn.in_proj_weight"], joined["self_attn.in_proj_bias"]
        assert W.data_ptr() == sa.query.weight.data_ptr() and b.data_ptr() == sa.query.bias.data_ptr()
        assert torch.equal(W, torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]))
        g = torch.randn_like(W)
        (W * g).sum().backward()
        for i, n in enumerate(("query", "key", "value")):
            assert torch.equal(getattr(sa, n).weight.grad, g[64 * i:64 * (i + 1)])
    x = torch.randint(0, 100, (2, 7))
    torch.testing.assert_close(model(x).last_hidden_state, ref(x).last_hidden_state)
    # a state_dict round trip keeps values and layout
    fresh = lightseq.compile(transformers.BertModel(cfg).eval())
    fresh.load_state_dict(model.state_dict())
    sa = fresh.encoder.layer[0].attention.self
    assert sa.key.weight.data_ptr() == sa.query.weight.data_ptr() + sa.query.weight.numel() * 4
    torch.testing.assert_close(fresh(x).last_hidden_state, ref(x).last_hidden_state)
    # parameters that are views into a larger buffer stay there; the call concatenates
    other = transformers.BertModel(cfg).eval()
    flat = torch.zeros(3 * (64 * 64 + 8))
    sa = other.encoder.layer[0].attention.self
    for i, n in enumerate(("query", "key", "value")):
        w = getattr(sa, n).weight
        w.data = flat[i * (64 * 64 + 8):i * (64 * 64 + 8) + 64 * 64].view(64, 64).copy_(w.data)
    lightseq.compile(other)
    assert sa.query.weight.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    W = other.encoder.layer[0]._weights()["self_attn.in_proj_weight"]
    assert torch.equal(W, torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]))
    assert not _hf._adjacent([sa.query.weight, sa.key.weight, sa.value.weight])


def test_bert_query_key_value_moved_one_by_one_are_laid_out_again_on_the_next_call():
    """model.to(...) after compile() moves each parameter to storage of its own: the next call lays
    the group out together again (once), with the values it had."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=100)
    model = lightseq.compile(transformers.BertModel(cfg).eval()).to(torch.float64)
    sa = model.encoder.layer[0].attention.self
    assert sa.key.weight.data_ptr() != sa.query.weight.data_ptr() + 64 * 64 * 8  # moved apart
    want = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]).clone()
    W = model.encoder.layer[0]._weights()["self_attn.in_proj_weight"]
    assert sa.key.weight.data_ptr() == sa.query.weight.data_ptr() + 64 * 64 * 8
    assert W.data_ptr() == sa.query.weight.data_ptr() and torch.equal(W, want)
