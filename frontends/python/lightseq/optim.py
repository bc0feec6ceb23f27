"""lightseq.optim.Adam and AdamW: torch.optim optimizers whose update is lightseq's compiled
multi-tensor Adam (templates/adam.cuh through the spec's `optimizer` layer): each parameter group's
parameters of one dtype and device live in one flat arena, updated by three launches whatever the
number of tensors (the gradient norm for clipping, the update, the step count), with fp32 master
weights and moments for 16-bit parameters, and the learning rate and step count read from device
memory (capturable: a CUDA graph of a training step replays with the current values).

    opt = lightseq.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-4)
    loss.backward(); opt.step(); opt.zero_grad()

Drop-in for torch.optim.Adam / AdamW (decoupled weight decay): param groups, LR schedulers (a
float lr is copied to the device when it changes; a CUDA tensor lr is read where it lives),
torch.amp.GradScaler with float32 parameters (scaler.step(opt) unscales the gradients first; for
float16 parameters the optimizer's own dynamic `loss_scale`), torch.nn.utils.clip_grad_norm_
or the built-in `max_grad_norm` (one arena only), and state_dict() / load_state_dict() in
torch.optim.AdamW's format both ways (plus each 16-bit parameter's fp32 "master_param").

At the first step (or load_state_dict) the parameters move into the arena: each becomes a view of
it (as apex's flat optimizers do), and so does its .grad. Moving the model afterwards (.to(),
.cuda()) detaches them: build the optimizer after the model is where it trains. The parameters of a
group are updated together: a step where some of them have no gradient raises (put such
parameters in their own group, or freeze them); a group where none has one is skipped.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _native, _ops, _spec
from ._errors import ArgumentError, Unsupported

__all__ = ["Adam", "AdamW"]


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed
        return False
    return isinstance(t, DTensor)


def flat_view(flat: Tensor, offset: int, shape) -> Tensor:
    """The tensor of `shape` at element `offset` of a flat arena (this module's, or the C++ step's
    in lightseq.TrainStep)."""
    return flat[offset:offset + math.prod(shape)].view(shape)


def spec_section(kind: str, group: dict, clip_norm: float) -> dict:
    """The spec's `optimizer` section (docs/spec.md) of a param group's hyperparameters: what
    lightseq.optim compiles, and what lightseq.TrainStep reads off a torch or lightseq optimizer."""
    lr = group["lr"]
    return {"type": kind, "lr": 1e-3 if isinstance(lr, Tensor) else float(lr),
            "betas": [float(b) for b in group["betas"]], "eps": float(group["eps"]),
            "weight_decay": float(group["weight_decay"]), "clip_norm": float(clip_norm)}


class _Arena:
    """One group's parameters of one dtype and device, flat."""

    def __init__(self, params: List[Tensor], group: dict, decoupled: bool, cache_dir: Optional[str],
                 loss_scale: float):
        C = _native.extension()
        p0, align = params[0], C.ARENA_ALIGN_ELEMS
        self.params, self.device, self.dtype = params, p0.device, p0.dtype
        self.offsets, n = [], 0
        for p in params:
            self.offsets.append(n)
            n += (p.numel() + align - 1) // align * align
        self.numel = max(n, align)
        dev = self.device
        self.flat = torch.zeros(self.numel, dtype=self.dtype, device=dev)
        self.grads = torch.zeros(self.numel, dtype=self.dtype, device=dev)
        self.masters = torch.zeros(self.numel, dtype=torch.float32, device=dev) if self.dtype != torch.float32 else None
        self.exp_avg = torch.zeros(self.numel, dtype=torch.float32, device=dev)
        self.exp_avg_sq = torch.zeros(self.numel, dtype=torch.float32, device=dev)
        # OptimState (templates/common/adam_types.cuh), its bytes as the extension makes them
        state = torch.frombuffer(bytearray(C.initial_optim_state(loss_scale)), dtype=torch.uint8)
        self.state = state.to(dev)
        self.step_at = C.OPTIM_STATE_STEP_OFFSET // 4
        self.lr = torch.zeros(1, dtype=torch.float32, device=dev)
        self.lr_value = None
        with torch.no_grad():
            for p, off in zip(params, self.offsets):
                self.view(self.flat, p, off).copy_(p)
                p.data = self.view(self.flat, p, off)
            if self.masters is not None:
                self.masters.copy_(self.flat)
        self.grad_views = [self.view(self.grads, p, off) for p, off in zip(params, self.offsets)]
        self.decoupled, self.cache_dir = decoupled, cache_dir
        self.key, self.layer = None, None
        self.version = self.versions()

    def versions(self) -> int:
        """The parameters' in-place change counters: a change made outside step() (load_state_dict
        of the model) is seen, and the master weights are taken from the parameters again."""
        return sum(p._version for p in self.params)

    def layer_for(self, group: dict) -> int:
        """The compiled optimizer layer of the group's current hyperparameters (compiled in: betas,
        eps, weight decay, clipping; a change compiles, or finds in the cache, another)."""
        key = (tuple(float(b) for b in group["betas"]), float(group["eps"]), float(group["weight_decay"]),
               float(group.get("max_grad_norm", 0.0)))
        if key != self.key:
            # lr is not compiled in (the kernel reads it from device memory): any valid value
            section = spec_section("adamw" if self.decoupled else "adam", dict(group, lr=1e-3), key[-1])
            spec = {"name": "lightseq-optim", "precision": _spec.dtype_name(self.dtype), "optimizer": section}
            self.layer = _ops.layer_id(_spec.spec_json(spec), _ops.device_index(self.flat), self.cache_dir,
                                       "optimizer")
            self.key = key
        return self.layer

    @staticmethod
    def view(flat: Tensor, p: Tensor, off: int) -> Tensor:
        return flat_view(flat, off, p.shape)

    def step_count(self) -> Tensor:
        return self.state.view(torch.int32)[self.step_at:self.step_at + 1]

    def point_state(self, state: dict) -> None:
        """The optimizer's per-parameter state (what state_dict() packs) as views of this arena."""
        for p, off in zip(self.params, self.offsets):
            state[p] = {"step": self.step_count(), "exp_avg": self.view(self.exp_avg, p, off),
                        "exp_avg_sq": self.view(self.exp_avg_sq, p, off)}
            if self.masters is not None:
                state[p]["master_param"] = self.view(self.masters, p, off)

    def run(self, group: dict) -> None:
        lay = _ops.layer(self.layer_for(group))
        if self.masters is not None and self.versions() != self.version:
            self.masters.copy_(self.flat)
            self.version = self.versions()
        lr = group["lr"]
        if isinstance(lr, Tensor):
            if lr.device != self.device or lr.dtype != torch.float32 or lr.numel() != 1:
                raise ArgumentError(f"lightseq.optim: a tensor lr must be one float32 on {self.device}, got "
                                    f"{lr.dtype} {tuple(lr.shape)} on {lr.device}")
            lr_t = lr
        else:
            lr = float(lr)
            if not (math.isfinite(lr) and lr >= 0):
                raise ArgumentError(f"lightseq.optim: lr {lr} must be finite and ≥ 0")
            if lr != self.lr_value:
                self.lr.fill_(lr)
                self.lr_value = lr
            lr_t = self.lr
        named = {"params": self.flat, "grads": self.grads, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                 "lr": lr_t, "optim_state": self.state, "master_params": self.masters}
        dims = [self.numel, 1, 0]
        alloc, _keep = _ops._allocator(self.device)
        lay.handle.forward(_ops._ptrs([named[e.name] for e in lay.forward]), *dims, [0.0] * 5, 0, 0, 0, 0,
                           torch.cuda.current_stream(self.device).cuda_stream, alloc)


class Adam(torch.optim.Optimizer):
    """torch.optim.Adam's interface (weight_decay: L2, added to the gradient), run by lightseq's
    multi-tensor kernel; see the module docstring. max_grad_norm > 0 clips the gradients to that
    global norm (over all parameters; one arena only) before the update, as
    torch.nn.utils.clip_grad_norm_ does."""

    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 *, max_grad_norm: float = 0.0, loss_scale: float = 1.0, cache_dir: Optional[str] = None):
        for name, v, ok in (("lr", lr, lambda x: isinstance(x, Tensor) or (math.isfinite(x) and x >= 0)),
                            ("eps", eps, lambda x: math.isfinite(x) and x > 0),
                            ("weight_decay", weight_decay, lambda x: math.isfinite(x) and x >= 0),
                            ("max_grad_norm", max_grad_norm, lambda x: math.isfinite(x) and x >= 0)):
            if not ok(v):
                raise ArgumentError(f"lightseq.optim.{type(self).__name__}: {name}={v} is out of range")
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ArgumentError(f"lightseq.optim.{type(self).__name__}: betas={betas}; give two numbers in [0, 1)")
        defaults = dict(lr=lr, betas=tuple(float(b) for b in betas), eps=float(eps), weight_decay=float(weight_decay),
                        max_grad_norm=float(max_grad_norm), amsgrad=False, maximize=False, foreach=None,
                        capturable=True, differentiable=False, fused=None,
                        decoupled_weight_decay=self._decoupled)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if _is_dtensor(p):
                    # Its arena would take the parameters' storage from under FSDP2, whose
                    # all-gathers read its own shards: refused rather than trained wrong.
                    raise Unsupported(
                        f"lightseq.optim.{type(self).__name__}: a DTensor parameter (torch.distributed's "
                        "fully_shard / FSDP2 or tensor parallelism) is not supported yet: use "
                        "torch.optim.AdamW(fused=True) for sharded parameters (compiled layers work under "
                        "fully_shard), or lightseq.TrainStep(process_group=...) for data parallelism")
        self.cache_dir = cache_dir
        if not (math.isfinite(loss_scale) and loss_scale > 0):
            raise ArgumentError(f"lightseq.optim.{type(self).__name__}: loss_scale={loss_scale} must be positive")
        self._loss_scale = float(loss_scale)
        self._arenas: Optional[List[Tuple[int, _Arena]]] = None  # (param group index, its arena)

    @property
    def loss_scale(self) -> Tensor:
        """float16 parameters' dynamic loss scale, a float32 device tensor [1] (read without
        synchronizing): multiply the loss by it before backward. A step whose gradients hold an
        inf or NaN is skipped (weights and moments untouched) and halves it; 2000 good steps in a
        row double it (torch.amp.GradScaler's defaults). Other dtypes: 1 (use GradScaler with float32
        parameters under fp16 autocast)."""
        arenas = [a for _, a in self._build()]
        fp16 = [a for a in arenas if a.dtype == torch.float16]
        if len(fp16) > 1:
            raise Unsupported("lightseq.optim: loss_scale with float16 parameters in several groups or devices")
        return fp16[0].state.view(torch.float32)[0:1] if fp16 else torch.ones(1, device=arenas[0].device)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # a torch.optim state_dict's groups lack lightseq's keys
            for k, v in self.defaults.items():
                if k != "params":
                    group.setdefault(k, v)

    # ---- arenas -----------------------------------------------------------------------------
    def _build(self) -> List[Tuple[int, _Arena]]:
        if self._arenas is not None:
            return self._arenas
        arenas = []
        for gi, group in enumerate(self.param_groups):
            by_kind = {}
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                if p.device.type != "cuda":
                    raise ArgumentError(f"lightseq.optim: a parameter of group {gi} is on {p.device}; lightseq's "
                                        "Adam runs on CUDA devices (move the model before the first step)")
                _spec.dtype_name(p.dtype)
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            for (_dev, _dt), ps in by_kind.items():
                arenas.append((gi, _Arena(ps, group, self._decoupled, self.cache_dir,
                                          self._loss_scale if _dt == torch.float16 else 1.0)))
        clipping = [gi for gi, _ in arenas if self.param_groups[gi].get("max_grad_norm", 0.0) > 0]
        if clipping and len(arenas) > 1:
            raise Unsupported("lightseq.optim: max_grad_norm clips over one arena, and these parameters make "
                              f"{len(arenas)} (param groups × dtypes × devices); clip with "
                              "torch.nn.utils.clip_grad_norm_ before step() instead")
        self._arenas = arenas
        for _, a in arenas:
            a.point_state(self.state)
        return arenas

    # ---- the update -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, a in self._build():
            grads = [p.grad for p in a.params]
            missing = [i for i, g in enumerate(grads) if g is None]
            if len(missing) == len(grads):
                continue
            if missing:
                raise Unsupported(f"lightseq.optim: {len(missing)} of the {len(grads)} parameters of group {gi} have "
                                  "no gradient this step (shapes " + ", ".join(str(tuple(a.params[i].shape))
                                                                         for i in missing[:4])
                                  + "); lightseq's Adam updates a group's parameters together: put parameters that "
                                  "may get no gradient in their own param group, or freeze them (requires_grad=False)")
            stale = [i for i, g in enumerate(grads) if g.data_ptr() != a.grad_views[i].data_ptr()]
            if stale:  # gradients made anew (zero_grad(set_to_none=True)): into the arena, and keep it
                for i in stale:
                    if grads[i].is_sparse:
                        raise Unsupported("lightseq.optim: sparse gradients")
                torch._foreach_copy_([a.grad_views[i] for i in stale], [grads[i] for i in stale])
                for i in stale:
                    a.params[i].grad = a.grad_views[i]
            a.run(self.param_groups[gi])
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """set_to_none=False zeroes each arena's gradients in one launch and keeps them its views
        (the next backward accumulates into the arena); True sets them to None, as torch does."""
        if set_to_none or self._arenas is None:
            return super().zero_grad(set_to_none)
        for _, a in self._arenas:
            a.grads.zero_()
            for p, v in zip(a.params, a.grad_views):
                p.grad = v
        managed = {id(p) for _, a in self._arenas for p in a.params}
        for g in self.param_groups:
            for p in g["params"]:
                if id(p) not in managed and p.grad is not None:
                    p.grad.zero_()

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self):
        """torch.optim.Adam(W)'s format: per parameter "step" (a float32 tensor), "exp_avg",
        "exp_avg_sq" (float32), and for 16-bit parameters "master_param" (their fp32 values)."""
        sd = super().state_dict()
        out = {}
        for k, s in sd["state"].items():
            out[k] = {n: (v.float().reshape(()) if n == "step" else v.detach().clone()) for n, v in s.items()}
        sd["state"] = out
        return sd

    def load_state_dict(self, state_dict) -> None:
        """From this class's or torch.optim.Adam(W)'s state_dict (of the same parameters)."""
        raw = {int(k): dict(v) for k, v in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        arenas = self._build()
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        with torch.no_grad():
            for _, a in arenas:
                steps = set()
                for p, off in zip(a.params, a.offsets):
                    s = raw.get(index[id(p)])
                    if s is None:
                        continue
                    a.view(a.exp_avg, p, off).copy_(s["exp_avg"])
                    a.view(a.exp_avg_sq, p, off).copy_(s["exp_avg_sq"])
                    if a.masters is not None:
                        a.view(a.masters, p, off).copy_(s.get("master_param", p))
                    steps.add(int(float(s["step"])))
                if len(steps) > 1:
                    raise ArgumentError(f"lightseq.optim: the state_dict's parameters of one group have different "
                                        f"step counts {sorted(steps)}; lightseq's Adam keeps one per group")
                if steps:
                    a.step_count().fill_(steps.pop())
        for _, a in arenas:  # super() replaced the state with casted copies: point it at the arenas again
            a.point_state(self.state)


class AdamW(Adam):
    """torch.optim.AdamW's interface (decoupled weight decay, default 0.01); see Adam."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 *, max_grad_norm: float = 0.0, loss_scale: float = 1.0, cache_dir: Optional[str] = None):
        super().__init__(params, lr, betas, eps, weight_decay, max_grad_norm=max_grad_norm, loss_scale=loss_scale,
                         cache_dir=cache_dir)
