"""lightseq.compile(model): swaps every supported layer for a compiled one in place.

A compiled layer is the same module object with its class changed to a subclass whose forward
runs lightseq's kernels: its parameters, buffers, hooks, state_dict keys and submodules are the
ones it had, so optimizers, DDP, load_state_dict and gradient clipping keep working, and
copy.deepcopy copies it. Anything lightseq cannot compile stays as it was; explain(model) says
what was replaced and, for the rest, why not."""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from . import _embedding, _hf, _loss, _native, _ops, _spec
from ._errors import ArgumentError, ArgumentTypeError, Error, Unsupported, a_type
from ._spec import DecoderConfig, EncoderConfig

_STATE = "_lightseq"  # attribute of a compiled layer: its _LayerState


class _LayerState:
    """What a compiled layer knows beyond its PyTorch module: its configuration, the dtype it was
    compiled for and the cache directory. Picklable and deep-copyable."""

    def __init__(self, config: EncoderConfig, dtype: torch.dtype, cache_dir: Optional[str],
                 attention: str = "unfused"):
        self.config, self.dtype, self.cache_dir, self.attention = config, dtype, cache_dir, attention
        self.warned = set()  # the fallback reasons already warned about
        # Every spec a call can need, made here: a forward only looks one up (json.dumps inside a
        # forward would break torch.compile's graph).
        causal_options = (True,) if isinstance(config, DecoderConfig) else (False, True)
        self.specs = {(d, causal, training): _spec.spec_json(config.spec(d, causal=causal, dropout_on=training,
                                                                         attention=attention))
                      for d in (torch.float32, torch.float16, torch.bfloat16)
                      for causal in causal_options for training in (False, True)}


def _compiler_issues(state: _LayerState, module_name: str) -> list:
    """What the compiler rejects in a layer's spec (the training variant: every dropout on), in the
    module's terms ("encoder.layers.0.norm1.eps = 0.0: must be ..."); [] when it is valid or the
    extension is not built (the first call then says so)."""
    try:
        C = _native.extension()
    except Error:
        return []
    causal = isinstance(state.config, DecoderConfig)
    return _spec.torch_issues(state.config, C.spec_issues(state.specs[(state.dtype, causal, True)]), module_name)


@_native.assume_constant_result
def _layer_for(spec_json: str, device: int, cache_dir: Optional[str]) -> int:
    return _ops.layer_id(spec_json, device, cache_dir)


def compiled_subclass(base: type, doc: str, attrs: dict, restore, restore_args: tuple) -> type:
    """The compiled subclass "Compiled<base>" of a transformers class (attrs: its forward and
    helpers), reachable as lightseq._compile.Compiled<base>, and pickled as restore(*restore_args)
    plus its state: a process that never called lightseq.compile rebuilds the class."""
    name = "Compiled" + base.__name__
    cls = type(name, (base,), {"__doc__": doc, "__module__": __name__, "__qualname__": name, **attrs,
                               "__reduce_ex__": lambda self, protocol: (restore, restore_args,
                                                                        self.__getstate__())})
    globals()[name] = cls
    return cls


def _base_name(module: nn.Module) -> str:
    """The name of the PyTorch/transformers class a compiled layer was (or derives from)."""
    for cls in type(module).__mro__:
        if not cls.__module__.startswith("lightseq"):
            return cls.__name__
    return type(module).__name__


def _where(module: nn.Module) -> str:
    return f"lightseq-compiled {_base_name(module)}"


def _warn(module: nn.Module, message: str, stacklevel: int = 3) -> None:
    """Warns once per layer and message."""
    state = getattr(module, _STATE)
    if not isinstance(state.warned, set):  # a layer pickled before per-reason warnings kept a bool here
        state.warned = set()
    if message not in state.warned:
        state.warned.add(message)
        warnings.warn(f"{_where(module)}: {message}", stacklevel=stacklevel + 1)


def _fallback(module: nn.Module, reason: str) -> None:
    """Warns once per layer and reason that a call runs PyTorch's implementation."""
    _warn(module, f"{reason}; these calls run PyTorch's implementation", stacklevel=4)


def _check_input(module: nn.Module, x: torch.Tensor, state: _LayerState, what: str = "the input") -> torch.dtype:
    """The dtype to run in; raises for input lightseq cannot take."""
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{_where(module)}: {what} is {a_type(x)}, not a tensor")
    if x.device.type != "cuda":
        raise ArgumentError(f"{_where(module)}: {what} is on {x.device}; lightseq runs on CUDA devices "
                         "(move the model and its inputs with .cuda())")
    if x.dim() != 3 or x.shape[-1] != state.config.hidden:
        raise ArgumentError(f"{_where(module)}: {what} has shape {tuple(x.shape)}; expected 3 dimensions "
                         f"with hidden size {state.config.hidden} last")
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    if x.dtype != state.dtype:
        raise ArgumentTypeError(f"{_where(module)}: {what} is {x.dtype} but the layer was compiled for "
                        f"{state.dtype}; pass {state.dtype} inputs, run under torch.autocast, or "
                        f"compile with lightseq.compile(model, dtype={state.dtype})")
    return state.dtype


def _runs_pytorch(x) -> bool:
    """True for a tensor on a device other than CUDA (CPU, for evaluation and debugging): the layer
    runs PyTorch's implementation on it, with the same parameters."""
    return isinstance(x, torch.Tensor) and x.device.type != "cuda"


def _call_state(module: nn.Module):
    """(the layer's state for this call, None), or (None, why) when the call must run PyTorch's
    implementation. A training call reads the dropout probabilities from the module's dropout
    modules, as PyTorch's forward does (they may change after compiling: layer.dropout.p = 0): when
    they differ from the compiled ones the layer is specialized anew (kernels come from the cache);
    when lightseq cannot take them (p = 1, or two dropouts of one kind now differ), PyTorch runs."""
    state: _LayerState = getattr(module, _STATE)
    if not module.training:
        return state, None
    cfg = state.config
    try:
        p = module._dropouts()
    except Unsupported as why:
        return None, f"its dropouts changed after compiling: {why}"
    if p == cfg.dropouts():
        return state, None
    changed = _LayerState(cfg.with_dropouts(p), state.dtype, state.cache_dir, getattr(state, "attention", "unfused"))
    issues = _compiler_issues(changed, "")
    if issues:
        return None, "its dropouts changed after compiling: " + "; ".join(issues)
    changed.warned = state.warned
    setattr(module, _STATE, changed)
    return changed, None


def _key_padding(module, mask: Optional[torch.Tensor], batch: int, seq: int, device,
                 what: str = "the padding mask") -> Optional[torch.Tensor]:
    """A [B, T] padding mask (bool, True = pad; or float, 0 = keep, -inf = pad) as a contiguous bool
    tensor, which the kernels read as bytes (nonzero = pad): no conversion kernel, and nothing
    for Inductor to lower (a bool->uint8 view is not lowerable)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ArgumentTypeError(f"{_where(module)}: {what} is {a_type(mask)}, not a tensor")
    if tuple(mask.shape) != (batch, seq):
        raise ArgumentError(f"{_where(module)}: {what} has shape {tuple(mask.shape)}; expected "
                         f"[batch, seq] = [{batch}, {seq}]")
    if mask.device != device:
        raise ArgumentError(f"{_where(module)}: {what} is on {mask.device}, the input on {device}")
    if mask.dtype == torch.bool:
        return mask.contiguous()
    if mask.is_floating_point():
        if not torch.compiler.is_compiling():
            # One synchronizing check: lightseq masks keys, it cannot add arbitrary biases.
            if not bool(((mask == 0) | (mask == float("-inf"))).all()):
                raise ArgumentError(f"{_where(module)}: {what} is a float padding mask with values other "
                                 "than 0 (keep) and -inf (pad); pass a bool mask (True = pad) instead")
        return mask != 0
    raise ArgumentTypeError(f"{_where(module)}: {what} is {mask.dtype}; pass a bool mask (True = pad)")


def _dense(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype, contiguous, with one copy at most: a cast writes the contiguous layout itself
    (a transposed weight, GPT-2's Conv1D, under autocast); `.to` of the same dtype keeps strides,
    so `.contiguous()` then copies (or not, when already dense)."""
    if t.dtype == dtype and t.is_contiguous():
        return t
    return t.to(dtype, memory_format=torch.contiguous_format).contiguous()


def _prepare(module: nn.Module, state: _LayerState, x: torch.Tensor, weights, run_dtype: torch.dtype,
             causal: bool):
    """(layer id, dropout probabilities, x and weights in the run dtype) of one call."""
    cfg = state.config
    training = module.training
    device = _ops.device_index(x)
    lid = _layer_for(state.specs[(run_dtype, causal, training)], device, state.cache_dir)
    p = cfg.probabilities(training)
    return lid, p, _dense(x, run_dtype), {n: _dense(w, run_dtype) for n, w in weights.items()}


def _run(module: nn.Module, state: _LayerState, x: torch.Tensor, pad: Optional[torch.Tensor], weights,
         run_dtype: torch.dtype, causal: bool) -> torch.Tensor:
    """The compiled encoder layer on x [B, T, H]; weights by the layer's parameter names
    (nn.TransformerEncoderLayer's)."""
    lid, p, x, ws = _prepare(module, state, x, weights, run_dtype, causal)
    batch, seq, hidden = x.shape
    out = _ops.run_layer(lid, {"x": x.view(batch * seq, hidden), "key_padding_mask": pad, **ws}, (batch, seq, 0), p)
    return out["y"].view(batch, seq, hidden)


def run_encoder(module: nn.Module, x: torch.Tensor, pad: Optional[torch.Tensor], *, causal: bool, torch_forward):
    """A compiled encoder-graph layer (module._weights() by the graph's names) on x [B, T, H], or
    torch_forward(why) when this call must run PyTorch's implementation."""
    state, why = _call_state(module)
    if why:
        return torch_forward(why)
    run_dtype = _check_input(module, x, state)
    return _run(module, state, x, pad, module._weights(), run_dtype, causal)


def _causal_or_none(mask, is_causal: bool, seq: int) -> Optional[bool]:
    """Whether an attention mask (or is_causal) asks for causal attention: True/False, or None for
    a mask lightseq cannot compile (neither absent nor causal)."""
    if mask is None and not is_causal:
        return False
    if is_causal:
        return True
    if torch.compiler.is_compiling():
        return None  # cannot look at the values while tracing: pass is_causal=True
    from torch.nn.modules.transformer import _detect_is_causal_mask
    return True if _detect_is_causal_mask(mask, None, seq) else None


# ---- torch.nn.TransformerEncoderLayer ------------------------------------------------------------

class CompiledTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """A torch.nn.TransformerEncoderLayer running lightseq's kernels (same parameters)."""

    def _weights(self):
        return _ops.parameters_by_name(self)  # the layer graph's parameter names

    def _dropouts(self):
        return _spec.torch_layer_dropouts(self)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        if _runs_pytorch(src):
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        if isinstance(src, torch.Tensor) and src.is_nested:
            _fallback(self, "nested-tensor input (PyTorch's inference fast path)")
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        state, why = _call_state(self)
        if why:
            _fallback(self, why)
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        run_dtype = _check_input(self, src, state)
        batch_first = self.self_attn.batch_first
        x = src if batch_first else src.transpose(0, 1)
        batch, seq = x.shape[0], x.shape[1]
        causal = _causal_or_none(src_mask, is_causal, seq)
        if causal is None:
            _fallback(self, "an attention mask that is not causal (lightseq masks padding and "
                            "causal attention only)")
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        pad = _key_padding(self, src_key_padding_mask, batch, seq, src.device)
        y = _run(self, state, x, pad, self._weights(), run_dtype, causal)
        return y if batch_first else y.transpose(0, 1)


class CompiledTransformerEncoder(nn.TransformerEncoder):
    """nn.TransformerEncoder whose layers are compiled: it hands them the padding mask as given
    (PyTorch's own forward first turns a bool mask into a float one)."""

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        if (not isinstance(src, torch.Tensor) or src.is_nested or
                not all(isinstance(m, CompiledTransformerEncoderLayer) for m in self.layers)):
            return super().forward(src, mask, src_key_padding_mask, is_causal)
        out = src
        for layer in self.layers:
            out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        if self.norm is not None:
            out = self.norm(out)
        return out


# ---- torch.nn.TransformerDecoderLayer ------------------------------------------------------------

class CompiledTransformerDecoderLayer(nn.TransformerDecoderLayer):
    """A torch.nn.TransformerDecoderLayer running lightseq's kernels (same parameters). Its
    self-attention must be causal (tgt_is_causal=True or a causal tgt_mask, as nn.Transformer's
    decoders use); other masks run PyTorch's implementation, with a warning."""

    def _weights(self):
        return _ops.parameters_by_name(self)  # the layer graph's parameter names

    def _dropouts(self):
        return _spec.torch_layer_dropouts(self)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        def torch_forward(reason):
            if reason:
                _fallback(self, reason)
            mask = tgt_mask
            if tgt_is_causal and mask is None and isinstance(tgt, torch.Tensor) and not tgt.is_nested:
                # lightseq takes tgt_is_causal alone; PyTorch's layer needs the mask with the hint
                seq = tgt.shape[1] if tgt.dim() == 3 and self.self_attn.batch_first else tgt.shape[0]
                mask = nn.Transformer.generate_square_subsequent_mask(seq, device=tgt.device, dtype=tgt.dtype)
            return super(CompiledTransformerDecoderLayer, self).forward(
                tgt, memory, mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                tgt_is_causal, memory_is_causal)

        if _runs_pytorch(tgt):
            return torch_forward(None)
        if any(isinstance(t, torch.Tensor) and t.is_nested for t in (tgt, memory)):
            return torch_forward("nested-tensor input")
        state, why = _call_state(self)
        if why:
            return torch_forward(why)
        if memory_mask is not None or memory_is_causal:
            return torch_forward("a memory (cross-attention) mask other than memory_key_padding_mask")
        run_dtype = _check_input(self, tgt, state, "the target (tgt)")
        _check_input(self, memory, state, "the memory")
        batch_first = self.self_attn.batch_first
        x = tgt if batch_first else tgt.transpose(0, 1)
        mem = memory if batch_first else memory.transpose(0, 1)
        batch, seq, src_seq = x.shape[0], x.shape[1], mem.shape[1]
        if mem.shape[0] != batch:
            raise ArgumentError(f"{_where(self)}: the memory has batch {mem.shape[0]}, the target {batch}")
        if mem.device != x.device:
            raise ArgumentError(f"{_where(self)}: the memory is on {mem.device}, the target on {x.device}")
        if not _causal_or_none(tgt_mask, bool(tgt_is_causal), seq):
            return torch_forward("a self-attention that is not causal (lightseq's decoder layer is causal: "
                                 "pass tgt_is_causal=True or a causal tgt_mask)")
        pad = _key_padding(self, tgt_key_padding_mask, batch, seq, x.device, "tgt_key_padding_mask")
        mem_pad = _key_padding(self, memory_key_padding_mask, batch, src_seq, x.device, "memory_key_padding_mask")
        lid, p, x, ws = _prepare(self, state, x, self._weights(), run_dtype, True)
        hidden = x.shape[2]
        mem = _dense(mem, run_dtype)
        out = _ops.run_layer(lid, {"x": x.view(batch * seq, hidden), "key_padding_mask": pad,
                                   "encoder_out": mem.view(batch * src_seq, hidden),
                                   "encoder_padding_mask": mem_pad, **ws}, (batch, seq, src_seq), p)
        y = out["y"].view(batch, seq, hidden)
        return y if batch_first else y.transpose(0, 1)


# ---- compile / explain ---------------------------------------------------------------------------

def _extract(module: nn.Module):
    """(compiled class, EncoderConfig) for a module lightseq can compile; Unsupported otherwise;
    None for modules that are not layers lightseq knows."""
    if isinstance(module, nn.TransformerEncoderLayer):
        return CompiledTransformerEncoderLayer, _spec.from_torch_encoder_layer(module)
    if isinstance(module, nn.TransformerDecoderLayer):
        return CompiledTransformerDecoderLayer, _spec.from_torch_decoder_layer(module)
    found = _hf.extract(module)  # transformers' layers: BERT and the layers that run its code, GPT-2, ViT
    return found if found is not None else _embedding.extract_hf(module)  # BERT's and RoBERTa's embeddings


def _param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


# What every compiled layer does beyond its configuration, said by explain().
_CALL_NOTE = ("; on CUDA inputs; inputs on another device (CPU) run PyTorch's implementation with the "
              "same parameters; dropout probabilities are read at each training call")




def _attention_note(config: EncoderConfig, dtype: torch.dtype, attention: str) -> str:
    """What explain() says of a layer's attention backend."""
    if attention == "auto":
        why = config.fused_attention_refusal(torch.bfloat16)
        if why:
            return f"; attention unfused: {why}"
        return ("; attention chosen per call by its lengths: fused up to the measured limit "
                "(`lsc plan` says it) in fp16/bf16 (and under autocast), unfused beyond it"
                + (" and in fp32" if dtype == torch.float32 else ""))
    if attention != "fused":
        return ""
    why = config.fused_attention_refusal(torch.bfloat16)
    if why:
        return f"; attention unfused: {why}"
    return "; fused attention in fp16/bf16 (and under autocast)" + (
        ", unfused in fp32" if dtype == torch.float32 else "")


def compile(model: nn.Module, *, cache_dir: Optional[str] = None, dtype: Optional[torch.dtype] = None,
            attention: str = "unfused") -> nn.Module:
    """Replaces, in place, every supported layer of `model` with a compiled one that keeps the same
    nn.Parameters and computes the same function forward and backward; returns `model`.

    Supported: torch.nn.TransformerEncoderLayer (batch_first or not, norm_first, relu/gelu/tanh
    gelu, padding masks, causal masks), torch.nn.TransformerDecoderLayer (causal self-attention,
    target and memory padding masks; so nn.Transformer and nn.TransformerDecoder too) and
    transformers' BertLayer with every layer that runs its code (RobertaLayer, XLMRobertaLayer,
    CamembertLayer, ElectraLayer, Data2VecTextLayer, ...), GPT2Block, ViTLayer and DistilBERT's
    TransformerBlock: checked part by part against the family's source; a layer shaped like one
    that runs other code is explained, not compiled. `dtype` is the dtype the layers run in without
    autocast (default: their parameters' dtype); under torch.autocast they run in the
    autocast dtype. Kernels are compiled on a layer's first call (or loaded from the disk cache,
    `cache_dir` or the default). `attention="fused"` runs the layers' attention with the fused
    kernels (templates/flash_attention.cuh: scores never stored) wherever they can: fp16/bf16
    (autocast included) and head dims 16..128 by 16; elsewhere, and by default, the unfused
    GEMM + softmax path. `attention="auto"` chooses per call by its lengths: fused where the
    compiler's measured rule says it is faster (short sequences), unfused elsewhere. explain(model) lists what was replaced and why the rest was not."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"lightseq.compile takes an nn.Module, not {a_type(model)}")
    if dtype is not None:
        try:
            _spec.dtype_name(dtype)
        except Unsupported as why:
            raise Unsupported(f"lightseq.compile: {why}") from None
    _native.check_choice("lightseq.compile", "attention", attention, "layers.attention")
    report = []
    for name, module in model.named_modules():
        if hasattr(module, _STATE):
            report.append((name or "<model>", _base_name(module), True,
                           getattr(module, _STATE).config.describe() + " (already compiled)"))
            continue
        try:
            found = _extract(module)
        except Unsupported as why:
            report.append((name or "<model>", type(module).__name__, False, str(why)))
            continue
        if found is None:
            continue
        cls, config = found
        layer_dtype = dtype or _param_dtype(module)
        if isinstance(config, _embedding.EmbeddingConfig):
            issues = [f"{name or '<model>'}: {i}" for i in config.issues(layer_dtype)]
            if issues:
                report.append((name or "<model>", type(module).__name__, False, "\n  ".join(issues)))
                continue
            setattr(module, _STATE, _embedding.EmbeddingState(config, cache_dir, dtype))
            module.__class__ = cls
            report.append((name or "<model>", _base_name(module), True,
                           f"{config.describe()}, on CUDA input_ids (position_ids, inputs_embeds or a cache "
                           f"length run PyTorch's implementation); runs in {layer_dtype}, or the autocast "
                           "dtype (its output float32 then, as transformers' is, for float32 parameters); "
                           "the dropout probability is read at each training call"))
            continue
        state = _LayerState(config, layer_dtype, cache_dir, attention)
        issues = _compiler_issues(state, name)
        if issues:
            report.append((name or "<model>", type(module).__name__, False, "\n  ".join(issues)))
            continue
        setattr(module, _STATE, state)
        module.__class__ = cls
        if hasattr(module, "_lay_out_joined"):  # a transformers layer's Q/K/V: one buffer (_hf.py)
            module._lay_out_joined()
        report.append((name or "<model>", _base_name(module), True,
                       f"{config.describe()}, {layer_dtype}{_attention_note(config, layer_dtype, attention)}"
                       f"{_CALL_NOTE}"))
    report += _swap_losses(model, cache_dir)
    for module in model.modules():
        if type(module) is nn.TransformerEncoder and all(
                isinstance(m, CompiledTransformerEncoderLayer) for m in module.layers):
            module.__class__ = CompiledTransformerEncoder
    model.__dict__["_lightseq_report"] = report
    return model


def _swap_losses(model: nn.Module, cache_dir: Optional[str]) -> list:
    """nn.CrossEntropyLoss submodules become lightseq.nn.CrossEntropyLoss (the same function: calls
    it does not take run torch's implementation); a transformers model's own loss, made inside its
    forward, cannot be swapped, and the report says what to do instead."""
    report, swapped = [], 0
    for name, module in model.named_modules():
        if type(module) is not nn.CrossEntropyLoss:
            continue
        try:
            _loss._setup_loss(module, "CrossEntropyLoss", module.ignore_index, module.label_smoothing,
                              module.reduction, 256, cache_dir)
        except Error as why:
            report.append((name or "<model>", "CrossEntropyLoss", False, str(why)))
            continue
        module.__class__ = _loss.CrossEntropyLoss
        swapped += 1
        report.append((name or "<model>", "CrossEntropyLoss", True,
                       f"label smoothing {module.label_smoothing:g}, ignore index {module.ignore_index}, reduction "
                       f"{module.reduction!r}: lightseq's fused softmax + loss + gradient on CUDA [N, C] logits with "
                       "integer targets and no class weights; other calls run torch's"))
    if not swapped and hasattr(model, "loss_function") and any(
            c.__name__ == "PreTrainedModel" for c in type(model).__mro__):
        report.append(("<loss>", "CrossEntropyLoss", False,
                       "transformers computes this model's loss inside forward (model.loss_function), where "
                       "lightseq cannot swap it; to run the loss with lightseq, call the model without labels "
                       "and apply lightseq.nn.CrossEntropyLoss to the logits (or lightseq.nn.LinearCrossEntropyLoss "
                       "to the last hidden states and the output embedding, which never materializes the logits)"))
    return report


def explain(model: nn.Module) -> str:
    """What lightseq.compile replaced in `model`, and for each layer it did not, why."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"lightseq.explain takes the nn.Module given to lightseq.compile, not "
                                f"{a_type(model)}")
    report = model.__dict__.get("_lightseq_report")
    if report is None:
        return "lightseq.compile has not been applied to this model"
    if not report:
        return ("lightseq.compile found no layer it knows (nn.TransformerEncoderLayer, "
                f"nn.TransformerDecoderLayer, {_hf.known_layers()}) in this model")
    lines = []
    for name, kind, replaced, why in report:
        lines.append(f"{name} ({kind}): " + (f"compiled: {why}" if replaced else f"not compiled: {why}"))
    return "\n".join(lines)


__all__ = ["compile", "explain", "Error", "CompiledTransformerEncoderLayer", "CompiledTransformerEncoder",
           "CompiledTransformerDecoderLayer"]
