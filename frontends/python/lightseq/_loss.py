"""lightseq.nn.LinearCrossEntropyLoss: the output projection and a label-smoothed softmax
cross-entropy fused (the spec's `criterion` over an untied projection, docs/spec.md): the logits
are computed, used and differentiated in chunks of rows (at most `logits_chunk_mib` MiB each) and
never exist whole. The forward computes the gradients too (as fused linear + cross-entropy losses
do); the backward only scales them by the incoming gradient, on the device.

    loss_fn = lightseq.nn.LinearCrossEntropyLoss(label_smoothing=0.1, ignore_index=pad)
    loss = loss_fn(hidden, lm_head.weight, targets)   # = F.cross_entropy(hidden @ W.T, targets, ...)
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import _native, _ops, _spec
from ._flags import ErrorFlags
from ._errors import ArgumentError, ArgumentTypeError, Error, SpecError, a_type

_REDUCTIONS = ("mean", "sum")


def _spec_json(vocab: int, hidden: int, dtype: torch.dtype, label_smoothing: float, ignore_index: int,
               chunk_mib: int, logits: bool = False) -> str:
    # The criterion needs the embedding section for its vocabulary; the projection is its own
    # (tie_output false). The embedding layer is compiled but never run here. logits: the criterion
    # reads given logits (criterion.input "logits") instead of projecting `hidden`.
    criterion = {"type": "cross_entropy", "label_smoothing": label_smoothing, "ignore_index": ignore_index,
                 "logits_chunk_mib": chunk_mib}
    if logits:
        criterion["input"] = "logits"
    return _spec.spec_json({
        "name": "lightseq-cross-entropy" if logits else "lightseq-linear-cross-entropy",
        "precision": _spec.dtype_name(dtype), "embedding": {"vocab": vocab, "hidden": hidden, "tie_output": False},
        "criterion": criterion})


@_native.assume_constant_result
def _criterion_for(spec_json: str, device: int, cache_dir: Optional[str]) -> int:
    return _ops.layer_id(spec_json, device, cache_dir, "criterion")


def _grad_scale(dtype: torch.dtype) -> float:
    """What the forward's gradients are computed multiplied by (and the backward divides out, in
    float32): float16 keeps gradient entries 256× smaller than it could hold unscaled; the weight's
    gradient, at most 256·max|hidden|, stays below float16's 65504 for |hidden| < 256."""
    return 256.0 if dtype == torch.float16 else 1.0


def _criterion_forward(layer_id: int, named: dict, rows: int, device, wanted: dict) -> dict:
    """One call of a criterion layer (rows [N] as N one-row "sequences", so the fused linear one
    chunks whole rows): `named` its inputs and parameters by manifest name (loss_scale added here),
    `wanted` which output roles to allocate; returns the outputs by name. Both losses' op bodies."""
    lay = _ops.layer(layer_id)
    dims = [rows, 1, 0]
    like = next(iter(named.values()))
    named = dict(named, loss_scale=torch.full((1,), _grad_scale(like.dtype), dtype=torch.float32, device=device))
    outs = {e.name: _ops._new(e, dims, device) for e in lay.forward if wanted.get(e.role, False)}
    ordered = [outs.get(e.name) if e.role in wanted else (named.get(e.name) if e.optional else named[e.name])
               for e in lay.forward]
    saved = torch.empty(_ops._saved_bytes(lay, *dims), dtype=torch.uint8, device=device)
    lay.handle.forward(_ops._ptrs(ordered), *dims, [0.0] * 5, 0, 0, 0, saved.data_ptr(),
                       _ops.stream_of(like.get_device()), _ops._allocator(device)[0])
    return outs


def _reduced(outs: dict, reduction: str) -> Tensor:
    total = outs["loss"].sum()
    return total / outs["n_tokens"][0] if reduction == "mean" else total


def _linear_ce_impl(hidden: Tensor, weight: Tensor, targets: Tensor, layer_id: int, reduction: str,
                         grad_hidden: bool, grad_weight: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_hidden, grad_weight, n_tokens, bad_target) of the criterion layer `layer_id`
    on hidden [N, H], weight [V, H], targets [N]: the loss reduced ('mean' over the counted
    targets, or 'sum'), and the gradients of the 'mean' loss that are asked for (the others are
    empty tensors, and their GEMMs do not run)."""
    n = hidden.shape[0]
    outs = _criterion_forward(layer_id, {"decoder_out": hidden, "targets": targets.view(n, 1),
                                         "output_projection.weight": weight}, n, hidden.device,
                              {"grad_output": grad_hidden, "param_grad": grad_weight, "output": True})
    gh = outs.get("grad_decoder_out", hidden.new_empty((0,)))
    gw = outs.get("grad.output_projection.weight", weight.new_empty((0,)))
    return _reduced(outs, reduction), gh, gw, outs["n_tokens"], outs["bad_target"]


linear_cross_entropy = torch.library.custom_op("lightseq::linear_cross_entropy", _linear_ce_impl, mutates_args=())


@linear_cross_entropy.register_fake
def _fake(hidden, weight, targets, layer_id, reduction, grad_hidden, grad_weight):
    return (hidden.new_empty((), dtype=torch.float32),
            torch.empty_like(hidden) if grad_hidden else hidden.new_empty((0,)),
            torch.empty_like(weight) if grad_weight else weight.new_empty((0,)),
            hidden.new_empty((1,), dtype=torch.float32), hidden.new_empty((1,), dtype=torch.int32))


def _scaled(grads, g_loss: Tensor, n_tokens: Tensor, reduction: str, dtype: torch.dtype) -> list:
    """The forward's gradients of the 'mean' loss (computed ×_grad_scale) times the loss's incoming
    gradient (× the target count for 'sum'); None for those not computed (no elements)."""
    scale = g_loss.float() * (n_tokens[0] if reduction == "sum" else 1.0) / _grad_scale(dtype)
    return [(g * scale).to(g.dtype) if g.numel() > 0 else None for g in grads]


# A loss op's outputs are (loss, *gradients of its first inputs, n_tokens, bad_target): its
# backward scales the forward's gradients (_scaled). Shared by the custom ops' autograd and
# _EagerLoss.
def _save_loss(ctx, output, reduction: str, n_args: int) -> None:
    ctx.save_for_backward(*output[1:-2], output[-2])
    ctx.reduction, ctx.n_args = reduction, n_args


def _loss_input_grads(ctx, g_loss: Tensor) -> tuple:
    *grads, n_tokens = ctx.saved_tensors
    scaled = _scaled(grads, g_loss, n_tokens, ctx.reduction, grads[0].dtype)
    return (*scaled, *([None] * (ctx.n_args - len(scaled))))


def _register_loss_autograd(name: str, reduction_at: int) -> None:
    """The autograd of loss op `name`, whose input `reduction_at` is the reduction."""
    def setup(ctx, inputs, output):
        _save_loss(ctx, output, inputs[reduction_at], len(inputs))
        ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, g_loss, *_g_rest):
        return _loss_input_grads(ctx, g_loss)

    torch.library.register_autograd(name, backward, setup_context=setup)


_register_loss_autograd("lightseq::linear_cross_entropy", reduction_at=4)


def _setup_loss(m: nn.Module, name: str, ignore_index: int, label_smoothing: float, reduction: str,
                logits_chunk_mib: int, cache_dir: Optional[str]) -> None:
    """The settings both losses check and keep (`name`: the class, for messages)."""
    m._name = f"lightseq.nn.{name}"
    if reduction not in _REDUCTIONS + ("none",):
        raise ArgumentError(f"{m._name}: reduction={reduction!r}; give 'mean', 'sum' or 'none'")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ArgumentTypeError(f"{m._name}: ignore_index is {a_type(ignore_index)}, not an int")
    m.ignore_index, m.label_smoothing, m.reduction = ignore_index, float(label_smoothing), reduction
    m.logits_chunk_mib, m.cache_dir = logits_chunk_mib, cache_dir
    m._bad = ErrorFlags()  # earlier calls' bad-target flags
    try:
        C = _native.extension()
    except Error:
        return
    issues = C.spec_issues(_spec_json(8, 8, torch.float32, m.label_smoothing, ignore_index, logits_chunk_mib))
    issues = [i for i in issues if i[0].startswith("criterion")]
    if issues:
        raise SpecError(f"{m._name}: " + "; ".join(f"{p} = {v}: {msg}" for p, v, msg in issues))


def _bad_target_message(m) -> str:
    return (f"{m._name}: an earlier call had a target outside [0, vocab) that is not ignore_index "
            f"{m.ignore_index}; it counted as ignored")


def _check_targets(m) -> None:
    """Waits for the calls so far and raises lightseq.ArgumentError if one had a bad target."""
    m._bad.check(m._message(), wait=True)


class LinearCrossEntropyLoss(nn.Module):
    """loss = cross_entropy(hidden · weightᵀ, targets, ignore_index=, label_smoothing=,
    reduction=) with the projection and the loss fused in chunks of rows (the [N, vocab] logits
    never exist whole). forward(hidden [..., H], weight [V, H], targets [...]) -> a float32 scalar.
    reduction 'mean' (over the targets that are not ignore_index, as torch) or 'sum'; 'none' runs
    PyTorch's implementation. The same definition as torch.nn.functional.cross_entropy; hidden and
    weight in float32, float16 or bfloat16 (weight is cast to hidden's dtype, as under autocast).
    Targets outside [0, V) other than ignore_index count as ignored and are reported by a
    lightseq.ArgumentError at a later call (read without synchronizing) or by check_targets().
    The gradients are those of the 'mean' loss, computed (in the inputs' dtype) with the loss and
    scaled by the incoming gradient afterwards, as fused linear + cross-entropy losses do; in
    float16 they are computed ×256 (divided out in float32), but entries far below float16's
    range (tiny probabilities over very many targets) can still be lost where a GradScaler with a
    larger scale would have kept them: bfloat16 has no such limit."""

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
                 logits_chunk_mib: int = 256, cache_dir: Optional[str] = None):
        super().__init__()
        _setup_loss(self, "LinearCrossEntropyLoss", ignore_index, label_smoothing, reduction, logits_chunk_mib,
                    cache_dir)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing:g}, "
                f"reduction={self.reduction!r}, logits_chunk_mib={self.logits_chunk_mib}")

    def torch_forward(self, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        """The same function in PyTorch (CPU inputs, reduction='none', the tests' reference)."""
        logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.to(hidden.dtype).t()
        loss = torch.nn.functional.cross_entropy(logits.float(), targets.reshape(-1), ignore_index=self.ignore_index,
                                                 label_smoothing=self.label_smoothing, reduction=self.reduction)
        return loss.view(targets.shape) if self.reduction == "none" else loss

    def forward(self, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
            if not isinstance(t, Tensor):
                raise ArgumentTypeError(f"lightseq.nn.LinearCrossEntropyLoss: {name} is {a_type(t)}, not a tensor")
        if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
            raise ArgumentError(f"lightseq.nn.LinearCrossEntropyLoss: weight {tuple(weight.shape)} must be "
                                f"[vocab, hidden] with hidden = hidden's last dimension {hidden.shape[-1]}")
        if targets.shape != hidden.shape[:-1] or targets.dtype not in (torch.int64, torch.int32):
            raise ArgumentError(f"lightseq.nn.LinearCrossEntropyLoss: targets must be integers of shape "
                                f"{tuple(hidden.shape[:-1])} (hidden's without its last dimension), got "
                                f"{targets.dtype} {tuple(targets.shape)}")
        if hidden.device.type != "cuda" or self.reduction == "none":
            return self.torch_forward(hidden, weight, targets)
        if weight.device != hidden.device or targets.device != hidden.device:
            raise ArgumentError("lightseq.nn.LinearCrossEntropyLoss: hidden, weight and targets must be on one device")
        self._bad.check(self._message())
        dtype = _ops.run_dtype(hidden.dtype)
        vocab, h = weight.shape
        lid = _criterion_for(_spec_json(vocab, h, dtype, self.label_smoothing, self.ignore_index,
                                        self.logits_chunk_mib), _ops.device_index(hidden), self.cache_dir)
        grads = torch.is_grad_enabled()
        loss, bad = _run_loss(
            torch.ops.lightseq.linear_cross_entropy, _linear_ce_impl, self.reduction,
            hidden.reshape(-1, h).to(dtype).contiguous(), weight.to(dtype).contiguous(),
            targets.reshape(-1).long().contiguous(), lid, self.reduction, grads and hidden.requires_grad,
            grads and weight.requires_grad)
        self._bad.watch(bad)
        return loss

    _message = _bad_target_message
    check_targets = _check_targets


# ---- cross-entropy over given logits --------------------------------------------------------------

@_native.assume_constant_result
def _logits_criterion_for(spec_json: str, device: int, cache_dir: Optional[str]) -> int:
    return _ops.layer_id(spec_json, device, cache_dir, "criterion")


def _ce_impl(logits: Tensor, targets: Tensor, layer_id: int, reduction: str,
                  grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_logits, n_tokens, bad_target) of the logits criterion `layer_id` on logits
    [N, V] and targets [N]: the loss reduced ('mean' over the counted targets, or 'sum') and, where
    `grad`, the gradient of the 'mean' loss (×_grad_scale; else an empty tensor)."""
    n = logits.shape[0]
    outs = _criterion_forward(layer_id, {"logits": logits, "targets": targets.view(n, 1)}, n, logits.device,
                              {"output": True})
    g = outs["grad_logits"] if grad else logits.new_empty((0,))
    return _reduced(outs, reduction), g, outs["n_tokens"], outs["bad_target"]


cross_entropy = torch.library.custom_op("lightseq::cross_entropy", _ce_impl, mutates_args=())


@cross_entropy.register_fake
def _ce_fake(logits, targets, layer_id, reduction, grad):
    return (logits.new_empty((), dtype=torch.float32), torch.empty_like(logits) if grad else logits.new_empty((0,)),
            logits.new_empty((1,), dtype=torch.float32), logits.new_empty((1,), dtype=torch.int32))


_register_loss_autograd("lightseq::cross_entropy", reduction_at=3)


class _EagerLoss(torch.autograd.Function):
    """A loss op outside torch.compile: its body called directly (as _ops._EagerLayer does for the
    layers: torch.library's per-call dispatch costs the host more than the op). body(*args) ->
    (loss, *gradients of args[0], args[1], ..., n_tokens, bad_target); backward scales them."""

    @staticmethod
    def forward(ctx, body, reduction: str, *args):
        out = body(*args)
        _save_loss(ctx, out, reduction, len(args))
        ctx.mark_non_differentiable(out[-2], out[-1])
        return out[0], out[-2], out[-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, _g_n, _g_bad):
        return (None, None, *_loss_input_grads(ctx, g_loss))


def _run_loss(op, body, reduction: str, *args) -> Tuple[Tensor, Tensor]:
    """(loss, bad_target flag) of a loss op: the custom op under torch.compile, else _EagerLoss."""
    if torch.compiler.is_compiling():
        out = op(*args)
        return out[0], out[-1]
    loss, _n, bad = _EagerLoss.apply(body, reduction, *args)
    return loss, bad


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """torch.nn.CrossEntropyLoss whose common case — logits [N, C] on a CUDA device in float32,
    float16 or bfloat16, integer targets [N], no class weights, reduction 'mean' or 'sum' — runs
    lightseq's fused kernel: softmax, label-smoothed loss and the logits' gradient in one pass over
    the logits (fp32 statistics), the gradient scaled by the loss's incoming gradient in backward.
    Everything else (class probabilities as targets, extra dimensions, class weights, 'none', CPU
    tensors) runs torch's own implementation, so the module is a drop-in for nn.CrossEntropyLoss.
    Targets outside [0, C) other than ignore_index count as ignored and are reported by a
    lightseq.ArgumentError at a later call (read without synchronizing) or by check_targets();
    torch raises for them instead. Memory: the gradient ([N, C], the logits' dtype) is made in the
    forward and kept until backward (torch keeps the logits instead)."""

    def __init__(self, weight: Optional[Tensor] = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0, cache_dir: Optional[str] = None):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        _setup_loss(self, "CrossEntropyLoss", ignore_index, label_smoothing, self.reduction, 256, cache_dir)

    _message = _bad_target_message
    check_targets = _check_targets

    def runs_lightseq(self, logits: Tensor, targets: Tensor) -> str:
        """Why this call runs torch's implementation ("" when lightseq's runs)."""
        if self.weight is not None:
            return "class weights"
        if self.reduction not in _REDUCTIONS:
            return f"reduction {self.reduction!r}"
        if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
            return "inputs that are not tensors"
        if logits.device.type != "cuda" or targets.device != logits.device:
            return f"logits on {logits.device}"
        if logits.dim() != 2 or targets.shape != logits.shape[:1]:
            return f"logits {tuple(logits.shape)} with targets {tuple(targets.shape)} (lightseq takes [N, C] and [N])"
        if targets.dtype not in (torch.int64, torch.int32):
            return f"{targets.dtype} targets (class probabilities)"
        if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"{logits.dtype} logits"
        if logits.shape[0] == 0:
            return "an empty batch"
        return ""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:  # noqa: A002 - torch's argument names
        if self.runs_lightseq(input, target):
            return super().forward(input, target)
        self._bad.check(self._message())
        lid = _logits_criterion_for(_spec_json(input.shape[1], 8, input.dtype, self.label_smoothing, self.ignore_index,
                                               256, logits=True), _ops.device_index(input), self.cache_dir)
        loss, bad = _run_loss(torch.ops.lightseq.cross_entropy, _ce_impl, self.reduction, input.contiguous(),
                              target.long().contiguous(), lid, self.reduction,
                              torch.is_grad_enabled() and input.requires_grad)
        self._bad.watch(bad)
        return loss
