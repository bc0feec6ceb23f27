"""lightseq.compile checks each layer's generated spec with the compiler's own rules when it
compiles, and reports what it rejects in the module's PyTorch terms; CPU only (the rules are the
extension's, so these tests need it built)."""
import pytest
import torch
from torch import nn

import lightseq

pytest.importorskip("lightseq._C", reason="the native extension is not built")

EPS_RULE = "must be a positive finite number (LayerNorm divides by sqrt(variance + eps)); try 1e-5"
PROBABILITY_RULE = "must be a probability in [0, 1); 0 turns it off"


class Model(nn.Module):
    def __init__(self, layer, count=2):
        super().__init__()
        self.encoder = nn.TransformerEncoder(layer, count, enable_nested_tensor=False)


def test_bad_eps_is_reported_in_pytorch_terms_and_the_layer_is_left_alone():
    model = Model(nn.TransformerEncoderLayer(64, 4, 128, layer_norm_eps=0))
    lightseq.compile(model)
    assert lightseq.explain(model) == "\n".join(
        f"encoder.layers.{i} (TransformerEncoderLayer): not compiled: encoder.layers.{i}.norm1.eps = 0.0: "
        f"{EPS_RULE}" for i in range(2))
    assert all(type(m) is nn.TransformerEncoderLayer for m in model.encoder.layers)


def test_dropout_one_is_reported_for_each_dropout():
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=1.0)
    lightseq.compile(layer)
    assert lightseq.explain(layer) == (
        f"<model> (TransformerEncoderLayer): not compiled: dropout.p = 1.0: {PROBABILITY_RULE}\n"
        f"  self_attn.dropout = 1.0: {PROBABILITY_RULE}\n"
        f"  dropout2.p = 1.0: {PROBABILITY_RULE}")
    assert type(layer) is nn.TransformerEncoderLayer


def test_decoder_issue_is_reported_once_in_float32_terms():
    layer = nn.TransformerDecoderLayer(64, 4, 128, layer_norm_eps=1e-50)
    lightseq.compile(layer)
    assert lightseq.explain(layer) == (
        "<model> (TransformerDecoderLayer): not compiled: norm1.eps = 1e-50: becomes 0 in float32, the "
        f"precision the kernels use (the smallest positive float32 is 1e-45); it {EPS_RULE}")


def test_bert_layer_names():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                     num_hidden_layers=1, layer_norm_eps=0.0)
    model = transformers.BertModel(config)
    lightseq.compile(model)
    line = [x for x in lightseq.explain(model).splitlines() if "BertLayer" in x]
    assert line == [f"encoder.layer.0 (BertLayer): not compiled: "
                    f"encoder.layer.0.attention.output.LayerNorm.eps = 0.0: {EPS_RULE}"]


def test_standalone_layer_with_a_bad_eps_raises():
    with pytest.raises(lightseq.Unsupported) as e:
        lightseq.nn.TransformerEncoderLayer(64, 4, 128, eps=0.0)
    assert isinstance(e.value, ValueError)
    assert str(e.value) == f"lightseq.nn.TransformerEncoderLayer: norm1.eps = 0.0: {EPS_RULE}"


def test_valid_layers_still_compile():
    model = Model(nn.TransformerEncoderLayer(64, 4, 128, layer_norm_eps=1e-6, dropout=0.1))
    lightseq.compile(model)
    assert all(isinstance(m, lightseq._compile.CompiledTransformerEncoderLayer) for m in model.encoder.layers)
