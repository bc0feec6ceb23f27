"""What lightseq compiles a module into: an encoder- or decoder-layer configuration read off a
PyTorch module, or the reason it cannot be compiled. Pure Python (no GPU, no extension needed)."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._errors import ArgumentTypeError, Unsupported, a_type

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """One encoder layer (the layer of BERT and of nn.TransformerEncoderLayer)."""

    hidden: int
    heads: int
    ffn: int
    norm: str  # "pre" | "post"
    activation: str  # "relu" | "gelu" (erf form) | "gelu_tanh" (tanh approximation)
    eps: float
    dropout_attention: float
    dropout_activation: float
    dropout_hidden: float
    # the attention sublayers' output dropout where it differs from dropout_hidden (the FFN's)
    dropout_attention_output: Optional[float] = None
    # (spec field, the PyTorch attribute it comes from), e.g. ("eps", "norm1.eps"): issues of the
    # generated spec are reported in the module's terms (torch_issues).
    names: tuple = dataclasses.field(default=(), compare=False, repr=False)

    def describe(self) -> str:
        return (f"encoder {self.hidden}/{self.heads}/{self.ffn} {self.norm}-LN {self.activation}, "
                f"eps {self.eps:g}, dropout attention {self.dropout_attention:g} / activation "
                f"{self.dropout_activation:g} / hidden {self.dropout_hidden:g}"
                + ("" if self.dropout_attention_output is None
                   else f" / attention output {self.dropout_attention_output:g}"))

    def dropouts(self) -> tuple:
        """(attention, activation, hidden, attention output or None): what _dropouts() of a compiled
        layer returns."""
        return (self.dropout_attention, self.dropout_activation, self.dropout_hidden, self.dropout_attention_output)

    def with_dropouts(self, p: tuple) -> "EncoderConfig":
        return dataclasses.replace(self, dropout_attention=p[0], dropout_activation=p[1], dropout_hidden=p[2],
                                   dropout_attention_output=p[3])

    def probabilities(self, training: bool) -> tuple:
        """The run-time probabilities of the sites: attention, activation, hidden, embedding (none in
        a layer), attention output."""
        if not training:
            return (0.0,) * 5
        out = self.dropout_hidden if self.dropout_attention_output is None else self.dropout_attention_output
        return (self.dropout_attention, self.dropout_activation, self.dropout_hidden, 0.0, out)

    def fused_attention_refusal(self, dtype: torch.dtype) -> str:
        """Why this layer's attention cannot run fused in `dtype` ("" when it can): the fused
        kernels' limits (docs/spec.md, "attention")."""
        if dtype == torch.float32:
            return "the fused attention runs fp16 and bf16"
        head_dim = self.hidden // self.heads
        if head_dim % 16 or head_dim > 128:
            return f"head_dim {head_dim} (the fused attention takes 16..128 by 16)"
        return ""

    def spec(self, dtype: torch.dtype, *, causal: bool = False, dropout_on: bool = True,
             attention: str = "unfused") -> dict:
        """The JSON model spec of one layer of this configuration. Dropout sites are compiled in
        only where `dropout_on` and the probability is non-zero (eval mode compiles none).
        attention "fused" runs the fused attention kernels where they can (fp16/bf16 and their
        head dims; elsewhere unfused); "auto" lets the compiler choose per call by its lengths
        (compiler/planner/attention_backend.h; unfused alone where the fused kernels cannot run)."""
        def p(v: float) -> float:
            return v if dropout_on else 0.0

        dropout = {"attention": p(self.dropout_attention), "activation": p(self.dropout_activation),
                   "hidden": p(self.dropout_hidden)}
        if self.dropout_attention_output is not None:
            dropout["attention_output"] = p(self.dropout_attention_output)
        layer = {
            "type": "encoder",
            "count": 1,
            "hidden": self.hidden,
            "heads": self.heads,
            "ffn": self.ffn,
            "activation": self.activation,
            "norm": self.norm,
            "eps": self.eps,
            "dropout": dropout,
        }
        if causal:
            layer["causal"] = True
        if attention == "fused" and not self.fused_attention_refusal(dtype):
            layer["attention"] = "fused"
        elif attention == "auto":
            layer["attention"] = "auto"
        return {"name": "torch-encoder-layer", "precision": dtype_name(dtype), "layers": [layer]}


@dataclasses.dataclass(frozen=True)
class DecoderConfig(EncoderConfig):
    """One decoder layer (nn.TransformerDecoderLayer): causal self-attention, cross-attention over
    the encoder output, feed-forward. Both attentions share the attention dropout."""

    def describe(self) -> str:
        return "decoder" + super().describe()[len("encoder"):]

    def spec(self, dtype: torch.dtype, *, causal: bool = True, dropout_on: bool = True,
             attention: str = "unfused") -> dict:
        """The JSON model spec: the decoder stack after an encoder stack of the same sizes (a spec's
        decoder needs one before it; its kernels are a subset of the decoder's, so it costs no
        extra compilation). A decoder's self-attention is always causal."""
        if not causal:
            raise Unsupported("a decoder layer without a causal self-attention mask")
        enc = super().spec(dtype, dropout_on=dropout_on, attention=attention)
        decoder = dict(enc["layers"][0], type="decoder")
        return {"name": "torch-decoder-layer", "precision": enc["precision"], "layers": [enc["layers"][0], decoder]}


_TORCH_NAMES = (("hidden", "self_attn.embed_dim"), ("heads", "self_attn.num_heads"),
                ("ffn", "linear1.out_features"), ("eps", "norm1.eps"), ("dropout.attention", "self_attn.dropout"),
                ("dropout.activation", "dropout.p"), ("dropout.hidden", "dropout2.p"),
                ("dropout.attention_output", "dropout1.p"))


def torch_issues(config: EncoderConfig, issues, module_name: str) -> list:
    """The compiler's issues with a layer's generated spec, [(path, value, message)] as
    lightseq._C.spec_issues gives them, in the module's terms: ("layers[0].eps", "0.0", "...")
    becomes "encoder.layers.0.norm1.eps = 0.0: ..." for the module named encoder.layers.0. A
    decoder's spec repeats its configuration in two stacks: each issue is reported once."""
    names = dict(config.names)
    prefix = f"{module_name}." if module_name else ""
    out = []
    for path, value, message in issues:
        stack, _, field = path.partition("].")
        where = prefix + names[field] if stack.startswith("layers[") and field in names else path
        line = f"{where} = {value}: {message}"
        if line not in out:
            out.append(line)
    return out


def dtype_name(dtype: torch.dtype) -> str:
    if not isinstance(dtype, torch.dtype):
        raise ArgumentTypeError(f"dtype {dtype!r} is {a_type(dtype)}, not a torch.dtype; pass "
                                "torch.float32, torch.float16 or torch.bfloat16")
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise Unsupported(f"dtype {dtype} (lightseq runs float32, float16 and bfloat16)") from None


def spec_json(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def check_sizes(hidden: int, heads: int, ffn: int) -> None:
    """The size rules of the spec (docs/spec.md), checked here too so that explain() works without
    the extension."""
    if hidden % 8 or not 8 <= hidden <= 65536:
        raise Unsupported(f"hidden size {hidden} (lightseq needs a multiple of 8 in 8..65536)")
    if heads < 1 or hidden % heads:
        raise Unsupported(f"{heads} heads do not divide hidden size {hidden}")
    head_dim = hidden // heads
    if head_dim % 8 or head_dim > 256:
        raise Unsupported(f"head dimension {head_dim} (lightseq needs a multiple of 8, at most 256)")
    if ffn % 8 or not 8 <= ffn <= 262144:
        raise Unsupported(f"feed-forward size {ffn} (lightseq needs a multiple of 8 in 8..262144)")


def _activation_name(act) -> str:
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return "gelu_tanh"
    raise Unsupported(f"activation {act!r} (lightseq compiles relu, gelu and gelu with approximate='tanh')")


def _layer_norm(ln: nn.Module, what: str) -> float:
    if not isinstance(ln, nn.LayerNorm):
        raise Unsupported(f"{what} is a {type(ln).__name__}, not nn.LayerNorm")
    if ln.weight is None or ln.bias is None:
        raise Unsupported(f"{what} has no affine weight or bias (elementwise_affine/bias off)")
    if tuple(ln.normalized_shape) != (ln.weight.shape[0],) or ln.weight.dim() != 1:
        raise Unsupported(f"{what} normalizes over {tuple(ln.normalized_shape)}, not the last dimension")
    return float(ln.eps)


def _linear(lin: nn.Module, what: str, out_features: int, in_features: int) -> None:
    if not isinstance(lin, nn.Linear):
        raise Unsupported(f"{what} is a {type(lin).__name__}, not nn.Linear")
    if lin.bias is None:
        raise Unsupported(f"{what} has no bias")
    if (lin.out_features, lin.in_features) != (out_features, in_features):
        raise Unsupported(f"{what} is {lin.in_features}->{lin.out_features}, expected {in_features}->{out_features}")


def _same_dtype_device(module: nn.Module) -> None:
    params = list(module.parameters())
    dtypes = {p.dtype for p in params}
    if len(dtypes) > 1:
        raise Unsupported(f"its parameters mix dtypes {sorted(str(d) for d in dtypes)}")
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise Unsupported(f"its parameters are on several devices {sorted(str(d) for d in devices)}")
    if params:
        dtype_name(params[0].dtype)


def _attention(attn: nn.Module, what: str):
    """(hidden, heads, dropout) of an nn.MultiheadAttention lightseq can run, or Unsupported."""
    if not isinstance(attn, nn.MultiheadAttention):
        raise Unsupported(f"{what} is a {type(attn).__name__}, not nn.MultiheadAttention")
    if not getattr(attn, "_qkv_same_embed_dim", True) or attn.in_proj_weight is None:
        raise Unsupported(f"{what} has separate key/value dimensions (kdim/vdim)")
    if attn.in_proj_bias is None:
        raise Unsupported(f"{what} has no in_proj bias (bias=False)")
    if attn.bias_k is not None or attn.bias_v is not None:
        raise Unsupported(f"{what} has add_bias_kv=True")
    if attn.add_zero_attn:
        raise Unsupported(f"{what} has add_zero_attn=True")
    if attn.out_proj.bias is None:
        raise Unsupported(f"{what}.out_proj has no bias (bias=False)")
    return attn.embed_dim, attn.num_heads, float(attn.dropout)


def _and(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _feed_forward_and_norms(m: nn.Module, hidden: int, norms) -> tuple:
    """(ffn, activation, eps) of a torch Transformer layer's linear1/linear2 and its LayerNorms
    `norms`, or Unsupported."""
    ffn = m.linear1.out_features
    _linear(m.linear1, "linear1", ffn, hidden)
    _linear(m.linear2, "linear2", hidden, ffn)
    eps = [_layer_norm(getattr(m, n), n) for n in norms]
    if len(set(eps)) > 1:
        raise Unsupported(f"{_and(norms)} have different eps ({', '.join(f'{e:g}' for e in eps)})")
    return ffn, _activation_name(m.activation), eps[0]


def _one(values, names, kind: str) -> float:
    if len(set(values)) > 1:
        raise Unsupported(f"{_and(names)} differ ({', '.join(f'{p:g}' for p in values)}): lightseq has one "
                          f"{kind} dropout")
    return values[0]


def hidden_dropouts(attention_output: float, ffn_output: float) -> tuple:
    """(hidden, attention output or None) of a layer whose attention sublayers' outputs drop with
    probability `attention_output` and whose FFN's output with `ffn_output`: one hidden dropout
    where they agree (the spec then needs no attention_output)."""
    return ffn_output, (None if attention_output == ffn_output else attention_output)


def torch_layer_dropouts(m: nn.Module) -> tuple:
    """(attention, activation, hidden, attention output or None) dropout probabilities of a
    torch.nn.TransformerEncoderLayer or TransformerDecoderLayer, read from its modules (a compiled
    layer reads them at every training call: they may change after compiling); Unsupported when
    a decoder's two attentions, or their two output dropouts, differ: lightseq has one of each."""
    if isinstance(m, nn.TransformerDecoderLayer):
        p_self, p_cross = float(m.self_attn.dropout), float(m.multihead_attn.dropout)
        if p_self != p_cross:
            raise Unsupported(f"self_attn and multihead_attn have different dropouts ({p_self:g}, {p_cross:g}): "
                              "lightseq has one attention dropout")
        p_out = _one([float(m.dropout1.p), float(m.dropout2.p)], ("dropout1", "dropout2"), "attention output")
        return (p_self, float(m.dropout.p), *hidden_dropouts(p_out, float(m.dropout3.p)))
    return (float(m.self_attn.dropout), float(m.dropout.p), *hidden_dropouts(float(m.dropout1.p), float(m.dropout2.p)))


def from_torch_encoder_layer(m: nn.TransformerEncoderLayer) -> EncoderConfig:
    """The configuration of a torch.nn.TransformerEncoderLayer, or Unsupported."""
    hidden, heads, _ = _attention(m.self_attn, "self_attn")
    ffn, act, eps = _feed_forward_and_norms(m, hidden, ("norm1", "norm2"))
    p_attn, p_act, p_hidden, p_out = torch_layer_dropouts(m)
    check_sizes(hidden, heads, ffn)
    _same_dtype_device(m)
    return EncoderConfig(hidden=hidden, heads=heads, ffn=ffn, norm="pre" if m.norm_first else "post",
                         activation=act, eps=eps, dropout_attention=p_attn, dropout_activation=p_act,
                         dropout_hidden=p_hidden, dropout_attention_output=p_out, names=_TORCH_NAMES)


def from_torch_decoder_layer(m: nn.TransformerDecoderLayer) -> DecoderConfig:
    """The configuration of a torch.nn.TransformerDecoderLayer, or Unsupported."""
    hidden, heads, _ = _attention(m.self_attn, "self_attn")
    hidden2, heads2, _ = _attention(m.multihead_attn, "multihead_attn")
    if (hidden2, heads2) != (hidden, heads):
        raise Unsupported(f"multihead_attn is {hidden2}/{heads2} heads, self_attn {hidden}/{heads}")
    p_attn, p_act, p_hidden, p_out = torch_layer_dropouts(m)
    ffn, act, eps = _feed_forward_and_norms(m, hidden, ("norm1", "norm2", "norm3"))
    check_sizes(hidden, heads, ffn)
    _same_dtype_device(m)
    return DecoderConfig(hidden=hidden, heads=heads, ffn=ffn, norm="pre" if m.norm_first else "post",
                         activation=act, eps=eps, dropout_attention=p_attn, dropout_activation=p_act,
                         dropout_hidden=p_hidden, dropout_attention_output=p_out, names=_TORCH_NAMES)
