"""Any compiled layer as one pair of torch custom ops (torch.library), `lightseq::layer_fwd` and
`lightseq::layer_bwd`, tied together by autograd. A layer is bound by its manifest (the C++
LayerExecutor's calling convention: each tensor's name, role, shape in B/T/S, dtype), so a new layer
kind needs no code here. Everything the backward needs travels through autograd (the saved-activation
arena is a uint8 tensor, the dropout seed/offset a device int64 tensor), so activation checkpointing,
calling a layer twice and torch.compile all work.

Compiled layers live in a process-wide registry keyed by (spec, device, cache directory, layer
name): modules with the same configuration share one compiled model and its kernels."""
from __future__ import annotations

import json
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _native, _spec
from ._errors import ArgumentError, Error

_ARENA_ALIGN = 256

_DTYPES = {"float32": torch.float32, "int64": torch.int64, "uint8": torch.uint8, "int32": torch.int32,
           "optim_state": torch.int32}  # OptimState: 16 bytes (the optimizer owns it; never allocated here)
_MODEL_DTYPES = {name: dtype for dtype, name in _spec._DTYPE_NAMES.items()}  # "bf16" -> torch.bfloat16


@dataclass(frozen=True)
class Entry:
    """One manifest entry (runtime/executor.h, ManifestEntry)."""
    name: str
    role: str            # input, param, output, grad_input, grad_output, param_grad
    shape: tuple         # ((factor, power of B, power of T, power of S), ...)
    dtype: torch.dtype
    optional: bool       # may be None (a padding mask)
    accumulates: bool    # the call adds into it: it starts zeroed
    grad_of: str         # a gradient's forward tensor


_BWD_WRITES = ("grad_output", "param_grad")


@dataclass(frozen=True)
class Layer:
    """A compiled layer and its calling convention. The derived fields are what a call needs,
    computed once here so that a call does no lookups by name: its manifest split into inputs and
    outputs, the positions of both in the manifest's order, where each backward input comes from
    and which backward output is each forward input's gradient."""
    handle: object       # _C.Layer
    name: str            # "layers[0]", "embedding", ...
    slots: tuple         # the saved arena's slots
    forward: Tuple[Entry, ...]
    backward: Tuple[Entry, ...]
    # An "auto" layer's fused plan: (max_keys, max_batch, its saved arena's slots), which runs the
    # calls whose batch is at most max_batch and whose attentions have at most max_keys keys; None
    # for other layers (LayerPlan::fused_rule: both plans bind the same manifest).
    fused: Optional[tuple] = None
    fwd_in: tuple = field(init=False)     # the forward's inputs and parameters (a call's args)
    fwd_out: tuple = field(init=False)    # what the forward writes
    bwd_in: tuple = field(init=False)
    bwd_out: tuple = field(init=False)    # the gradients the backward writes
    fwd_order: tuple = field(init=False)  # per forward manifest entry: its index in args + outs
    bwd_order: tuple = field(init=False)
    bwd_from: tuple = field(init=False)   # per backward input: (False, forward arg) | (True, output)
    grad_at: tuple = field(init=False)    # per forward arg: its gradient's index in bwd_out, or -1
    masks: tuple = field(init=False)      # per direction: indices of its u8 args (padding masks)
    anchor: tuple = field(init=False)     # per direction: an arg that is never absent

    def __post_init__(self):
        def split(entries, writes):
            ins = tuple(e for e in entries if e.role not in writes)
            outs = tuple(e for e in entries if e.role in writes)
            n_in, n_out, order = 0, 0, []
            for e in entries:
                if e.role in writes:
                    order.append(len(ins) + n_out)
                    n_out += 1
                else:
                    order.append(n_in)
                    n_in += 1
            return ins, outs, tuple(order)

        fwd_in, fwd_out, fwd_order = split(self.forward, ("output",))
        bwd_in, bwd_out, bwd_order = split(self.backward, _BWD_WRITES)
        arg_at = {e.name: i for i, e in enumerate(fwd_in)}
        out_at = {e.name: i for i, e in enumerate(fwd_out)}
        grad_of = {e.grad_of: i for i, e in enumerate(bwd_out)}
        bwd_from = []
        for e in bwd_in:
            if e.role == "grad_input":
                bwd_from.append((True, out_at[e.grad_of]))
            elif e.name in arg_at:
                bwd_from.append((False, arg_at[e.name]))
            else:
                raise ArgumentError(f"lightseq ({self.name}): the backward reads '{e.name}', which the forward "
                                    "does not take")
        derived = dict(
            fwd_in=fwd_in, fwd_out=fwd_out, bwd_in=bwd_in, bwd_out=bwd_out, fwd_order=fwd_order,
            bwd_order=bwd_order, bwd_from=tuple(bwd_from), grad_at=tuple(grad_of.get(e.name, -1) for e in fwd_in),
            masks=tuple(tuple(i for i, e in enumerate(ins) if e.dtype == torch.uint8) for ins in (fwd_in, bwd_in)),
            anchor=tuple(next((i for i, e in enumerate(ins) if not e.optional), 0) for ins in (fwd_in, bwd_in)))
        for k, v in derived.items():
            object.__setattr__(self, k, v)

    def fwd_inputs(self):
        return list(self.fwd_in)

    def fwd_outputs(self):
        return list(self.fwd_out)

    def bwd_inputs(self):
        return list(self.bwd_in)

    def bwd_outputs(self):
        return list(self.bwd_out)


class _Shapes:
    """One layer at one (B, T, S): each argument's expected shape and dtypes, each output's size,
    the saved arena's bytes. Made on a shape's first call, then found by one dict lookup."""
    __slots__ = ("fwd_in", "fwd_out", "bwd_in", "bwd_out", "saved_bytes")

    def __init__(self, lay: Layer, dims):
        def expect(entries):
            return tuple((torch.Size(_size(e.shape, *dims)),
                          (torch.bool, torch.uint8) if e.dtype == torch.uint8 else (e.dtype,), e.optional)
                         for e in entries)

        def sizes(entries):
            return tuple((tuple(_size(e.shape, *dims)), e.dtype, e.accumulates) for e in entries)

        self.fwd_in, self.fwd_out = expect(lay.fwd_in), sizes(lay.fwd_out)
        self.bwd_in, self.bwd_out = expect(lay.bwd_in), sizes(lay.bwd_out)
        self.saved_bytes = _saved_bytes(lay, *dims)
        native = self.saved_bytes if lay.handle is None else lay.handle.saved_arena_bytes(*dims)
        if self.saved_bytes != native:  # the rule's two readers disagree (_slots_at)
            raise Error(f"lightseq internal error: {lay.name} at (B, T, S) = {tuple(dims)}: the saved "
                        f"arena is {self.saved_bytes} bytes here and {native} in the runtime")


_lock = threading.Lock()
_keys: dict = {}  # (spec json, device, cache dir, layer name) -> layer id
_layers: List[Layer] = []
_models: dict = {}  # (spec json, device, cache dir) -> _C.CompiledModel (shared by its layers)
_shapes: dict = {}  # (layer id, B, T, S) -> _Shapes


def _entries(manifest, model_dtype: torch.dtype) -> Tuple[Entry, ...]:
    return tuple(Entry(e["name"], e["role"], tuple(tuple(d) for d in e["shape"]),
                       model_dtype if e["dtype"] == "model" else _DTYPES[e["dtype"]], e["optional"],
                       e["accumulates"], e["grad_of"]) for e in manifest)


def layer_id(spec_json: str, device: int, cache_dir: Optional[str], name: Optional[str] = None) -> int:
    """The registry id of layer `name` of a spec (default: its last stack, "layers[N-1]": an
    encoder, or a decoder after the encoder stack its spec needs), compiling (or loading from the
    disk cache) on first use in this process."""
    key = (spec_json, device, cache_dir, name)
    found = _keys.get(key)
    if found is not None:
        return found
    spec = json.loads(spec_json)
    if name is None:
        name = f"layers[{len(spec['layers']) - 1}]"
    named = (spec_json, device, cache_dir, name)
    found = _keys.get(named)
    if found is not None:
        _keys[key] = found
        return found
    C = _native.extension()
    with _lock:
        if named in _keys:
            _keys[key] = _keys[named]
            return _keys[key]
        model = _models.get(key[:3])
        if model is None:
            model = C.CompiledModel.load(spec_json, device, cache_dir)
            _models[key[:3]] = model
        handle = C.Layer(model, name)
        dtype = _MODEL_DTYPES[spec.get("precision", "fp32")]
        fused = handle.fused_plan()
        if fused is not None:
            fused = (fused[0], fused[1], tuple(fused[2]))
        _layers.append(Layer(handle, name, tuple(handle.saved_slots()), _entries(handle.manifest(False), dtype),
                             _entries(handle.manifest(True), dtype), fused))
        _keys[named] = _keys[key] = len(_layers) - 1
        return _keys[key]


def layer(lid: int) -> Layer:
    return _layers[lid]


def compiled_models() -> list:
    """The compiled models of this process (for tests and explain())."""
    return list(_models.values())


_param_paths = weakref.WeakKeyDictionary()  # module -> ((name, submodule path, attribute), ...)


def parameters_by_name(module: torch.nn.Module) -> Dict[str, Tensor]:
    """dict(module.named_parameters()) without walking the module tree at every call: the paths
    are found once, then each call reads each parameter where it is now (a parameter or submodule
    assigned anew is seen; a path that no longer holds a parameter makes the walk again)."""
    if torch.compiler.is_compiling():
        return dict(module.named_parameters())
    paths = _param_paths.get(module)
    if paths is not None:
        out = {}
        for name, path, attr in paths:
            m = module
            for part in path:
                m = m._modules.get(part)
                if m is None:
                    break
            t = None if m is None else m._parameters.get(attr)
            if t is None:
                break
            out[name] = t
        else:
            return out
    named = dict(module.named_parameters())
    _param_paths[module] = tuple((name, tuple(name.split(".")[:-1]), name.rsplit(".", 1)[-1]) for name in named)
    return named


def _size(dims: Sequence, batch, seq, src_seq):
    """A manifest shape at (B, T, S); works on SymInts (torch.compile's fake tensors)."""
    return [f * batch**b * seq**t * src_seq**s for f, b, t, s in dims]


def _slots_at(lay: Layer, batch, seq, src_seq) -> tuple:
    """The saved arena's slots of the plan that runs a call of (B, T, S): an "auto" layer's fused
    plan where its rule admits the call (as LayerExecutor::at picks; on SymInts, torch.compile
    guards on it), else the layer's own."""
    if lay.fused is not None:
        max_keys, max_batch, slots = lay.fused
        if batch <= max_batch and seq <= max_keys and src_seq <= max_keys:
            return slots
    return lay.slots


def _saved_bytes(lay: Layer, batch, seq, src_seq):
    """Bytes of the saved-activation arena; works on SymInts."""
    total = 0
    for _name, factor, pb, pt, ps in _slots_at(lay, batch, seq, src_seq):
        n = factor * batch**pb * seq**pt * src_seq**ps
        total = total + (n + _ARENA_ALIGN - 1) // _ARENA_ALIGN * _ARENA_ALIGN
    return total


def device_index(t: Tensor) -> int:
    """The CUDA device ordinal of a CUDA tensor (the current device for a bare "cuda")."""
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def run_dtype(default: torch.dtype) -> torch.dtype:
    """The dtype a compiled module runs in: the autocast dtype under torch.autocast, else `default`."""
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else default


def _allocator(device: torch.device):
    keep: List[Tensor] = []

    def alloc(nbytes: int) -> int:
        t = torch.empty(nbytes, dtype=torch.uint8, device=device)
        keep.append(t)
        return t.data_ptr()

    return alloc, keep


def _draw_rng(device: torch.device, dropout: bool) -> Tensor:
    """The call's dropout seed and offset: two random int64 on the device, drawn from torch's CUDA
    generator by torch.randint (graph-safe: under CUDA graph capture each replay draws afresh, as
    PyTorch's own dropout does; torch.manual_seed makes runs reproducible). The kernels read them
    where they run; nothing is copied to the host. Without dropout: two unused words."""
    if not dropout:
        return torch.empty(2, dtype=torch.int64, device=device)
    return torch.randint(0, 1 << 62, (2,), dtype=torch.int64, device=device)


def _rng_ptr(rng: Tensor, p: Sequence[float]) -> int:
    return rng.data_ptr() if any(q > 0 for q in p) else 0


def _aligned(t: Optional[Tensor]) -> Optional[Tensor]:
    """lightseq's kernels read 16-byte vectors of contiguous rows: a strided view, or a view at
    another offset (a slice of a larger padding mask, as DDP's per-rank batches are), is copied."""
    if t is None:
        return t
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _check_args(op: str, lay: Layer, entries: List[Entry], args: Sequence[Optional[Tensor]], dims) -> torch.device:
    """What the native layer assumes of its arguments, from its manifest: one per entry, each a
    contiguous CUDA tensor of the entry's dtype and shape (a mask: bool or uint8), on one device.
    Raises ArgumentError naming the argument otherwise. No GPU work, no sync."""
    def bad(what):
        raise ArgumentError(f"lightseq::{op} ({lay.name}): {what}")

    if len(args) != len(entries):
        bad(f"{len(entries)} tensors ({', '.join(e.name for e in entries)}), got {len(args)}")
    device = None
    for e, t in zip(entries, args):
        if t is None or (e.optional and t.numel() == 0):
            if not e.optional:
                bad(f"'{e.name}' is None")
            continue
        want = _size(e.shape, *dims)
        dtypes = (torch.bool, torch.uint8) if e.dtype == torch.uint8 else (e.dtype,)
        if not t.is_cuda or not t.is_contiguous() or t.dtype not in dtypes or list(t.shape) != want:
            bad(f"'{e.name}' must be a contiguous CUDA {e.dtype} tensor of shape {want}, got a "
                f"{'contiguous ' if t.is_contiguous() else 'strided '}{t.dtype} tensor of shape "
                f"{list(t.shape)} on {t.device}")
        if device is None:
            device = t.device
        elif t.device != device:
            bad(f"'{e.name}' is on {t.device}, the other tensors on {device}")
    if device is None:
        bad("no tensor argument")
    return device


def _ptrs(tensors: Sequence[Optional[Tensor]]) -> List[int]:
    return [0 if t is None or t.numel() == 0 else t.data_ptr() for t in tensors]


def _absent(like: Tensor) -> Tensor:
    """What an absent optional argument (a padding mask) is passed as: no elements."""
    return like.new_empty((0,), dtype=torch.uint8)


def _p5(p: Sequence[float]) -> List[float]:
    """The dropout probabilities (attention, activation, hidden[, embedding[, attention output]]);
    the attention output's defaults to the hidden one."""
    p = list(p) + [0.0] * max(0, 4 - len(p))
    return p + [p[2]] if len(p) == 4 else p


def _new(e: Entry, dims, device) -> Tensor:
    size = _size(e.shape, *dims)
    return (torch.zeros if e.accumulates else torch.empty)(size, dtype=e.dtype, device=device)


# A layer call that recurs with the same pointers (a training loop's) is replayed from a CUDA graph
# of its launches (runtime/layer_calls.h), so the host issues one launch per direction instead of
# ~30. LIGHTSEQ_LAYER_GRAPHS=0 issues every call's launches.
LAYER_GRAPHS = os.environ.get("LIGHTSEQ_LAYER_GRAPHS", "1") != "0"

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def stream_of(device: int) -> int:
    """The current CUDA stream of `device` as an integer (torch's raw stream: no Stream object)."""
    return _raw_stream(device) if _raw_stream is not None else torch.cuda.current_stream(device).cuda_stream


def _shapes_at(layer_id: int, dims) -> _Shapes:
    key = (layer_id, *dims)
    found = _shapes.get(key)
    if found is None:
        found = _shapes[key] = _Shapes(_layers[layer_id], dims)
    return found


def _args_ok(args: Sequence[Tensor], expect: tuple, device: int) -> bool:
    """Whether every argument is what the manifest says at this shape (the fast test; _check_args
    says what is wrong)."""
    if len(args) != len(expect):
        return False
    for t, (shape, dtypes, optional) in zip(args, expect):
        if t.shape != shape:
            if optional and t.numel() == 0:
                continue
            return False
        if t.dtype not in dtypes or t.get_device() != device or not t.is_contiguous():
            return False
    return True


def _checked(op: str, lay: Layer, backward: bool, expect, args: List[Tensor], dims) -> Tuple[List[Tensor], Tensor]:
    """args (of the forward, or of the backward), their masks made 16-byte aligned (_aligned), and
    a tensor on their device; raises ArgumentError naming what is wrong."""
    anchor, masks = lay.anchor[backward], lay.masks[backward]
    like = args[anchor] if anchor < len(args) else None
    try:
        ok = like.get_device() >= 0 and _args_ok(args, expect, like.get_device())
    except AttributeError:  # not tensors: _check_args says which
        ok = False
    if not ok:
        device = _check_args(op, lay, lay.bwd_in if backward else lay.fwd_in, args, dims)
        like = next(a for a in args if a is not None and a.numel() > 0 and a.device == device)
    for i in masks:
        if i < len(args) and args[i].numel() > 0 and args[i].data_ptr() % 16:
            args = list(args)
            args[i] = _aligned(args[i])
    return args, like


def _outputs(sizes, like: Tensor) -> List[Tensor]:
    return [like.new_zeros(size, dtype=dtype) if zero else like.new_empty(size, dtype=dtype)
            for size, dtype, zero in sizes]


def _fwd_impl(args: List[Tensor], layer_id: int, dims: List[int],
              p: List[float]) -> Tuple[List[Tensor], Tensor, Tensor]:
    """(outputs, saved arena, rng state) of layer `layer_id`'s forward. args: its manifest's inputs
    and parameters in manifest order (an absent padding mask: a tensor with no elements, since
    autograd tracks a tensor list only when it holds no None); dims: [B, T, S]; p: the dropout
    probabilities (attention, activation, hidden, embedding, attention output)."""
    lay = _layers[layer_id]
    shapes = _shapes_at(layer_id, dims)
    args, like = _checked("layer_fwd", lay, False, shapes.fwd_in, args, dims)
    outs = _outputs(shapes.fwd_out, like)
    saved = like.new_empty((shapes.saved_bytes,), dtype=torch.uint8)
    dropout = any(q > 0 for q in p)
    rng = _draw_rng(like.device, dropout)
    every = [*args, *outs]
    _run(lay, False, _ptrs([every[i] for i in lay.fwd_order]), dims, p, rng.data_ptr() if dropout else 0,
         saved.data_ptr(), like)
    return outs, saved, rng


def _run(lay: Layer, backward: bool, ptrs: List[int], dims, p, rng: int, saved: int, like: Tensor) -> None:
    """One native call of `lay` (its forward or backward), through the graph cache unless
    LAYER_GRAPHS is off. The temporaries it allocates live in `keep` for the call (and, when the
    call is captured, as long as its graph)."""
    alloc, keep = _allocator(like.device)
    stream = stream_of(like.get_device())
    if LAYER_GRAPHS:
        lay.handle.call(backward, ptrs, *dims, _p5(p), rng, saved, False, stream, alloc, keep)
    elif backward:
        lay.handle.backward(ptrs, *dims, _p5(p), 0, 0, rng, saved, False, stream, alloc)
    else:
        lay.handle.forward(ptrs, *dims, _p5(p), 0, 0, rng, saved, stream, alloc)


layer_fwd = torch.library.custom_op("lightseq::layer_fwd", _fwd_impl, mutates_args=())


@layer_fwd.register_fake
def _layer_fwd_fake(args, layer_id, dims, p):
    lay = _layers[layer_id]
    like = next(a for a in args if a is not None and a.numel() > 0)
    outs = [like.new_empty(_size(e.shape, *dims), dtype=e.dtype) for e in lay.fwd_outputs()]
    return (outs, like.new_empty((_saved_bytes(lay, *dims),), dtype=torch.uint8),
            like.new_empty((2,), dtype=torch.int64))


def _bwd_impl(args: List[Tensor], saved: Tensor, rng: Tensor, layer_id: int, dims: List[int],
              p: List[float]) -> List[Tensor]:
    """The gradients layer_fwd's backward writes (its manifest's grad_output and param_grad entries,
    in order). args: the backward manifest's parameters, forward inputs and output gradients, in
    manifest order."""
    lay = _layers[layer_id]
    shapes = _shapes_at(layer_id, dims)
    args, like = _checked("layer_bwd", lay, True, shapes.bwd_in, args, dims)
    outs = _outputs(shapes.bwd_out, like)
    dropout = any(q > 0 for q in p)
    every = [*args, *outs]
    _run(lay, True, _ptrs([every[i] for i in lay.bwd_order]), dims, p, rng.data_ptr() if dropout else 0,
         saved.data_ptr(), like)
    return outs


layer_bwd = torch.library.custom_op("lightseq::layer_bwd", _bwd_impl, mutates_args=())


@layer_bwd.register_fake
def _layer_bwd_fake(args, saved, rng, layer_id, dims, p):
    lay = _layers[layer_id]
    return [saved.new_empty(_size(e.shape, *dims), dtype=e.dtype) for e in lay.bwd_outputs()]


def _save(ctx, args, saved: Tensor, rng: Tensor, layer_id: int, dims, p) -> None:
    """What a layer's backward needs (_input_grads reads it), for the custom op and _EagerLayer."""
    ctx.save_for_backward(saved, rng, *args)
    ctx.layer_id, ctx.dims, ctx.p = layer_id, dims, p


def _setup_context(ctx, inputs, output):
    args, layer_id, dims, p = inputs
    _outs, saved, rng = output
    _save(ctx, args, saved, rng, layer_id, dims, p)
    ctx.mark_non_differentiable(saved, rng)


def _backward(ctx, grad_outs, _grad_saved, _grad_rng):
    return _input_grads(ctx, grad_outs, layer_bwd), None, None, None


def _input_grads(ctx, grad_outs, bwd) -> list:
    """The gradients of the forward's inputs (None where the layer gives none), by `bwd` (the
    custom op, or its body outside torch.compile) from the saved state and the outputs' gradients."""
    saved, rng, *args = ctx.saved_tensors
    lay = _layers[ctx.layer_id]
    bwd_args = []
    for is_grad, i in lay.bwd_from:
        if not is_grad:
            bwd_args.append(args[i])
        elif grad_outs[i] is None:  # an output that did not reach the loss (_size: SymInts too)
            out = lay.fwd_out[i]
            bwd_args.append(saved.new_zeros(_size(out.shape, *ctx.dims), dtype=out.dtype))
        else:
            bwd_args.append(grad_outs[i].contiguous())
    grads = bwd(bwd_args, saved, rng, ctx.layer_id, ctx.dims, ctx.p)
    return [None if j < 0 else grads[j] for j in lay.grad_at]


torch.library.register_autograd("lightseq::layer_fwd", _backward, setup_context=_setup_context)


class _EagerLayer(torch.autograd.Function):
    """The same forward and backward outside torch.compile: a plain autograd.Function that calls the
    custom ops' bodies directly. Through torch.library's dispatch (schema checks, pytree flattening,
    the autograd and backend wrappers) one fwd+bwd cost the host ~1.4 ms more (H100, 512/8/2048 at
    128×32: benchmarks/layer_host.py); torch.compile still sees the custom ops, which it traces."""

    @staticmethod
    def forward(ctx, layer_id: int, dims: List[int], p: List[float], *args: Tensor):
        outs, saved, rng = _fwd_impl(list(args), layer_id, dims, p)
        _save(ctx, args, saved, rng, layer_id, dims, p)  # saved and rng are not outputs here
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outs):
        return (None, None, None, *_input_grads(ctx, list(grad_outs), _bwd_impl))


def run_layer(layer_id: int, named: Dict[str, Optional[Tensor]], dims: Tuple[int, int, int],
              p: Sequence[float]) -> Dict[str, Tensor]:
    """Layer `layer_id`'s forward with its inputs and parameters by manifest name (a module's
    named_parameters() are the graph's names); returns its outputs by name. Autograd-aware."""
    lay = _layers[layer_id]
    args = [named.get(e.name) for e in lay.fwd_in]
    if any(a is None for a in args):
        missing = [e.name for e, a in zip(lay.fwd_in, args) if a is None and not e.optional]
        if missing:
            raise ArgumentError(f"lightseq ({lay.name}): no tensor for {', '.join(missing)}")
        like = next(t for t in args if t is not None)
        args = [_absent(like) if a is None else a for a in args]
    if torch.compiler.is_compiling():
        outs, _saved, _rng = torch.ops.lightseq.layer_fwd(args, layer_id, list(dims), _p5(p))
    else:
        outs = _EagerLayer.apply(layer_id, list(dims), _p5(p), *args)
    return {e.name: o for e, o in zip(lay.fwd_out, outs)}
