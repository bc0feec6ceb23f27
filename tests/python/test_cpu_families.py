"""The transformers families beyond BERT (GPT-2, ViT, DistilBERT), without a GPU: what lightseq.compile reads
from their layers, what it refuses and why, what their attention masks mean as key padding, and
that a compiled model on CPU inputs is PyTorch's, bit for bit."""
import copy
import inspect

import pytest
import torch

import lightseq
from lightseq import _hf
from test_cpu_fallback import same_as_pytorch

transformers = pytest.importorskip("transformers")


def gpt2_config(**kw):
    args = dict(vocab_size=100, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.1, attn_pdrop=0.05,
                embd_pdrop=0.1, bos_token_id=0, eos_token_id=0)
    args.update(kw)
    return transformers.GPT2Config(**args)


def vit_config(**kw):
    args = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.05)
    args.update(kw)
    return transformers.ViTConfig(**args)


def test_gpt2_block_config_and_compile():
    model = transformers.GPT2Model(gpt2_config())
    fam, why = _hf.match(model.h[0])
    assert (fam.name, why) == ("GPT-2", "")
    c = fam.config(model.h[0])
    assert (c.hidden, c.heads, c.ffn, c.norm, c.activation, c.eps) == (64, 4, 256, "pre", "gelu_tanh", 1e-5)
    assert (c.dropout_attention, c.dropout_activation, c.dropout_hidden) == (0.05, 0.0, 0.1)
    lightseq.compile(model)
    text = lightseq.explain(model)
    assert text.count("(GPT2Block): compiled: encoder 64/4/256 pre-LN gelu_tanh") == 2, text
    assert type(model.h[1]).__name__ == "CompiledGPT2Block"


@pytest.mark.parametrize("kw,reason", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"scale_attn_weights": False}, "scale_attn_weights=False"),
    ({"activation_function": "silu"}, "activation_function 'silu'"),
    ({"n_embd": 60, "n_head": 6}, "hidden size 60"),
    ({"n_inner": 100}, "feed-forward size 100"),
])
def test_unsupported_gpt2_blocks_say_why(kw, reason):
    model = transformers.GPT2Model(gpt2_config(**kw))
    lightseq.compile(model)
    assert reason in lightseq.explain(model)
    assert type(model.h[0]).__name__ == "GPT2Block"


def test_a_gpt2_block_with_other_code_says_why():
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    class SquaredMLP(GPT2MLP):
        def forward(self, hidden_states):
            return super().forward(hidden_states) ** 2

    model = transformers.GPT2Model(gpt2_config())
    model.h[0].mlp = SquaredMLP(256, model.config)
    lightseq.compile(model)
    text = lightseq.explain(model)
    assert "h.0 (GPT2Block): not compiled: GPT2Block is shaped like GPT2Block, but its mlp (SquaredMLP) forward " \
           "is not GPT2MLP's code" in text, text
    assert "h.1 (GPT2Block): compiled" in text


def test_vit_layer_config_and_compile():
    model = transformers.ViTModel(vit_config(qkv_bias=False, hidden_act="gelu_new"), add_pooling_layer=False)
    fam, why = _hf.match(model.layers[0])
    assert (fam.name, why) == ("ViT", "")
    c = fam.config(model.layers[0])
    assert (c.hidden, c.heads, c.ffn, c.norm, c.activation, c.eps) == (64, 4, 128, "pre", "gelu_tanh", 1e-12)
    assert (c.dropout_attention, c.dropout_activation, c.dropout_hidden) == (0.05, 0.0, 0.1)
    weights = _hf.FAMILIES[2].weights(model.layers[0])
    assert torch.equal(weights["self_attn.in_proj_bias"], torch.zeros(192))  # qkv_bias=False
    lightseq.compile(model)
    assert lightseq.explain(model).count("(ViTLayer): compiled: encoder 64/4/128 pre-LN") == 2


def test_gpt2_weights_are_the_transposed_conv1d_weights():
    block = transformers.GPT2Model(gpt2_config()).h[0]
    w = _hf.FAMILIES[1].weights(block)
    assert torch.equal(w["self_attn.in_proj_weight"], block.attn.c_attn.weight.t())
    assert torch.equal(w["linear2.weight"], block.mlp.c_proj.weight.t())
    assert w["linear1.weight"].shape == (256, 64)


def masks_given_to_blocks(model, **kw):
    """The attention mask each GPT2Block is called with (bound by its forward's signature)."""
    seen = []
    sig = inspect.signature(type(model.h[0]).forward)

    def hook(module, args, kwargs):
        bound = sig.bind(module, *args, **kwargs)
        seen.append(bound.arguments.get("attention_mask"))

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in model.h]
    try:
        model(**kw)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["right", "left", "none"])
def test_gpt2_masks_mean_causal_plus_key_padding(impl, side):
    model = transformers.GPT2Model(gpt2_config(attn_implementation=impl))
    attn = torch.ones(3, 9, dtype=torch.long)
    if side == "right":
        attn[0, 6:] = 0
        attn[2, 2:] = 0
    elif side == "left":
        attn[1, :4] = 0
    masks = masks_given_to_blocks(model, input_ids=torch.randint(1, 100, (3, 9)), attention_mask=attn,
                                  use_cache=False)
    assert len(masks) == 2
    for mask in masks:
        pad = _hf._padding(model.h[0], mask, 3, 9, causal=True)
        if side == "none" and pad is None:
            continue  # sdpa: no mask at all, is_causal
        assert torch.equal(pad, attn == 0), (side, impl)


def test_masks_that_are_more_than_padding_are_refused():
    block = transformers.GPT2Model(gpt2_config()).h[0]
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    full = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    with pytest.raises(lightseq.Unsupported, match="not causal \\+ key padding"):
        _hf._padding(block, full, 2, 5, causal=True)  # bidirectional in a causal layer
    odd = causal.clone()
    odd[3, 1] = False  # one query does not see one earlier key
    with pytest.raises(lightseq.Unsupported, match="not causal \\+ key padding"):
        _hf._padding(block, odd.expand(2, 1, 5, 5), 2, 5, causal=True)
    assert _hf._padding(block, causal.expand(2, 1, 5, 5), 2, 5, causal=True).sum() == 0
    with pytest.raises(lightseq.ArgumentError, match="shape"):
        _hf._padding(block, causal, 2, 5, causal=True)
    # additive float masks: 0 = attend
    additive = torch.zeros(2, 1, 5, 5).masked_fill(~causal, torch.finfo(torch.float32).min)
    additive[1, :, :, 4] = torch.finfo(torch.float32).min
    assert _hf._padding(block, additive, 2, 5, causal=True).tolist() == [[False] * 5, [False] * 4 + [True]]


def test_gpt2_and_vit_on_cpu_are_pytorch():
    torch.manual_seed(3)
    reference = transformers.GPT2Model(gpt2_config())
    compiled = lightseq.compile(copy.deepcopy(reference))
    assert type(compiled.h[0]).__name__ == "CompiledGPT2Block"
    attn = torch.ones(2, 7, dtype=torch.long)
    attn[1, 5:] = 0
    same_as_pytorch(reference, compiled, torch.randint(0, 100, (2, 7)), attention_mask=attn, use_cache=False)
    reference = transformers.ViTModel(vit_config())
    compiled = lightseq.compile(copy.deepcopy(reference))
    same_as_pytorch(reference, compiled, torch.randn(2, 3, 32, 32))


def test_distilbert_block_config_compile_and_cpu():
    torch.manual_seed(4)
    cfg = transformers.DistilBertConfig(vocab_size=100, max_position_embeddings=64, dim=64, n_layers=2, n_heads=4,
                                        hidden_dim=128, dropout=0.1, attention_dropout=0.05)
    reference = transformers.DistilBertModel(cfg)
    block = reference.transformer.layer[0]
    fam, why = _hf.match(block)
    assert (fam.name, why) == ("DistilBERT", "")
    c = fam.config(block)
    assert (c.hidden, c.heads, c.ffn, c.norm, c.activation, c.eps) == (64, 4, 128, "post", "gelu", 1e-12)
    # no dropout after the attention's out_lin: a spec with attention_output 0
    assert c.dropouts() == (0.05, 0.0, 0.1, 0.0)
    assert c.spec(torch.float32)["layers"][0]["dropout"]["attention_output"] == 0.0
    compiled = lightseq.compile(copy.deepcopy(reference))
    assert lightseq.explain(compiled).count("(TransformerBlock): compiled") == 2
    assert "attention output 0" in lightseq.explain(compiled)
    attn = torch.ones(2, 7, dtype=torch.long)
    attn[0, 4:] = 0
    same_as_pytorch(reference, compiled, torch.randint(0, 100, (2, 7)), attention_mask=attn)
