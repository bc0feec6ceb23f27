"""A compiled layer on inputs off CUDA (CPU: evaluation, debugging) runs PyTorch's implementation
with its same parameters, silently, and explain() says so; dropout probabilities changed after
compiling are read at the next training call. CPU only."""
import copy
import warnings

import pytest
import torch
from torch import nn

import lightseq
from lightseq import _compile

NOTE = ("; on CUDA inputs; inputs on another device (CPU) run PyTorch's implementation with the same "
        "parameters; dropout probabilities are read at each training call")


def same_as_pytorch(reference, compiled, *args, **kw):
    """compiled(*args) == reference(*args) bitwise, in eval and (same seed) training mode, with the
    same parameter gradients; no warning."""
    for training in (False, True):
        reference.train(training)
        compiled.train(training)
        outs = []
        for model in (reference, compiled):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(5)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                y = model(*args, **kw)
            y = getattr(y, "last_hidden_state", y)
            y.square().sum().backward()
            outs.append((y.detach(), [p.grad for p in model.parameters()]))  # None: unused (a pooler)
        assert torch.equal(outs[0][0], outs[1][0]), f"training={training}"
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1])), \
            f"training={training}"


@pytest.mark.parametrize("batch_first", [False, True])
def test_encoder_layer_on_cpu_is_pytorch(batch_first):
    torch.manual_seed(0)
    reference = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.2, batch_first=batch_first)
    compiled = lightseq.compile(copy.deepcopy(reference))
    assert isinstance(compiled, _compile.CompiledTransformerEncoderLayer)
    x = torch.randn(3, 5, 64)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    if not batch_first:  # x is [T, B, H]; the padding mask stays [B, T]
        x = x.transpose(0, 1).contiguous()
    same_as_pytorch(reference, compiled, x, src_key_padding_mask=pad)


def test_decoder_layer_on_cpu_is_pytorch():
    torch.manual_seed(1)
    reference = nn.TransformerDecoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
    compiled = lightseq.compile(copy.deepcopy(reference))
    x, memory = torch.randn(2, 6, 64), torch.randn(2, 4, 64)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    same_as_pytorch(reference, compiled, x, memory, tgt_mask=causal, tgt_is_causal=True)


@pytest.mark.parametrize("family", ["Bert", "Roberta"])
def test_bert_layer_on_cpu_is_pytorch(family):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    config = getattr(transformers, family + "Config")(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                                      num_hidden_layers=2, vocab_size=50)
    reference = getattr(transformers, family + "Model")(config)
    compiled = lightseq.compile(copy.deepcopy(reference))
    assert type(compiled.encoder.layer[0]).__name__ == f"Compiled{family}Layer"
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    same_as_pytorch(reference, compiled, ids, attention_mask=mask)


def test_explain_says_off_cuda_inputs_run_pytorch():
    layer = lightseq.compile(nn.TransformerEncoderLayer(64, 4, 128))
    assert lightseq.explain(layer) == (
        "<model> (TransformerEncoderLayer): compiled: encoder 64/4/128 post-LN relu, eps 1e-05, dropout "
        f"attention 0.1 / activation 0.1 / hidden 0.1, torch.float32{NOTE}")


def test_dropout_changed_after_compiling_is_read_at_the_next_training_call():
    layer = lightseq.compile(nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1))
    before = getattr(layer, _compile._STATE)
    layer.dropout.p = 0.0
    layer.self_attn.dropout = 0.25
    layer.eval()
    assert _compile._call_state(layer) == (before, None), "eval calls use no dropout: nothing to read"
    layer.train()
    state, why = _compile._call_state(layer)
    assert why is None and state is getattr(layer, _compile._STATE) and state is not before
    cfg = state.config
    assert (cfg.dropout_attention, cfg.dropout_activation, cfg.dropout_hidden) == (0.25, 0.0, 0.1)
    assert '"dropout": {"activation": 0.0, "attention": 0.25, "hidden": 0.1}' in \
        state.specs[(torch.float32, False, True)]
    assert _compile._call_state(layer) == (state, None), "unchanged: the same state"


def test_dropout_changes_lightseq_cannot_take_run_pytorch_with_the_reason():
    pytest.importorskip("lightseq._C", reason="the native extension is not built")
    layer = lightseq.compile(nn.TransformerDecoderLayer(64, 4, 128, dropout=0.1))
    layer.dropout1.p = 0.3
    assert _compile._call_state(layer) == (
        None, "its dropouts changed after compiling: dropout1 and dropout2 differ (0.3, 0.1): lightseq "
              "has one attention output dropout")
    layer.dropout1.p = 0.1
    layer.dropout.p = 1.0
    assert _compile._call_state(layer) == (
        None, "its dropouts changed after compiling: dropout.p = 1.0: must be a probability in [0, 1); 0 "
              "turns it off")


def test_bert_dropout_changed_after_compiling():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                     num_hidden_layers=1, vocab_size=50)
    model = lightseq.compile(transformers.BertModel(config))
    layer = model.encoder.layer[0]
    layer.attention.self.dropout.p = 0.0
    state, why = _compile._call_state(layer)
    assert why is None and state.config.dropout_attention == 0.0
