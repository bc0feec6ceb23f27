"""The compiled layers as torch custom ops (torch.library): `lightseq::encoder_fwd` /
`lightseq::encoder_bwd` and `lightseq::decoder_fwd` / `lightseq::decoder_bwd`, tied together by
autograd. Everything the backward needs travels through
autograd (the saved-activation arena is a uint8 tensor, the dropout seed/offset a CPU int64
tensor), so activation checkpointing, calling a layer twice and torch.compile all work.

Compiled layers live in a process-wide registry keyed by (spec, device, cache directory): modules
with the same configuration share one compiled model and its kernels."""
from __future__ import annotations

import json
import threading
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _native, _spec
from ._errors import ArgumentError

# Each call of a dropout-enabled layer advances torch's CUDA generator by this much (the C++
# runtime's kDropoutOffsetStride): the layer's dropout sites draw at offset + site.
DROPOUT_OFFSET_STRIDE = 16
_ARENA_ALIGN = 256

_lock = threading.Lock()
_keys: dict = {}  # (spec json, device, cache dir) -> layer id
_layers: list = []  # layer id -> (_C.EncoderLayer or _C.DecoderLayer, saved slots, spec json, device)
_models: dict = {}  # (spec json, device, cache dir) -> _C.CompiledModel (shared by its stacks)


def layer_id(spec_json: str, device: int, cache_dir: Optional[str]) -> int:
    """The registry id of the compiled layer of a spec's last stack (an encoder, or a decoder after
    the encoder stack its spec needs), compiling (or loading from the disk cache) on first use in
    this process."""
    key = (spec_json, device, cache_dir)
    found = _keys.get(key)
    if found is not None:
        return found
    C = _native.extension()
    with _lock:
        if key in _keys:
            return _keys[key]
        model = _models.get(key)
        if model is None:
            model = C.CompiledModel.load(spec_json, device, cache_dir)
            _models[key] = model
        stacks = json.loads(spec_json)["layers"]
        kind = C.DecoderLayer if stacks[-1]["type"] == "decoder" else C.EncoderLayer
        layer = kind(model, len(stacks) - 1)
        _layers.append((layer, tuple(layer.saved_slots()), spec_json, device))
        _keys[key] = len(_layers) - 1
        return _keys[key]


def compiled_models() -> list:
    """The compiled models of this process (for tests and explain())."""
    return list(_models.values())


def _saved_bytes(layer: int, batch, seq, src_seq=1):
    """Bytes of the saved-activation arena; works on SymInts (torch.compile's fake tensors)."""
    total = 0
    for _name, factor, pb, pt, ps in _layers[layer][1]:
        n = factor * batch**pb * seq**pt * src_seq**ps
        total = total + (n + _ARENA_ALIGN - 1) // _ARENA_ALIGN * _ARENA_ALIGN
    return total


def _u64_to_i64(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def _i64_to_u64(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


def _allocator(device: torch.device):
    keep: List[Tensor] = []

    def alloc(nbytes: int) -> int:
        t = torch.empty(nbytes, dtype=torch.uint8, device=device)
        keep.append(t)
        return t.data_ptr()

    return alloc, keep


def _draw_rng(device: torch.device, dropout: bool) -> Tensor:
    """(seed, offset) from torch's CUDA generator, advanced past this call's draws."""
    if not dropout:
        return torch.zeros(2, dtype=torch.int64)
    gen = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    seed, offset = gen.initial_seed(), gen.get_offset()
    gen.set_offset(offset + DROPOUT_OFFSET_STRIDE)
    return torch.tensor([_u64_to_i64(seed), offset], dtype=torch.int64)


def _aligned(t: Optional[Tensor]) -> Optional[Tensor]:
    """lightseq's kernels read 16-byte vectors of contiguous rows: a strided view, or a view at
    another offset (a slice of a larger padding mask, as DDP's per-rank batches are), is copied."""
    if t is None:
        return t
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _check_op_inputs(op: str, x: Tensor, weights: List[Tensor], masks, memory: Optional[Tensor] = None) -> None:
    """What the native layer assumes of a direct call of the op (the compiled modules already
    guarantee it): raises ArgumentError (a ValueError) naming the argument otherwise. No GPU work, no sync."""
    def bad(what):
        raise ArgumentError(f"lightseq::{op}: {what}")

    if x.dim() != 3 or not x.is_cuda or not x.is_contiguous():
        bad(f"x must be a contiguous CUDA tensor [B, T, H], got shape {tuple(x.shape)} on {x.device}")
    if memory is not None:
        if memory.dim() != 3 or memory.shape[0] != x.shape[0] or memory.shape[2] != x.shape[2]:
            bad(f"memory must be [B, S, H] with x's B and H, got {tuple(memory.shape)} for x {tuple(x.shape)}")
        if memory.dtype != x.dtype or memory.device != x.device or not memory.is_contiguous():
            bad(f"memory must be contiguous and match x's dtype and device ({x.dtype}, {x.device})")
    for w in weights:
        if w.dtype != x.dtype or w.device != x.device or not w.is_contiguous():
            bad(f"every weight must be contiguous {x.dtype} on {x.device}, got a {w.dtype} {tuple(w.shape)}")
    for name, m, keys in masks:
        if m is not None and (m.dtype not in (torch.bool, torch.uint8) or tuple(m.shape) != (x.shape[0], keys)):
            bad(f"{name} must be bool or uint8 [B, {keys}] (nonzero = pad), got {m.dtype} {tuple(m.shape)}")


@torch.library.custom_op("lightseq::encoder_fwd", mutates_args=())
def encoder_fwd(x: Tensor, mask: Optional[Tensor], weights: List[Tensor], layer: int,
                p_attention: float, p_activation: float, p_hidden: float) -> Tuple[Tensor, Tensor, Tensor]:
    """y, saved arena, rng state = encoder layer forward of x [B, T, H] (batch-major, contiguous),
    mask [B, T] bool or uint8 (nonzero = pad) or None."""
    _check_op_inputs("encoder_fwd", x, weights, [("mask", mask, x.shape[1])])
    handle = _layers[layer][0]
    batch, seq, _ = x.shape
    mask = _aligned(mask)
    y = torch.empty_like(x)
    saved = torch.empty(_saved_bytes(layer, batch, seq), dtype=torch.uint8, device=x.device)
    rng = _draw_rng(x.device, p_attention > 0 or p_activation > 0 or p_hidden > 0)
    seed, offset = (_i64_to_u64(int(v)) for v in rng.tolist())
    alloc, _keep = _allocator(x.device)
    handle.forward([w.data_ptr() for w in weights], _spec.dtype_name(x.dtype), x.data_ptr(),
                   0 if mask is None else mask.data_ptr(), y.data_ptr(), batch, seq, p_attention,
                   p_activation, p_hidden, seed, offset, saved.data_ptr(),
                   torch.cuda.current_stream(x.device).cuda_stream, alloc)
    return y, saved, rng


@encoder_fwd.register_fake
def _encoder_fwd_fake(x, mask, weights, layer, p_attention, p_activation, p_hidden):
    batch, seq, _ = x.shape
    return (torch.empty_like(x), x.new_empty((_saved_bytes(layer, batch, seq),), dtype=torch.uint8),
            torch.empty(2, dtype=torch.int64))


@torch.library.custom_op("lightseq::encoder_bwd", mutates_args=())
def encoder_bwd(grad_y: Tensor, x: Tensor, mask: Optional[Tensor], weights: List[Tensor], saved: Tensor,
                rng: Tensor, layer: int, p_attention: float, p_activation: float,
                p_hidden: float) -> List[Tensor]:
    """[grad_x, grad of each weight] of encoder_fwd."""
    handle = _layers[layer][0]
    batch, seq, _ = x.shape
    mask = _aligned(mask)
    grad_x = torch.empty_like(x)
    grads = [torch.empty_like(w) for w in weights]
    seed, offset = (_i64_to_u64(int(v)) for v in rng.tolist())
    alloc, _keep = _allocator(x.device)
    handle.backward([w.data_ptr() for w in weights], [g.data_ptr() for g in grads], grad_y.data_ptr(),
                    grad_x.data_ptr(), x.data_ptr(), 0 if mask is None else mask.data_ptr(), batch, seq,
                    p_attention, p_activation, p_hidden, seed, offset, saved.data_ptr(), False,
                    torch.cuda.current_stream(x.device).cuda_stream, alloc)
    return [grad_x] + grads


@encoder_bwd.register_fake
def _encoder_bwd_fake(grad_y, x, mask, weights, saved, rng, layer, p_attention, p_activation, p_hidden):
    return [torch.empty_like(x)] + [torch.empty_like(w) for w in weights]


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _setup_context(ctx, inputs, output):
    x, mask, weights, layer, pa, pb, pc = inputs
    _y, saved, rng = output
    ctx.save_for_backward(x, mask, saved, rng, *weights)
    ctx.layer, ctx.p = layer, (pa, pb, pc)
    ctx.mark_non_differentiable(saved, rng)


def _backward(ctx, grad_y, _grad_saved, _grad_rng):
    x, mask, saved, rng, *weights = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    outs = encoder_bwd(grad_y.contiguous(), x, mask, weights, saved, rng, ctx.layer, *ctx.p)
    return outs[0], None, outs[1:], None, None, None, None


torch.library.register_autograd("lightseq::encoder_fwd", _backward, setup_context=_setup_context)


# ---- decoder layers ------------------------------------------------------------------------------

@torch.library.custom_op("lightseq::decoder_fwd", mutates_args=())
def decoder_fwd(x: Tensor, memory: Tensor, mask: Optional[Tensor], memory_mask: Optional[Tensor],
                weights: List[Tensor], layer: int, p_attention: float, p_activation: float,
                p_hidden: float) -> Tuple[Tensor, Tensor, Tensor]:
    """y, saved arena, rng state = decoder layer forward of x [B, T, H] attending causally to itself
    and to memory [B, S, H] (the encoder output; both batch-major, contiguous); masks [B, T] and
    [B, S] bool (True = pad) or None. weights: the 18 parameters of nn.TransformerDecoderLayer."""
    _check_op_inputs("decoder_fwd", x, weights, [("mask", mask, x.shape[1]), ("memory_mask", memory_mask,
                                                                              memory.shape[1])], memory)
    handle = _layers[layer][0]
    batch, seq, _ = x.shape
    src_seq = memory.shape[1]
    mask, memory_mask = _aligned(mask), _aligned(memory_mask)
    y = torch.empty_like(x)
    saved = torch.empty(_saved_bytes(layer, batch, seq, src_seq), dtype=torch.uint8, device=x.device)
    rng = _draw_rng(x.device, p_attention > 0 or p_activation > 0 or p_hidden > 0)
    seed, offset = (_i64_to_u64(int(v)) for v in rng.tolist())
    alloc, _keep = _allocator(x.device)
    handle.forward([w.data_ptr() for w in weights], _spec.dtype_name(x.dtype), x.data_ptr(), _ptr(mask),
                   memory.data_ptr(), _ptr(memory_mask), y.data_ptr(), batch, seq, src_seq, p_attention,
                   p_activation, p_hidden, seed, offset, saved.data_ptr(), _stream(x.device), alloc)
    return y, saved, rng


@decoder_fwd.register_fake
def _decoder_fwd_fake(x, memory, mask, memory_mask, weights, layer, p_attention, p_activation, p_hidden):
    batch, seq, _ = x.shape
    return (torch.empty_like(x),
            x.new_empty((_saved_bytes(layer, batch, seq, memory.shape[1]),), dtype=torch.uint8),
            torch.empty(2, dtype=torch.int64))


@torch.library.custom_op("lightseq::decoder_bwd", mutates_args=())
def decoder_bwd(grad_y: Tensor, x: Tensor, memory: Tensor, mask: Optional[Tensor], memory_mask: Optional[Tensor],
                weights: List[Tensor], saved: Tensor, rng: Tensor, layer: int, p_attention: float,
                p_activation: float, p_hidden: float) -> List[Tensor]:
    """[grad_x, grad_memory, grad of each weight] of decoder_fwd."""
    handle = _layers[layer][0]
    batch, seq, _ = x.shape
    src_seq = memory.shape[1]
    mask, memory_mask = _aligned(mask), _aligned(memory_mask)
    grad_x = torch.empty_like(x)
    grad_memory = torch.zeros_like(memory)  # the layer adds its gradient into it
    grads = [torch.empty_like(w) for w in weights]
    seed, offset = (_i64_to_u64(int(v)) for v in rng.tolist())
    alloc, _keep = _allocator(x.device)
    handle.backward([w.data_ptr() for w in weights], [g.data_ptr() for g in grads], grad_y.data_ptr(),
                    grad_x.data_ptr(), grad_memory.data_ptr(), x.data_ptr(), _ptr(mask), memory.data_ptr(),
                    _ptr(memory_mask), batch, seq, src_seq, p_attention, p_activation, p_hidden, seed, offset,
                    saved.data_ptr(), False, _stream(x.device), alloc)
    return [grad_x, grad_memory] + grads


@decoder_bwd.register_fake
def _decoder_bwd_fake(grad_y, x, memory, mask, memory_mask, weights, saved, rng, layer, p_attention,
                      p_activation, p_hidden):
    return [torch.empty_like(x), torch.empty_like(memory)] + [torch.empty_like(w) for w in weights]


def _decoder_setup_context(ctx, inputs, output):
    x, memory, mask, memory_mask, weights, layer, pa, pb, pc = inputs
    _y, saved, rng = output
    ctx.save_for_backward(x, memory, mask, memory_mask, saved, rng, *weights)
    ctx.layer, ctx.p = layer, (pa, pb, pc)
    ctx.mark_non_differentiable(saved, rng)


def _decoder_backward(ctx, grad_y, _grad_saved, _grad_rng):
    x, memory, mask, memory_mask, saved, rng, *weights = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    outs = decoder_bwd(grad_y.contiguous(), x, memory, mask, memory_mask, weights, saved, rng, ctx.layer, *ctx.p)
    return outs[0], outs[1], None, None, outs[2:], None, None, None, None


torch.library.register_autograd("lightseq::decoder_fwd", _decoder_backward, setup_context=_decoder_setup_context)
