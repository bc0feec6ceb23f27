"""lightseq.nn.Embedding: a Transformer's input embedding (token lookup × scale + positions
[+ token types] [+ LayerNorm] + dropout) as one compiled layer: the spec's `embedding` section
(docs/spec.md), run through the generic layer op pair (lightseq::layer_fwd / layer_bwd), with a
deterministic backward (no float atomics: repeated tokens sum in row order).

Its parameters are ordinary submodules named as the layer graph names them (embed_tokens.weight,
embed_positions.weight, embed_token_types.weight, layernorm.weight/bias), so optimizers,
state_dicts and weight tying (`lm_head.weight = emb.embed_tokens.weight`) work as with
nn.Embedding. On CPU tensors it runs the same function in PyTorch."""
from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from typing import Optional

import torch
from torch import nn

from . import _native, _ops, _spec
from ._flags import ErrorFlags
from ._errors import ArgumentError, ArgumentTypeError, Error, SpecError, Unsupported, a_type



@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
    """The spec's embedding section, as lightseq.nn.Embedding was built."""

    vocab: int
    hidden: int
    padding_idx: Optional[int]
    positions: str
    positions_from: str
    max_positions: int
    token_types: int
    layernorm: bool
    eps: float
    scale: float
    padding_rows: str

    def describe(self) -> str:
        return (f"embedding {self.vocab}×{self.hidden}, {self.positions} positions from {self.positions_from} "
                f"(max {self.max_positions})"
                + (f", {self.token_types} token types" if self.token_types else "")
                + (", LayerNorm" if self.layernorm else "")
                + (f", padding {self.padding_idx} {self.padding_rows}" if self.padding_idx is not None else ""))

    def issues(self, dtype: torch.dtype) -> list:
        """What the compiler refuses in this embedding's spec ("embedding.hidden = 12: ..."); [] when
        it is valid or the extension is not built (the first CUDA call then says so)."""
        try:
            C = _native.extension()
        except Error:
            return []
        return [f"{p} = {v}: {m}" for p, v, m in C.spec_issues(_spec.spec_json(self.spec(dtype, 0.5)))]

    def spec(self, dtype: torch.dtype, dropout: float) -> dict:
        e = {"vocab": self.vocab, "hidden": self.hidden, "positions": self.positions,
             "positions_from": self.positions_from, "max_positions": self.max_positions,
             "padding_idx": -1 if self.padding_idx is None else self.padding_idx,
             "scale": self.scale, "dropout": dropout, "token_types": self.token_types,
             "layernorm": self.layernorm, "layernorm_eps": self.eps}
        if self.padding_idx is not None and self.padding_rows != "zero":
            e["padding_rows"] = self.padding_rows
        return {"name": "lightseq-embedding", "precision": _spec.dtype_name(dtype), "embedding": e}


def sinusoidal_table(rows: int, hidden: int, device=None) -> torch.Tensor:
    """fairseq's SinusoidalPositionalEmbedding table (float32 [rows, hidden]): sin in the first
    half, cos in the second, frequencies exp(-k·ln(10000)/(hidden/2 - 1))."""
    half = hidden // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -(math.log(10000.0) / (half - 1)))
    angle = torch.arange(rows, dtype=torch.float32, device=device)[:, None] * freq[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


class Embedding(nn.Module):
    """Token embedding × `scale` + positions (+ token types) (+ LayerNorm) + dropout, compiled by
    lightseq; forward(tokens [B, T] int64, token_types=None) -> [B, T, hidden].

    positions: "learned" (a table of max_positions rows, `embed_positions`) or "sinusoidal"
    (fairseq's, computed). positions_from: "index" (0, 1, ...: BERT, GPT-2) or "tokens"
    (fairseq's and RoBERTa's: padding_idx + the count of non-padding tokens so far, padding_idx
    for a padding token). padding_rows: what the padding token (padding_idx) embeds to:
    "embedded" (nn.Embedding, BERT, RoBERTa: like any token; its table row, and with positions
    from tokens the padding position's row, get no gradient) or "zero" (fairseq: zero rows).

        emb = lightseq.nn.Embedding.bert(30522, 768).cuda()            # BERT's embeddings
        emb = lightseq.nn.Embedding.fairseq(32000, 512, padding_idx=1)  # Transformer (fairseq)
        emb = lightseq.nn.Embedding.gpt2(50257, 768)                     # GPT-2's wte + wpe

    Tokens outside [0, vocab) (and positions past max_positions, types outside [0, token_types))
    give zero rows on the GPU and are reported by a lightseq.ArgumentError at a later call (the
    check reads a flag copied to the host without synchronizing) or at once by check_tokens()."""

    def __init__(self, vocab: int, hidden: int, *, padding_idx: Optional[int] = None,
                 positions: str = "learned", max_positions: int = 512, positions_from: str = "index",
                 token_types: int = 0, layernorm: bool = False, eps: float = 1e-5, scale: float = 1.0,
                 dropout: float = 0.0, padding_rows: str = "embedded", cache_dir: Optional[str] = None,
                 device=None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        for name, v in (("vocab", vocab), ("hidden", hidden), ("max_positions", max_positions),
                        ("token_types", token_types)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ArgumentTypeError(f"lightseq.nn.Embedding: {name} is {a_type(v)}, not an int")
        for name, value in (("positions", positions), ("positions_from", positions_from),
                            ("padding_rows", padding_rows)):
            _native.check_choice("lightseq.nn.Embedding", name, value, f"embedding.{name}")
        if dtype is not None:
            _spec.dtype_name(dtype)  # raises for a dtype lightseq does not run
        if padding_idx is not None and padding_idx < 0:
            padding_idx += vocab  # as nn.Embedding counts it
        if padding_idx is not None and not 0 <= padding_idx < vocab:
            raise ArgumentError(f"lightseq.nn.Embedding: padding_idx must be in [-vocab, vocab) = [{-vocab}, {vocab}), "
                                f"got {padding_idx - vocab if padding_idx < 0 else padding_idx}")
        self.config = EmbeddingConfig(vocab, hidden, padding_idx, positions, positions_from, max_positions,
                                      token_types, bool(layernorm), float(eps), float(scale), padding_rows)
        self.cache_dir = cache_dir
        kw = {"device": device, "dtype": dtype}
        self.embed_tokens = nn.Embedding(vocab, hidden, padding_idx=padding_idx, **kw)
        if positions == "learned":
            # Counted positions give padding tokens position padding_idx, whose row gets no
            # gradient (fairseq's LearnedPositionalEmbedding, RoBERTa's position_embeddings).
            counted = positions_from == "tokens" and padding_idx is not None
            self.embed_positions = nn.Embedding(max_positions, hidden,
                                                padding_idx=padding_idx if counted else None, **kw)
        if token_types > 0:
            self.embed_token_types = nn.Embedding(token_types, hidden, **kw)
        if layernorm:
            self.layernorm = nn.LayerNorm(hidden, eps=eps, **kw)
        self.dropout = nn.Dropout(dropout)
        self._bad = ErrorFlags()  # earlier calls' bad-token flags, read without synchronizing
        self._check_spec(dtype or torch.get_default_dtype())

    # ---- presets ---------------------------------------------------------------------------------
    @classmethod
    def bert(cls, vocab: int = 30522, hidden: int = 768, *, max_positions: int = 512, token_types: int = 2,
             padding_idx: Optional[int] = 0, eps: float = 1e-12, dropout: float = 0.1, **kw) -> "Embedding":
        """BERT's embeddings (word + learned position + token type, LayerNorm, dropout)."""
        return cls(vocab, hidden, padding_idx=padding_idx, positions="learned", max_positions=max_positions,
                   token_types=token_types, layernorm=True, eps=eps, dropout=dropout, **kw)

    @classmethod
    def roberta(cls, vocab: int = 50265, hidden: int = 768, *, max_positions: int = 514, padding_idx: int = 1,
                eps: float = 1e-5, dropout: float = 0.1, token_types: int = 1, **kw) -> "Embedding":
        """RoBERTa's embeddings: BERT's with positions counted from padding_idx + 1."""
        return cls(vocab, hidden, padding_idx=padding_idx, positions="learned", positions_from="tokens",
                   max_positions=max_positions, token_types=token_types, layernorm=True, eps=eps,
                   dropout=dropout, **kw)

    @classmethod
    def gpt2(cls, vocab: int = 50257, hidden: int = 768, *, max_positions: int = 1024, dropout: float = 0.1,
             **kw) -> "Embedding":
        """GPT-2's wte + wpe + dropout."""
        return cls(vocab, hidden, positions="learned", max_positions=max_positions, dropout=dropout, **kw)

    @classmethod
    def fairseq(cls, vocab: int, hidden: int, *, padding_idx: int = 1, max_positions: int = 1024,
                dropout: float = 0.1, learned: bool = False, **kw) -> "Embedding":
        """fairseq's Transformer embedding: tokens × √hidden + sinusoidal (or learned) positions
        counted over the non-padding tokens, zero rows for padding, dropout."""
        return cls(vocab, hidden, padding_idx=padding_idx, positions="learned" if learned else "sinusoidal",
                   positions_from="tokens", max_positions=max_positions, scale=math.sqrt(hidden),
                   dropout=dropout, padding_rows="zero", **kw)

    # ---- what the compiler checks ----------------------------------------------------------------
    def _check_spec(self, dtype: torch.dtype) -> None:
        issues = self.config.issues(dtype)
        if issues:
            raise SpecError("lightseq.nn.Embedding: " + "; ".join(issues))

    def extra_repr(self) -> str:
        c = self.config
        return (f"{c.vocab}, {c.hidden}, padding_idx={c.padding_idx}, positions={c.positions!r} "
                f"(from {c.positions_from!r}, max {c.max_positions}), token_types={c.token_types}, "
                f"layernorm={c.layernorm}, scale={c.scale:g}, padding_rows={c.padding_rows!r}")

    # ---- forward ---------------------------------------------------------------------------------
    def _weights(self) -> dict:
        return _ops.parameters_by_name(self)  # the layer graph's parameter names

    def _check_inputs(self, tokens, token_types):
        if not isinstance(tokens, torch.Tensor):
            raise ArgumentTypeError(f"lightseq.nn.Embedding: tokens is {a_type(tokens)}, not a tensor")
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ArgumentError(f"lightseq.nn.Embedding: tokens must be a [batch, seq] integer tensor, got "
                                f"{tokens.dtype} of shape {tuple(tokens.shape)}")
        if token_types is not None:
            if self.config.token_types == 0:
                raise ArgumentError("lightseq.nn.Embedding: token_types given to an embedding without a "
                                    "token-type table (build it with token_types=N)")
            if not isinstance(token_types, torch.Tensor) or token_types.shape != tokens.shape:
                raise ArgumentError("lightseq.nn.Embedding: token_types must be a tensor of the tokens' shape "
                                    f"{tuple(tokens.shape)}")
            if token_types.device != tokens.device:
                raise ArgumentError(f"lightseq.nn.Embedding: token_types is on {token_types.device}, the "
                                    f"tokens on {tokens.device}")

    def forward(self, tokens: torch.Tensor, token_types: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_inputs(tokens, token_types)
        if tokens.device.type != "cuda":
            return self.torch_forward(tokens, token_types)
        p = self.dropout.p if self.training else 0.0
        if not 0.0 <= p < 1.0:
            warnings.warn(f"lightseq.nn.Embedding: dropout probability {p} (lightseq takes [0, 1)); these "
                          "calls run PyTorch's implementation", stacklevel=2)
            return self.torch_forward(tokens, token_types)
        return run(self.config, self._weights(), tokens, token_types, p, self.embed_tokens.weight.dtype,
                   self.cache_dir, self._bad, "lightseq.nn.Embedding")

    def check_tokens(self) -> None:
        """Waits for the calls so far and raises lightseq.ArgumentError if one had a bad token."""
        self._bad.check(bad_token_message(self.config, "lightseq.nn.Embedding"), wait=True)

    # ---- PyTorch's implementation (CPU inputs; the reference of the tests) ------------------------
    def positions_of(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.positions_from == "index":
            return torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        mask = (tokens != c.padding_idx).long()
        return torch.cumsum(mask, dim=1) * mask + c.padding_idx

    def torch_forward(self, tokens: torch.Tensor, token_types: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The same function in PyTorch (what CPU inputs run)."""
        c = self.config
        tokens = tokens.long()
        pos = self.positions_of(tokens)
        if (tokens < 0).any() or (tokens >= c.vocab).any() or (pos >= c.max_positions).any():
            raise ArgumentError(f"lightseq.nn.Embedding: a token id outside [0, {c.vocab}) or a position "
                                f"at or past max_positions {c.max_positions}")
        x = self.embed_tokens(tokens) * c.scale
        if c.positions == "learned":
            x = x + self.embed_positions(pos)
        else:
            x = x + sinusoidal_table(c.max_positions, c.hidden, tokens.device)[pos].to(x.dtype)
        if c.token_types > 0:
            types = torch.zeros_like(tokens) if token_types is None else token_types.long()
            x = x + self.embed_token_types(types)
        if c.layernorm:
            x = self.layernorm(x)
        x = self.dropout(x)
        if c.padding_idx is not None and c.padding_rows == "zero":
            x = x.masked_fill((tokens == c.padding_idx)[..., None], 0.0)
        return x


def bad_token_message(c: EmbeddingConfig, where: str) -> str:
    return (f"{where}: an earlier call had a token id outside [0, {c.vocab}), a position at or past "
            f"max_positions {c.max_positions}"
            + (f" or a token type outside [0, {c.token_types})" if c.token_types else "")
            + "; its rows were zero. Check the tokenizer's vocabulary and the sequence lengths "
            "(check_tokens() after each call finds the call)")


def run(c: EmbeddingConfig, weights: dict, tokens: torch.Tensor, token_types: Optional[torch.Tensor], p: float,
        param_dtype: torch.dtype, cache_dir: Optional[str], bad: ErrorFlags, where: str) -> torch.Tensor:
    """The compiled embedding on CUDA tokens [B, T] (weights by the layer graph's names): [B, T,
    hidden] in the autocast dtype under autocast, else the parameters' dtype."""
    bad.check(bad_token_message(c, where))
    dtype = _ops.run_dtype(param_dtype)
    lid = _layer_for(_spec.spec_json(c.spec(dtype, p)), _ops.device_index(tokens), cache_dir)
    named = {n: w.to(dtype) for n, w in weights.items()}
    named["tokens"] = tokens.long().contiguous()
    if token_types is not None:
        named["token_types"] = token_types.long().contiguous()
    batch, seq = tokens.shape
    out = _ops.run_layer(lid, named, (batch, seq, 0), (0.0, 0.0, 0.0, p, 0.0))
    bad.watch(out["bad_token"])
    y = next(v for k, v in out.items() if k not in ("bad_token", "padding_mask"))
    return y.view(batch, seq, c.hidden)


@_native.assume_constant_result
def _layer_for(spec_json: str, device: int, cache_dir: Optional[str]) -> int:
    return _ops.layer_id(spec_json, device, cache_dir, "embedding")


# ---- transformers' embeddings, swapped in place by lightseq.compile -------------------------------

# (module, class, where positions come from): the embeddings lightseq proves and compiles, and the
# classes that run their code (CamembertEmbeddings, XLMRobertaEmbeddings, ...: checked by their
# forward's code, not by name).
_HF = (("transformers.models.bert.modeling_bert", "BertEmbeddings", "index"),
       ("transformers.models.roberta.modeling_roberta", "RobertaEmbeddings", "tokens"))
# lightseq's parameter names -> transformers'
HF_NAMES = {"embed_tokens.weight": "word_embeddings.weight", "embed_positions.weight": "position_embeddings.weight",
            "embed_token_types.weight": "token_type_embeddings.weight", "layernorm.weight": "LayerNorm.weight",
            "layernorm.bias": "LayerNorm.bias"}


class EmbeddingState:
    """What a compiled transformers embedding knows beyond its module (picklable)."""

    def __init__(self, config: EmbeddingConfig, cache_dir: Optional[str], dtype: Optional[torch.dtype] = None):
        self.config, self.cache_dir, self.dtype = config, cache_dir, dtype  # dtype: lightseq.compile's
        self.bad = ErrorFlags()

    def __getstate__(self):
        return {"config": self.config, "cache_dir": self.cache_dir, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__init__(state["config"], state["cache_dir"], state.get("dtype"))


def _hf_family(module: nn.Module):
    """(transformers class, positions_from) when `module` runs the code of an embedding lightseq
    compiles; Unsupported with the reason when it is shaped like one and runs other code; None."""
    from . import _hf
    parts = ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm", "dropout")
    if type(module).__name__.startswith("Compiled") or not all(
            isinstance(getattr(module, p, None), nn.Module) for p in parts):
        return None
    for mod_name, cls_name, positions_from in _HF:
        mod = _hf._module(mod_name)
        theirs = getattr(mod, cls_name, None) if mod is not None else None
        if theirs is None:
            continue
        methods = ["forward"] + (["create_position_ids_from_input_ids"] if positions_from == "tokens" else [])
        if all(getattr(type(module), m, None) is getattr(theirs, m, None)
               or (_hf._code(type(module), m) is not None and _hf._code(type(module), m) == _hf._code(theirs, m))
               for m in methods):
            return theirs, positions_from
    names = " or ".join(f"{c}'s" for _, c, _ in _HF)
    raise Unsupported(f"{type(module).__name__} is shaped like a BERT embedding, but its code is not {names}, "
                      "so lightseq cannot prove it computes the same function")


def hf_config(module: nn.Module, positions_from: str) -> EmbeddingConfig:
    """The EmbeddingConfig of a transformers BERT/RoBERTa embedding; Unsupported where it is not
    one lightseq computes."""
    we, pe, te, ln = module.word_embeddings, module.position_embeddings, module.token_type_embeddings, module.LayerNorm
    for name, e in (("word_embeddings", we), ("position_embeddings", pe), ("token_type_embeddings", te)):
        if type(e) is not nn.Embedding or e.max_norm is not None or e.scale_grad_by_freq or e.sparse:
            raise Unsupported(f"its {name} is not a plain nn.Embedding (max_norm, scale_grad_by_freq or sparse)")
    # Which rows get no gradient: the padding token's, and with counted positions the padding
    # position's; any other padding_idx is a rule lightseq does not apply.
    if te.padding_idx is not None or (positions_from == "index" and pe.padding_idx is not None):
        raise Unsupported("its token_type_embeddings (or, with positions from the index, its position_embeddings) "
                          "has a padding_idx: a row without gradient lightseq would train")
    if type(ln) is not nn.LayerNorm or ln.weight is None or ln.bias is None or ln.normalized_shape != (we.embedding_dim,):
        raise Unsupported("its LayerNorm is not an affine nn.LayerNorm over the hidden size")
    if getattr(module, "position_embedding_type", "absolute") != "absolute":
        raise Unsupported(f"position_embedding_type {module.position_embedding_type!r} (lightseq: absolute)")
    if pe.embedding_dim != we.embedding_dim or te.embedding_dim != we.embedding_dim:
        raise Unsupported("its tables have different widths")
    if positions_from == "index":
        pid = getattr(module, "position_ids", None)
        if not isinstance(pid, torch.Tensor) or not torch.equal(
                pid.reshape(-1).cpu(), torch.arange(pid.numel())):
            raise Unsupported("its position_ids buffer is not 0, 1, 2, ...")
        padding_idx = we.padding_idx
    else:
        padding_idx = module.padding_idx
        if we.padding_idx != padding_idx or pe.padding_idx != padding_idx:
            raise Unsupported("its tables' padding_idx differ from its own")
    return EmbeddingConfig(we.num_embeddings, we.embedding_dim, padding_idx, "learned", positions_from,
                           pe.num_embeddings, te.num_embeddings, True, float(ln.eps), 1.0, "embedded")


_classes: dict = {}


def compiled_hf_class(base: type) -> type:
    """The compiled subclass of a transformers embedding class: its forward runs lightseq for
    input_ids on a CUDA device (no position_ids, inputs_embeds or cache length), the base forward
    otherwise."""
    if base in _classes:
        return _classes[base]
    from . import _compile
    signature = inspect.signature(base.forward)

    def forward(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        a = bound.arguments
        ids, types = a.get("input_ids"), a.get("token_type_ids")
        cache = a.get("cache_length", a.get("past_key_values_length", 0))
        p = self.dropout.p if self.training else 0.0
        if (not isinstance(ids, torch.Tensor) or ids.device.type != "cuda" or a.get("position_ids") is not None
                or a.get("inputs_embeds") is not None or cache not in (0, None) or not 0.0 <= p < 1.0
                or ids.dim() != 2):
            return base.forward(self, *args, **kwargs)
        state: EmbeddingState = getattr(self, _compile._STATE)
        weights = {mine: self.get_parameter(theirs) for mine, theirs in HF_NAMES.items()}
        param_dtype = self.word_embeddings.weight.dtype
        y = run(state.config, weights, ids, types, p, getattr(state, "dtype", None) or param_dtype,
                state.cache_dir, state.bad, f"lightseq-compiled {base.__name__}")
        # transformers' LayerNorm runs in float32 under autocast: so does its output here
        return y.float() if torch.is_autocast_enabled("cuda") and param_dtype == torch.float32 else y

    def check_tokens(self):
        state = getattr(self, _compile._STATE)
        state.bad.check(bad_token_message(state.config, f"lightseq-compiled {base.__name__}"), wait=True)

    cls = _compile.compiled_subclass(
        base, f"A transformers {base.__name__} running lightseq's embedding kernels.",
        {"forward": forward, "check_tokens": check_tokens}, _restore, (base,))
    _classes[base] = cls
    return cls


def _restore(base: type) -> nn.Module:
    """An empty compiled embedding of `base` (unpickling; its state follows)."""
    return object.__new__(compiled_hf_class(base))


def extract_hf(module: nn.Module):
    """(compiled class, EmbeddingConfig) of a transformers embedding lightseq compiles, Unsupported
    with the reason for one it cannot, None for other modules."""
    found = _hf_family(module)  # raises Unsupported for one shaped like it running other code
    if found is None:
        return None
    theirs, positions_from = found
    return compiled_hf_class(type(module)), hf_config(module, positions_from)
