"""The Hugging Face transformers layers lightseq compiles, family by family: BERT (and every layer
that runs BertLayer's code: RoBERTa, XLM-R, CamemBERT, ELECTRA, ...), GPT-2, ViT and DistilBERT.

A family is found by structure (the layer has the parts its layer class has) and proven by code:
the layer and each of its parts must run exactly the family's forward (compared as syntax trees,
so a family that copies the code, as transformers does with "Copied from", matches, and a subclass
that changes a forward does not and is explained). Each family says how its configuration reads
into an EncoderConfig, which of its parameters are the encoder graph's (nn.TransformerEncoderLayer's
names), and how a call's arguments (masks, caches) become a lightseq call or a PyTorch fallback."""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import operator
import textwrap
import weakref
from typing import Callable, Optional

import torch
from torch import nn

from . import _compile, _spec
from ._errors import ArgumentError, Unsupported
from ._spec import EncoderConfig

# transformers' activation names (config.hidden_act, activation_function) -> lightseq's.
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def _activation(name, what: str) -> str:
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        raise Unsupported(f"{what} {name!r} (lightseq compiles {', '.join(repr(n) for n in _ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _adjacent(parts) -> bool:
    """Whether tensors lie one after another in one storage, contiguous, of one dtype and device:
    then they are one tensor of their concatenation's shape."""
    first = parts[0]
    offset, storage = first.storage_offset(), first.untyped_storage().data_ptr()
    for p in parts:
        if (not p.is_contiguous() or p.dtype != first.dtype or p.device != first.device
                or p.shape[1:] != first.shape[1:] or p.storage_offset() != offset
                or p.untyped_storage().data_ptr() != storage):
            return False
        offset += p.numel()
    return True


class _Joined(torch.autograd.Function):
    """Tensors that lie one after another in one storage as one tensor, without a copy (what
    torch.cat would compute); the gradient goes back as views of the joined gradient."""

    @staticmethod
    def forward(ctx, *parts):
        ctx.sizes = [p.shape[0] for p in parts]
        first = parts[0]
        shape = (sum(ctx.sizes), *first.shape[1:])
        return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), shape, first.stride())

    @staticmethod
    def backward(ctx, grad):
        return tuple(grad.split(ctx.sizes))


def _joined(m: nn.Module, paths: tuple) -> torch.Tensor:
    """The concatenation of a layer's parameters `paths` (a Family.joined group): a view of their
    memory when they lie together (compile() laid them out so; a later .to()/.cuda() that moved
    them one by one is undone here, once), else torch.cat."""
    parts = [operator.attrgetter(p)(m) for p in paths]
    if torch.compiler.is_compiling():
        return torch.cat(parts)
    if not _adjacent(parts) and not (parts[0].is_cuda and torch.cuda.is_current_stream_capturing()):
        _lay_out(parts)  # not while a CUDA graph captures: the copy would be captured
    return _Joined.apply(*parts) if _adjacent(parts) else torch.cat(parts)


def _lay_out(parts) -> None:
    """Moves parameters into one buffer, one after another (the same Parameter objects, their values
    unchanged), unless one is missing or is a view into a larger buffer (an optimizer's flat arena,
    FSDP's flat parameters): moving it would detach it from that buffer."""
    if any(p is None or p.is_meta for p in parts) or _adjacent(parts):
        return
    if any(p.untyped_storage().nbytes() != p.numel() * p.element_size() or not p.is_contiguous()
           or p.dtype != parts[0].dtype or p.device != parts[0].device or p.shape[1:] != parts[0].shape[1:]
           for p in parts):
        return
    with torch.no_grad():
        packed = torch.cat([p.detach() for p in parts])
        for p, view in zip(parts, packed.split([p.shape[0] for p in parts])):
            p.data = view


def lay_out_joined(module: nn.Module, groups: tuple) -> None:
    """compile()'s part: each Family.joined group of `module` in one buffer (_lay_out), so that
    _joined passes it without a copy."""
    for paths in groups:
        _lay_out([operator.attrgetter(p)(module) for p in paths])


@dataclasses.dataclass(frozen=True)
class Family:
    """One family of transformers layers lightseq compiles."""

    name: str     # "BERT"
    module: str   # the transformers module of its classes
    # (attribute path, class name, methods): the layer ("") and the parts whose code must be the
    # family's own for the layer to compute its function.
    parts: tuple
    shape: tuple          # more attribute paths a layer of the family has (modules)
    config: Callable      # layer -> EncoderConfig, or Unsupported
    dropouts: Callable    # layer -> (attention, activation, hidden) probabilities, read per call
    weights: Callable     # layer -> {graph parameter name: tensor}
    call: Callable        # (layer, torch_forward, hidden_states, named arguments) -> output
    layer_note: str = ""  # for explain(): what else runs its code
    # Groups of parameters (attribute paths) that the graph takes as one tensor, concatenated in
    # this order (the query, key and value projections: its in_proj): compile() lays each group out
    # one after another in memory so that a call passes it without a copy (_joined).
    joined: tuple = ()


def _module(name: str):
    """A transformers module, or None when transformers (or that model) is not installed."""
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import problem means "this family is not available"
        return None


@functools.lru_cache(maxsize=None)
def _code(cls: type, method: str):
    """cls.<method>'s code with formatting, comments, decorators and its docstring left out (an AST
    dump), or None when its source cannot be read."""
    try:
        f = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, method)))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
        return None
    if not isinstance(f, ast.FunctionDef):
        return None
    f.decorator_list = []
    if f.body and isinstance(f.body[0], ast.Expr) and isinstance(f.body[0].value, ast.Constant) \
            and isinstance(f.body[0].value.value, str):
        f.body = f.body[1:]
    return ast.dump(f, annotate_fields=False)


def _part(m: nn.Module, path: str):
    for name in filter(None, path.split(".")):
        m = getattr(m, name, None)
        if not isinstance(m, nn.Module):
            return None
    return m


def match(m: nn.Module):
    """(family, "") for a layer that runs exactly a family's code; (family, why not) for one shaped
    like a family's layer that runs other code; None for any other module."""
    if type(m).__name__.startswith("Compiled"):
        return None
    for fam in FAMILIES:
        if any(_part(m, path) is None for path in [p for p, _, _ in fam.parts[1:]] + list(fam.shape)):
            continue
        mod = _module(fam.module)
        if mod is None:
            continue
        for path, cls_name, methods in fam.parts:
            part, theirs = _part(m, path), getattr(mod, cls_name)
            for method in methods:
                if getattr(type(part), method, None) is getattr(theirs, method):
                    continue  # the family's own (or inherited unchanged)
                code = _code(type(part), method)
                if code is None or code != _code(theirs, method):
                    where = f"its {path} ({type(part).__name__})" if path else "its own"
                    return fam, (f"{type(m).__name__} is shaped like {fam.parts[0][1]}, but {where} {method} is "
                                 f"not {cls_name}'s code, so lightseq cannot prove it computes the same function")
        return fam, ""
    return None


# ---- shared checks -------------------------------------------------------------------------------

def _conv1d(lin: nn.Module, what: str, out_features: int, in_features: int) -> None:
    """transformers' Conv1D (GPT-2): y = x @ weight + bias, weight [in, out]."""
    if type(lin).__name__ != "Conv1D" or getattr(lin, "bias", None) is None:
        raise Unsupported(f"{what} is a {type(lin).__name__}, not transformers' Conv1D with a bias")
    if tuple(lin.weight.shape) != (in_features, out_features):
        raise Unsupported(f"{what} is {tuple(lin.weight.shape)}, expected [{in_features}, {out_features}]")


def _scaling(attn: nn.Module, head_dim: int, what: str) -> None:
    scaling = getattr(attn, "scaling", head_dim ** -0.5)
    if abs(scaling - head_dim ** -0.5) > 1e-12 * head_dim ** -0.5:
        raise Unsupported(f"{what}.scaling is {scaling:g}; lightseq scales scores by 1/sqrt(head_dim) = "
                          f"{head_dim ** -0.5:g}")


def _eps(norms, what) -> float:
    eps = [_spec._layer_norm(ln, w) for ln, w in zip(norms, what)]
    if len(set(eps)) > 1:
        raise Unsupported(f"{_spec._and(what)} have different eps ({', '.join(f'{e:g}' for e in eps)})")
    return eps[0]


def _encoder(m, dropouts, *, hidden, heads, ffn, norm, activation, eps, names) -> EncoderConfig:
    p_attn, p_act, p_hidden, p_out = dropouts(m)
    _spec.check_sizes(hidden, heads, ffn)
    _spec._same_dtype_device(m)
    return EncoderConfig(hidden=hidden, heads=heads, ffn=ffn, norm=norm, activation=activation, eps=eps,
                         dropout_attention=p_attn, dropout_activation=p_act, dropout_hidden=p_hidden,
                         dropout_attention_output=p_out, names=names)


# ---- BERT ----------------------------------------------------------------------------------------

_BERT_NAMES = (("hidden", "attention.self.query.in_features"), ("heads", "attention.self.num_attention_heads"),
               ("ffn", "intermediate.dense.out_features"), ("eps", "attention.output.LayerNorm.eps"),
               ("dropout.attention", "attention.self.dropout.p"), ("dropout.hidden", "output.dropout.p"),
               ("dropout.attention_output", "attention.output.dropout.p"))


def _bert_dropouts(m: nn.Module) -> tuple:
    return (float(m.attention.self.dropout.p), 0.0,
            *_spec.hidden_dropouts(float(m.attention.output.dropout.p), float(m.output.dropout.p)))


def _bert_config(m: nn.Module) -> EncoderConfig:
    if getattr(m, "is_decoder", False) or getattr(m, "add_cross_attention", False):
        raise Unsupported("a decoder BertLayer (is_decoder / add_cross_attention)")
    sa = m.attention.self
    cfg = getattr(sa, "config", None)
    act = _activation(getattr(cfg, "hidden_act", None), "hidden_act")
    pos = getattr(cfg, "position_embedding_type", "absolute")
    if pos not in (None, "absolute"):
        raise Unsupported(f"position_embedding_type '{pos}' (relative positions change the attention scores)")
    hidden, heads = sa.query.in_features, sa.num_attention_heads
    if sa.all_head_size != hidden:
        raise Unsupported(f"attention size {sa.all_head_size} differs from hidden size {hidden}")
    for name in ("query", "key", "value"):
        _spec._linear(getattr(sa, name), f"attention.self.{name}", hidden, hidden)
    _spec._linear(m.attention.output.dense, "attention.output.dense", hidden, hidden)
    ffn = m.intermediate.dense.out_features
    _spec._linear(m.intermediate.dense, "intermediate.dense", ffn, hidden)
    _spec._linear(m.output.dense, "output.dense", hidden, ffn)
    _scaling(sa, hidden // heads, "attention.self")
    eps = _eps([m.attention.output.LayerNorm, m.output.LayerNorm], ["attention.output.LayerNorm", "output.LayerNorm"])
    return _encoder(m, _bert_dropouts, hidden=hidden, heads=heads, ffn=ffn, norm="post", activation=act, eps=eps,
                    names=_BERT_NAMES)


_BERT_JOINED = tuple(tuple(f"attention.self.{p}.{w}" for p in ("query", "key", "value")) for w in ("weight", "bias"))


def _bert_weights(m: nn.Module) -> dict:
    ao, out = m.attention.output, m.output
    return {"self_attn.in_proj_weight": _joined(m, _BERT_JOINED[0]),
            "self_attn.in_proj_bias": _joined(m, _BERT_JOINED[1]),
            "self_attn.out_proj.weight": ao.dense.weight, "self_attn.out_proj.bias": ao.dense.bias,
            "linear1.weight": m.intermediate.dense.weight, "linear1.bias": m.intermediate.dense.bias,
            "linear2.weight": out.dense.weight, "linear2.bias": out.dense.bias,
            "norm1.weight": ao.LayerNorm.weight, "norm1.bias": ao.LayerNorm.bias,
            "norm2.weight": out.LayerNorm.weight, "norm2.bias": out.LayerNorm.bias}


def _cache_of(named: dict):
    """The key/value cache argument, under any of the names transformers versions gave it."""
    for name in ("cache", "past_key_values", "past_key_value", "layer_past"):
        if named.get(name) is not None:
            return named[name]
    return None


def _bert_call(m, torch_forward, x, named):
    if named.get("encoder_hidden_states") is not None or _cache_of(named) is not None or \
            named.get("output_attentions"):
        return torch_forward("cross-attention, a key/value cache or output_attentions")
    return _encoder_call(m, torch_forward, x, named)


# ---- GPT-2 ---------------------------------------------------------------------------------------

_GPT2_NAMES = (("hidden", "attn.embed_dim"), ("heads", "attn.num_heads"), ("ffn", "mlp.c_fc.nf"),
               ("eps", "ln_1.eps"), ("dropout.attention", "attn.attn_dropout.p"),
               ("dropout.hidden", "mlp.dropout.p"), ("dropout.attention_output", "attn.resid_dropout.p"))


def _gpt2_dropouts(m: nn.Module) -> tuple:
    return (float(m.attn.attn_dropout.p), 0.0,
            *_spec.hidden_dropouts(float(m.attn.resid_dropout.p), float(m.mlp.dropout.p)))


def _gpt2_config(m: nn.Module) -> EncoderConfig:
    a = m.attn
    if getattr(a, "is_cross_attention", False):
        raise Unsupported("a cross-attention GPT2Attention")
    hidden, heads = a.embed_dim, a.num_heads
    if getattr(a, "scale_attn_by_inverse_layer_idx", False):
        raise Unsupported("scale_attn_by_inverse_layer_idx (scores scaled per layer)")
    if not getattr(a, "scale_attn_weights", True):
        raise Unsupported("scale_attn_weights=False (unscaled attention scores)")
    _scaling(a, hidden // heads, "attn")
    _conv1d(a.c_attn, "attn.c_attn", 3 * hidden, hidden)
    _conv1d(a.c_proj, "attn.c_proj", hidden, hidden)
    ffn = m.mlp.c_fc.weight.shape[1]
    _conv1d(m.mlp.c_fc, "mlp.c_fc", ffn, hidden)
    _conv1d(m.mlp.c_proj, "mlp.c_proj", hidden, ffn)
    act = _activation(getattr(a.config, "activation_function", None), "activation_function")
    eps = _eps([m.ln_1, m.ln_2], ["ln_1", "ln_2"])
    return _encoder(m, _gpt2_dropouts, hidden=hidden, heads=heads, ffn=ffn, norm="pre", activation=act, eps=eps,
                    names=_GPT2_NAMES)


def _gpt2_weights(m: nn.Module) -> dict:
    # Conv1D keeps weight as [in, out]: the encoder graph's nn.Linear layout is its transpose.
    a, mlp = m.attn, m.mlp
    return {"self_attn.in_proj_weight": a.c_attn.weight.t(), "self_attn.in_proj_bias": a.c_attn.bias,
            "self_attn.out_proj.weight": a.c_proj.weight.t(), "self_attn.out_proj.bias": a.c_proj.bias,
            "linear1.weight": mlp.c_fc.weight.t(), "linear1.bias": mlp.c_fc.bias,
            "linear2.weight": mlp.c_proj.weight.t(), "linear2.bias": mlp.c_proj.bias,
            "norm1.weight": m.ln_1.weight, "norm1.bias": m.ln_1.bias,
            "norm2.weight": m.ln_2.weight, "norm2.bias": m.ln_2.bias}


def _gpt2_call(m, torch_forward, x, named):
    if named.get("encoder_hidden_states") is not None or named.get("output_attentions"):
        return torch_forward("cross-attention or output_attentions")
    cache = _cache_of(named)
    if cache is not None:
        layer = getattr(m.attn, "layer_idx", 0) or 0
        try:
            past = cache.get_seq_length(layer)
        except Exception:  # noqa: BLE001 - an unknown cache object: leave it to PyTorch
            past = None
        if not m.training or past != 0:
            return torch_forward("a key/value cache (generation); training calls and use_cache=False run "
                                 "lightseq")
        _compile._warn(m, "a training call with use_cache=True: lightseq does not fill the returned "
                              "key/value cache for this layer (pass use_cache=False to the model, or set "
                              "model.config.use_cache = False)")
    pad = _padding(m, named.get("attention_mask"), x.shape[0], x.shape[1], causal=True)
    return _compile.run_encoder(m, x, pad, causal=True, torch_forward=torch_forward)


# ---- ViT -----------------------------------------------------------------------------------------

_VIT_NAMES = (("hidden", "attention.q_proj.in_features"), ("heads", "attention.num_attention_heads"),
              ("ffn", "mlp.fc1.out_features"), ("eps", "layernorm_before.eps"),
              ("dropout.attention", "attention.attention_dropout"), ("dropout.hidden", "dropout.p"))


def _vit_dropouts(m: nn.Module) -> tuple:
    return float(m.attention.attention_dropout), 0.0, float(m.dropout.p), None  # one dropout module for both


def _vit_linear_qkv(lin: nn.Module, what: str, hidden: int) -> None:
    if not isinstance(lin, nn.Linear) or (lin.out_features, lin.in_features) != (hidden, hidden):
        raise Unsupported(f"{what} is not an nn.Linear {hidden}->{hidden}")


def _vit_config(m: nn.Module) -> EncoderConfig:
    a = m.attention
    hidden, heads = a.q_proj.in_features, a.num_attention_heads
    if a.head_dim * heads != hidden:
        raise Unsupported(f"attention size {a.head_dim * heads} differs from hidden size {hidden}")
    for name in ("q_proj", "k_proj", "v_proj"):
        _vit_linear_qkv(getattr(a, name), f"attention.{name}", hidden)
    if len({getattr(a, n).bias is None for n in ("q_proj", "k_proj", "v_proj")}) > 1:
        raise Unsupported("some of attention.q_proj/k_proj/v_proj have a bias and some not")
    _spec._linear(a.o_proj, "attention.o_proj", hidden, hidden)
    if getattr(a, "is_causal", False):
        raise Unsupported("a causal ViTAttention")
    _scaling(a, a.head_dim, "attention")
    ffn = m.mlp.fc1.out_features
    _spec._linear(m.mlp.fc1, "mlp.fc1", ffn, hidden)
    _spec._linear(m.mlp.fc2, "mlp.fc2", hidden, ffn)
    act = _activation(getattr(m.mlp.config, "hidden_act", None), "hidden_act")
    eps = _eps([m.layernorm_before, m.layernorm_after], ["layernorm_before", "layernorm_after"])
    return _encoder(m, _vit_dropouts, hidden=hidden, heads=heads, ffn=ffn, norm="pre", activation=act, eps=eps,
                    names=_VIT_NAMES)


_VIT_JOINED = tuple(tuple(f"attention.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj")) for w in ("weight", "bias"))


def _vit_weights(m: nn.Module) -> dict:
    a = m.attention
    q = a.q_proj
    # qkv_bias=False: the graph's bias is zeros (a constant: no gradient flows into a parameter)
    bias = torch.zeros(3 * q.out_features, dtype=q.weight.dtype, device=q.weight.device) if q.bias is None \
        else _joined(m, _VIT_JOINED[1])
    return {"self_attn.in_proj_weight": _joined(m, _VIT_JOINED[0]), "self_attn.in_proj_bias": bias,
            "self_attn.out_proj.weight": a.o_proj.weight, "self_attn.out_proj.bias": a.o_proj.bias,
            "linear1.weight": m.mlp.fc1.weight, "linear1.bias": m.mlp.fc1.bias,
            "linear2.weight": m.mlp.fc2.weight, "linear2.bias": m.mlp.fc2.bias,
            "norm1.weight": m.layernorm_before.weight, "norm1.bias": m.layernorm_before.bias,
            "norm2.weight": m.layernorm_after.weight, "norm2.bias": m.layernorm_after.bias}


def _encoder_call(m, torch_forward, x, named):
    """A bidirectional encoder layer's call: the attention mask as key padding."""
    if named.get("output_attentions"):
        return torch_forward("output_attentions")
    pad = _padding(m, named.get("attention_mask"), x.shape[0], x.shape[1], causal=False)
    return _compile.run_encoder(m, x, pad, causal=False, torch_forward=torch_forward)


# ---- DistilBERT ----------------------------------------------------------------------------------

_DISTILBERT_NAMES = (("hidden", "attention.dim"), ("heads", "attention.n_heads"), ("ffn", "ffn.lin1.out_features"),
                     ("eps", "sa_layer_norm.eps"), ("dropout.attention", "attention.dropout.p"),
                     ("dropout.hidden", "ffn.dropout.p"))


def _distilbert_dropouts(m: nn.Module) -> tuple:
    # no dropout after the attention's out_lin: the attention output's probability is 0
    return float(m.attention.dropout.p), 0.0, *_spec.hidden_dropouts(0.0, float(m.ffn.dropout.p))


def _distilbert_config(m: nn.Module) -> EncoderConfig:
    a = m.attention
    hidden, heads = a.dim, a.n_heads
    for name in ("q_lin", "k_lin", "v_lin", "out_lin"):
        _spec._linear(getattr(a, name), f"attention.{name}", hidden, hidden)
    if getattr(a, "is_causal", False):
        raise Unsupported("a causal DistilBertSelfAttention")
    _scaling(a, hidden // heads, "attention")
    ffn = m.ffn.lin1.out_features
    _spec._linear(m.ffn.lin1, "ffn.lin1", ffn, hidden)
    _spec._linear(m.ffn.lin2, "ffn.lin2", hidden, ffn)
    act = _activation(getattr(a.config, "activation", None), "activation")
    eps = _eps([m.sa_layer_norm, m.output_layer_norm], ["sa_layer_norm", "output_layer_norm"])
    return _encoder(m, _distilbert_dropouts, hidden=hidden, heads=heads, ffn=ffn, norm="post", activation=act,
                    eps=eps, names=_DISTILBERT_NAMES)


_DISTILBERT_JOINED = tuple(tuple(f"attention.{p}.{w}" for p in ("q_lin", "k_lin", "v_lin")) for w in ("weight", "bias"))


def _distilbert_weights(m: nn.Module) -> dict:
    a, f = m.attention, m.ffn
    return {"self_attn.in_proj_weight": _joined(m, _DISTILBERT_JOINED[0]),
            "self_attn.in_proj_bias": _joined(m, _DISTILBERT_JOINED[1]),
            "self_attn.out_proj.weight": a.out_lin.weight, "self_attn.out_proj.bias": a.out_lin.bias,
            "linear1.weight": f.lin1.weight, "linear1.bias": f.lin1.bias,
            "linear2.weight": f.lin2.weight, "linear2.bias": f.lin2.bias,
            "norm1.weight": m.sa_layer_norm.weight, "norm1.bias": m.sa_layer_norm.bias,
            "norm2.weight": m.output_layer_norm.weight, "norm2.bias": m.output_layer_norm.bias}


# ---- masks ---------------------------------------------------------------------------------------

# A 4-D mask checked once (one synchronizing comparison) serves every layer a model's forward
# passes it to: (a weak reference to the last mask checked, its version counter, causal, the
# padding it was found to mean).
_checked = (lambda: None, -1, False, None)


def _padding(m, mask, batch: int, seq: int, *, causal: bool):
    """The key padding (bool [B, T], True = pad) that a transformers attention mask means, on top
    of causal attention when `causal`: None (no mask), [B, T] (1 = attend), or [B or 1, 1, T or 1,
    T] (bool, True = attend, or additive float, 0 = attend). A mask that is more than key padding
    (and, for GPT-2, the causal mask) raises Unsupported (the call runs PyTorch); a mask of the
    wrong shape ArgumentError. Rows of padding queries are not
    compared: their outputs are not defined by a padding mask."""
    where = _compile._where(m)
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise Unsupported(f"an attention mask of type {type(mask).__name__}")
    if mask.dim() == 2:
        if tuple(mask.shape) != (batch, seq):
            raise ArgumentError(f"{where}: the attention mask has shape {tuple(mask.shape)}; expected "
                                f"[{batch}, {seq}]")
        return (mask == 0).contiguous()
    if mask.dim() != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] != 1 or mask.shape[-1] != seq \
            or mask.shape[2] not in (1, seq):
        raise ArgumentError(f"{where}: the attention mask has shape {tuple(mask.shape)}; expected "
                            f"[{batch}, 1, {seq} or 1, {seq}]")
    keep = mask if mask.dtype == torch.bool else mask == 0
    last = keep[:, 0, -1, :].expand(batch, seq)  # the last query sees every key it may
    if torch.compiler.is_compiling():
        return (~last).contiguous()
    global _checked
    ref, version, was_causal, pad = _checked
    if ref() is mask and version == mask._version and was_causal == causal:
        return pad
    want = last[:, None, None, :]
    if causal:
        want = want & torch.ones(seq, seq, dtype=torch.bool, device=mask.device).tril()
    if keep.shape[2] == 1 and causal:
        raise Unsupported("a padding mask without the causal part in a causal layer")
    # one synchronizing check: rows of real (non-padding) queries must be padding (& causal) only
    real = last[:, None, :, None]
    if not bool(((keep == want) | ~real).all()):
        raise Unsupported("an attention mask that is not " + ("causal + " if causal else "") + "key padding "
                          "(the same keys masked for every query)")
    pad = (~last).contiguous()
    _checked = (weakref.ref(mask), mask._version, causal, pad)
    return pad


# ---- the families --------------------------------------------------------------------------------

FAMILIES = (
    Family("BERT", "transformers.models.bert.modeling_bert",
           (("", "BertLayer", ("forward",)), ("attention", "BertAttention", ("forward",)),
            ("attention.self", "BertSelfAttention", ("forward",)),
            ("attention.output", "BertSelfOutput", ("forward",)),
            ("intermediate", "BertIntermediate", ("forward",)), ("output", "BertOutput", ("forward",))),
           (), _bert_config, _bert_dropouts, _bert_weights, _bert_call,
           "RobertaLayer, XLMRobertaLayer, CamembertLayer, ElectraLayer, ...", _BERT_JOINED),
    Family("GPT-2", "transformers.models.gpt2.modeling_gpt2",
           (("", "GPT2Block", ("forward",)), ("attn", "GPT2Attention", ("forward",)),
            ("mlp", "GPT2MLP", ("forward",))),
           ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), _gpt2_config, _gpt2_dropouts, _gpt2_weights, _gpt2_call),
    Family("ViT", "transformers.models.vit.modeling_vit",
           (("", "ViTLayer", ("forward",)), ("attention", "ViTAttention", ("forward",)),
            ("mlp", "ViTMLP", ("forward",))),
           ("layernorm_before", "layernorm_after", "attention.q_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2"),
           _vit_config, _vit_dropouts, _vit_weights, _encoder_call, joined=_VIT_JOINED),
    Family("DistilBERT", "transformers.models.distilbert.modeling_distilbert",
           (("", "TransformerBlock", ("forward",)), ("attention", "DistilBertSelfAttention", ("forward",)),
            ("ffn", "FFN", ("forward", "ff_chunk"))),
           ("sa_layer_norm", "output_layer_norm", "attention.q_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"),
           _distilbert_config, _distilbert_dropouts, _distilbert_weights, _encoder_call, joined=_DISTILBERT_JOINED),
)


def known_layers() -> str:
    """For explain(): the transformers layers lightseq knows."""
    return ", ".join(f.parts[0][1] + (f" (and {f.layer_note})" if f.layer_note else "") for f in FAMILIES)


_classes: dict = {}  # a layer class -> its compiled subclass


def compiled_class(base: type, fam: Family) -> type:
    """The compiled subclass of a family's layer class: its forward binds the call's arguments by
    the base forward's signature (their names changed across transformers versions), runs lightseq
    or, with one warning per reason, the base forward exactly as called."""
    if base in _classes:
        return _classes[base]
    signature = inspect.signature(base.forward)
    var_kw = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    def forward(self, hidden_states, *args, **kwargs):
        def torch_forward(reason):
            if reason:
                _compile._fallback(self, reason)
            return base.forward(self, hidden_states, *args, **kwargs)

        if _compile._runs_pytorch(hidden_states):
            return torch_forward(None)
        try:
            bound = signature.bind(self, hidden_states, *args, **kwargs)
        except TypeError:
            return torch_forward(None)  # PyTorch's forward raises its own error
        named = dict(bound.arguments)
        named.update(named.pop(var_kw, None) or {})
        try:
            return fam.call(self, torch_forward, hidden_states, named)
        except Unsupported as why:  # a mask that is more than padding (and causal)
            return torch_forward(f"{why} (lightseq masks key padding{' and causal attention' if fam.name == 'GPT-2' else ''})")

    cls = _compile.compiled_subclass(
        base, f"A transformers {base.__name__} running lightseq's kernels (same parameters).",
        {"forward": forward, "_weights": lambda self: fam.weights(self),
         "_dropouts": lambda self: fam.dropouts(self),
         "_lay_out_joined": lambda self: lay_out_joined(self, fam.joined)}, _restore, (base, fam.name))
    _classes[base] = cls
    return cls


def _restore(base: type, family: str) -> nn.Module:
    """An empty compiled layer of `base` (unpickling; its state follows)."""
    fam = next(f for f in FAMILIES if f.name == family)
    return object.__new__(compiled_class(base, fam))


def extract(module: nn.Module) -> Optional[tuple]:
    """(compiled class, EncoderConfig) of a transformers layer lightseq can compile; Unsupported
    with the reason for one it cannot; None for other modules."""
    found = match(module)
    if found is None:
        return None
    fam, why = found
    if why:
        raise Unsupported(why)
    return compiled_class(type(module), fam), fam.config(module)
