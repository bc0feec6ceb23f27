"""lightseq.TrainStep: a whole Transformer's training step — embedding, encoder and decoder stacks,
output projection, label-smoothed cross-entropy, backward and Adam/AdamW — run by the C++ step
(runtime/step.h) as one schedule, replayed as a CUDA graph per batch shape, on the module's own
parameters.

    model = MT(...)  # lightseq.nn.Embedding or nn.Embedding, nn.Transformer, tied projection
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-4)
    step = lightseq.TrainStep(embedding=model.embed, transformer=model.transformer,
                              loss=nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=pad),
                              optimizer=opt, dtype=torch.bfloat16)
    for src, tgt_in, tgt_out in batches:
        loss = step(src, tgt_in, tgt_out)  # forward, backward and update; no host synchronization
        scheduler.step()                   # torch LR schedulers drive the step's learning rate

The modules describe the model; the step does not call their forward. Their parameters become
views of the step's arenas: after each step they hold the trained weights (fp32 modules trained in
a 16-bit dtype: the fp32 master weights), so evaluating, saving or exporting the model works as
before. In-place changes to them (load_state_dict) are picked up by the next step.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _native, _spec, optim
from ._embedding import Embedding as LsEmbedding
from ._embedding import EmbeddingConfig
from ._errors import ArgumentError, ArgumentTypeError, SpecError, Unsupported, a_type
from ._loss import LinearCrossEntropyLoss

_TYPESTR = {torch.float32: "<f4", torch.float16: "<f2", torch.bfloat16: "<i2", torch.int32: "<i4"}


def _device_array(owner, addr: int, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 1-d tensor over `numel` elements at device address `addr`, keeping `owner` (the memory's
    owner) alive while it or any view of it lives (torch holds the interface object)."""
    class _Array:
        pass
    a = _Array()
    a.owner = owner
    a.__cuda_array_interface__ = {"shape": (numel,), "typestr": _TYPESTR[dtype], "data": (addr, False),
                                  "version": 3, "strides": None, "stream": None}
    t = torch.as_tensor(a, device=device)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


# ---- the model's structure, read off its modules ------------------------------------------------

@dataclasses.dataclass
class _Structure:
    spec: dict
    tensors: Dict[str, nn.Parameter]  # the arena's state_dict name -> the module's parameter
    two_streams: bool                 # an encoder-decoder model: step(src, tgt, targets)
    pad: int                          # what pads a token stream (padding_idx)
    ignore_index: int                 # what pads a target stream


def _stacks(kind: str, module: nn.Module, dtype: torch.dtype, attention: str, causal: bool,
            what: str) -> Tuple[List[dict], Dict[str, nn.Parameter]]:
    """The spec's stacks of nn.TransformerEncoder / nn.TransformerDecoder `module` (consecutive
    layers of one configuration form one stack) and its parameters by arena name."""
    want = nn.TransformerEncoder if kind == "encoder" else nn.TransformerDecoder
    if not isinstance(module, want):
        raise ArgumentTypeError(f"lightseq.TrainStep: {what} is {a_type(module)}, not an nn.{want.__name__}")
    read = _spec.from_torch_encoder_layer if kind == "encoder" else _spec.from_torch_decoder_layer
    stacks: List[dict] = []
    last = None
    for i, layer in enumerate(module.layers):
        try:
            config = read(layer)
        except Unsupported as e:
            raise Unsupported(f"lightseq.TrainStep: {what}.layers.{i}: {e}") from None
        if config != last:
            layers = config.spec(dtype, attention=attention)["layers"]
            stacks.append(dict(layers[-1], type=kind))
            if kind == "encoder" and causal:
                stacks[-1]["causal"] = True
            last = config
        else:
            stacks[-1]["count"] += 1
    if not stacks:
        raise ArgumentError(f"lightseq.TrainStep: {what} has no layers")
    tensors = {f"{kind}.{n}": p for n, p in module.named_parameters() if not n.startswith("norm.")}
    norm = getattr(module, "norm", None)
    if norm is not None:
        eps = _spec._layer_norm(norm, f"{what}.norm")
        if eps != stacks[-1]["eps"]:
            raise Unsupported(f"lightseq.TrainStep: {what}.norm has eps {eps:g}, its layers {stacks[-1]['eps']:g} "
                              "(a final LayerNorm shares its stack's eps)")
        stacks[-1]["final_norm"] = True
        tensors[f"{kind}.norm.weight"] = norm.weight
        tensors[f"{kind}.norm.bias"] = norm.bias
    return stacks, tensors


def _embedding(embedding: nn.Module, dtype: torch.dtype, positions: str, max_positions: int,
               embed_scale: Optional[float], embed_dropout: Optional[float],
               default_dropout: float) -> Tuple[dict, Dict[str, nn.Parameter]]:
    if isinstance(embedding, LsEmbedding):
        c = embedding.config
        p = float(embedding.dropout.p) if embed_dropout is None else float(embed_dropout)
        return c.spec(dtype, p)["embedding"], {n: t for n, t in embedding.named_parameters()}
    if not isinstance(embedding, nn.Embedding):
        raise ArgumentTypeError(f"lightseq.TrainStep: embedding is {a_type(embedding)}; pass an nn.Embedding "
                                "(with positions=, embed_scale=) or a lightseq.nn.Embedding")
    for attr in ("max_norm", "sparse", "scale_grad_by_freq"):
        if getattr(embedding, attr):
            raise Unsupported(f"lightseq.TrainStep: the embedding has {attr}={getattr(embedding, attr)}")
    if positions not in ("sinusoidal",):
        raise ArgumentError(f"lightseq.TrainStep: positions={positions!r} with an nn.Embedding; give 'sinusoidal' "
                            "(fairseq's table, lightseq.nn.sinusoidal_table), or pass a lightseq.nn.Embedding, "
                            "which also has learned positions")
    V, H = embedding.num_embeddings, embedding.embedding_dim
    c = EmbeddingConfig(V, H, embedding.padding_idx, "sinusoidal", "index", int(max_positions), 0, False, 1e-5,
                        math.sqrt(H) if embed_scale is None else float(embed_scale), "embedded")
    p = default_dropout if embed_dropout is None else float(embed_dropout)
    return c.spec(dtype, p)["embedding"], {"embed_tokens.weight": embedding.weight}


def _criterion(loss: nn.Module) -> dict:
    if isinstance(loss, nn.CrossEntropyLoss):
        if loss.weight is not None:
            raise Unsupported("lightseq.TrainStep: a CrossEntropyLoss with class weights")
        smoothing, ignore, reduction, chunk = loss.label_smoothing, loss.ignore_index, loss.reduction, 256
    elif isinstance(loss, LinearCrossEntropyLoss):
        smoothing, ignore, reduction, chunk = (loss.label_smoothing, loss.ignore_index, loss.reduction,
                                               loss.logits_chunk_mib)
    else:
        raise ArgumentTypeError(f"lightseq.TrainStep: loss is {a_type(loss)}; pass an nn.CrossEntropyLoss or a "
                                "lightseq.nn.LinearCrossEntropyLoss")
    if reduction != "mean":
        raise Unsupported(f"lightseq.TrainStep: the loss's reduction is {reduction!r}; the step minimizes the mean "
                          "over the counted targets ('mean')")
    return {"type": "cross_entropy", "label_smoothing": float(smoothing), "ignore_index": int(ignore),
            "logits_chunk_mib": int(chunk)}


def _hyper(group: dict, key: str):
    v = group[key]
    return tuple(float(x) for x in v) if isinstance(v, (tuple, list)) else float(v)


def _optimizer(opt, clip_norm: float) -> dict:
    if isinstance(opt, optim.Adam):  # lightseq.optim's (AdamW is its subclass): its own clipping too
        kind = "adamw" if opt._decoupled else "adam"
        clip_norm = clip_norm or float(opt.param_groups[0].get("max_grad_norm", 0.0))
    elif isinstance(opt, torch.optim.AdamW):
        kind = "adamw"
    elif isinstance(opt, torch.optim.Adam):
        kind = "adamw" if opt.defaults.get("decoupled_weight_decay", False) else "adam"
    else:
        raise ArgumentTypeError(f"lightseq.TrainStep: optimizer is {a_type(opt)}; pass a torch.optim.AdamW or "
                                "torch.optim.Adam, or lightseq.optim's (its hyperparameters and its learning rate, "
                                "which LR schedulers change, drive the step's own Adam)")
    keys = ("lr", "betas", "eps", "weight_decay")
    first = opt.param_groups[0]
    for g in opt.param_groups:
        for k in keys:
            if _hyper(g, k) != _hyper(first, k):
                raise Unsupported(f"lightseq.TrainStep: the optimizer's parameter groups differ in {k}; the step "
                                  "updates every parameter with one set of hyperparameters")
        for k in ("amsgrad", "maximize"):
            if g.get(k, False):
                raise Unsupported(f"lightseq.TrainStep: the optimizer has {k}=True")
    return optim.spec_section(kind, dict(first, lr=_hyper(first, "lr")), clip_norm)


def _structure(embedding, encoder, decoder, output_projection, loss, optimizer, dtype, *, positions,
               max_positions, embed_scale, embed_dropout, causal, clip_norm, attention) -> _Structure:
    if encoder is None:
        raise ArgumentError("lightseq.TrainStep: give transformer= (an nn.Transformer) or encoder= (and decoder=)")
    layers, tensors = _stacks("encoder", encoder, dtype, attention, causal and decoder is None, "encoder")
    if decoder is not None:
        dec, t = _stacks("decoder", decoder, dtype, attention, False, "decoder")
        layers += dec
        tensors.update(t)
    hidden = layers[0]["hidden"]
    emb, t = _embedding(embedding, dtype, positions, max_positions, embed_scale, embed_dropout,
                        layers[0]["dropout"]["hidden"])
    tensors.update(t)
    if emb["hidden"] != hidden:
        raise ArgumentError(f"lightseq.TrainStep: the embedding is {emb['hidden']} wide, the layers {hidden}")
    table = tensors["embed_tokens.weight"]
    if output_projection is None or output_projection is table or (
            isinstance(output_projection, nn.Linear) and output_projection.weight is table):
        emb["tie_output"] = True
    else:
        if not isinstance(output_projection, nn.Linear):
            raise ArgumentTypeError(f"lightseq.TrainStep: output_projection is {a_type(output_projection)}; pass an "
                                    "nn.Linear(hidden, vocab, bias=False) or None (tied to the embedding table)")
        if output_projection.bias is not None:
            raise Unsupported("lightseq.TrainStep: the output projection has a bias")
        if tuple(output_projection.weight.shape) != (emb["vocab"], hidden):
            raise ArgumentError(f"lightseq.TrainStep: the output projection is {tuple(output_projection.weight.shape)}, "
                                f"expected [vocab, hidden] = [{emb['vocab']}, {hidden}]")
        emb["tie_output"] = False
        tensors["output_projection.weight"] = output_projection.weight
    spec = {"name": "lightseq-train-step", "precision": _spec.dtype_name(dtype), "embedding": emb, "layers": layers,
            "criterion": _criterion(loss), "optimizer": _optimizer(optimizer, clip_norm)}
    pad = emb["padding_idx"]
    return _Structure(spec, tensors, decoder is not None, pad, spec["criterion"]["ignore_index"])


def _check_coverage(s: _Structure, optimizer, layout) -> None:
    names = {n for n, _shape, _off in layout}
    missing = sorted(names - s.tensors.keys())
    if missing:
        raise ArgumentError(f"lightseq.TrainStep: the modules have no parameter for {', '.join(missing)}")
    extra = sorted(s.tensors.keys() - names)
    if extra:
        raise Unsupported(f"lightseq.TrainStep: the step has no place for {', '.join(extra)}")
    ours = {id(p) for p in s.tensors.values()}
    theirs = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if ours != theirs:
        raise ArgumentError("lightseq.TrainStep: the optimizer must hold exactly the parameters of the modules the "
                            f"step trains ({len(ours)} tensors; it holds {len(theirs)}, {len(ours & theirs)} of them)")
    for name, p in s.tensors.items():
        if not p.requires_grad:
            raise Unsupported(f"lightseq.TrainStep: {name} does not require grad (the step updates every parameter)")


def _communicator(C, group, device: torch.device):
    """lightseq's NCCL communicator over the ranks of a torch.distributed group: rank 0's id
    broadcast through the group, then every rank joins (collective)."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        raise ArgumentError("lightseq.TrainStep: process_group needs torch.distributed initialized "
                            "(torch.distributed.init_process_group)")
    why = C.comm_unavailable_reason()
    if why:
        raise ArgumentError(f"lightseq.TrainStep: process_group: {why}")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise ArgumentError("lightseq.TrainStep: this process is not a member of process_group")
    box = [C.comm_new_id() if rank == 0 else None]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group, device=device)
    return C.Communicator(box[0], rank, world, device.index or 0)


class TrainStep:
    """The whole training step of a Transformer (encoder-decoder, or encoder-only) whose parts are
    PyTorch modules, run by lightseq's C++ step: see the module docstring.

    embedding: a lightseq.nn.Embedding (token × scale + positions (+ types, LayerNorm) + dropout, as
      it is configured), or an nn.Embedding with `positions` ('sinusoidal': fairseq's table, positions
      0, 1, ...), `max_positions`, `embed_scale` (default √hidden) and `embed_dropout` (default the
      layers' hidden dropout). Padding tokens (padding_idx) embed as nn.Embedding does; their
      positions are masked as keys, and their targets must be the loss's ignore_index.
    transformer: an nn.Transformer, or encoder= (nn.TransformerEncoder) and optionally decoder=
      (nn.TransformerDecoder), batch_first or not (the step takes [batch, len] tokens). The
      decoder's self-attention is causal; an encoder-only model's is when causal=True.
    output_projection: None (tied to the embedding table) or nn.Linear(hidden, vocab, bias=False).
    loss: nn.CrossEntropyLoss(label_smoothing=, ignore_index=) (reduction 'mean') or
      lightseq.nn.LinearCrossEntropyLoss.
    optimizer: torch.optim.AdamW or Adam (or lightseq.optim's) over exactly these parameters; its
      hyperparameters are
      compiled in, its param_groups' lr is read at every step (LR schedulers work); its own state
      stays empty (the step keeps Adam's moments, fp32, and fp32 master weights for 16-bit dtypes).
    dtype: the compute dtype (default: the parameters'). float32 parameters trained in float16 or
      bfloat16 are the master weights themselves.
    clip_norm: global gradient-norm clipping (0: off). loss_scale: fp16's initial dynamic loss scale.
    pad_to_multiple: lengths are padded up to a multiple of it (padding tokens, ignored targets),
      so that varied lengths replay few CUDA graphs.
    process_group: data parallelism over a torch.distributed group (e.g. torch.distributed.group.WORLD,
      NCCL backend, one GPU per process): each process calls step() on its own batch and the update
      uses the mean gradient over every process's targets, summed through lightseq's own NCCL
      communicator as the backward produces it (each layer's gradient while the layers below run
      their backward, as DDP's buckets do). The parameters start as the group's rank 0 has them;
      each rank draws its own dropout masks. step() returns this process's loss.
    """

    def __init__(self, *, embedding: nn.Module, optimizer: torch.optim.Optimizer, loss: nn.Module,
                 transformer: Optional[nn.Transformer] = None, encoder: Optional[nn.Module] = None,
                 decoder: Optional[nn.Module] = None, output_projection: Optional[nn.Module] = None,
                 dtype: Optional[torch.dtype] = None, positions: str = "sinusoidal", max_positions: int = 1024,
                 embed_scale: Optional[float] = None, embed_dropout: Optional[float] = None, causal: bool = False,
                 clip_norm: float = 0.0, loss_scale: Optional[float] = None, cuda_graphs: bool = True,
                 pad_to_multiple: int = 1, attention: str = "unfused", seed: Optional[int] = None,
                 cache_dir: Optional[str] = None, process_group=None):
        if transformer is not None:
            if encoder is not None or decoder is not None:
                raise ArgumentError("lightseq.TrainStep: give transformer= or encoder=/decoder=, not both")
            if not isinstance(transformer, nn.Transformer):
                raise ArgumentTypeError(f"lightseq.TrainStep: transformer is {a_type(transformer)}, not an nn.Transformer")
            encoder, decoder = transformer.encoder, transformer.decoder
        if not isinstance(pad_to_multiple, int) or pad_to_multiple < 1:
            raise ArgumentError(f"lightseq.TrainStep: pad_to_multiple must be a positive int, got {pad_to_multiple!r}")
        _native.check_choice("lightseq.TrainStep", "attention", attention, "layers.attention")
        table = embedding.weight if isinstance(embedding, nn.Embedding) else getattr(
            getattr(embedding, "embed_tokens", None), "weight", None)
        if not isinstance(table, Tensor):
            raise ArgumentTypeError(f"lightseq.TrainStep: embedding is {a_type(embedding)}; pass an nn.Embedding or "
                                    "a lightseq.nn.Embedding")
        self.param_dtype = table.dtype
        self.dtype = dtype or table.dtype
        _spec.dtype_name(self.dtype)
        if table.device.type != "cuda":
            raise ArgumentError(f"lightseq.TrainStep: the model is on {table.device}; move it to a CUDA device first")
        self.device = table.device
        s = _structure(embedding, encoder, decoder, output_projection, loss, optimizer, self.dtype,
                       positions=positions, max_positions=max_positions, embed_scale=embed_scale,
                       embed_dropout=embed_dropout, causal=causal, clip_norm=clip_norm, attention=attention)
        for name, p in s.tensors.items():
            if p.device != self.device or p.dtype != self.param_dtype:
                raise ArgumentError(f"lightseq.TrainStep: {name} is {p.dtype} on {p.device}; every parameter must be "
                                    f"{self.param_dtype} on {self.device}")
        if self.param_dtype != self.dtype and self.param_dtype != torch.float32:
            raise ArgumentError(f"lightseq.TrainStep: {self.param_dtype} parameters cannot train in {self.dtype}: "
                                "give dtype equal to the parameters' or float32 parameters (the master weights)")
        C = _native.extension()
        self.spec = _spec.spec_json(s.spec)
        issues = C.spec_issues(self.spec)
        if issues:
            raise SpecError("lightseq.TrainStep: the model's spec breaks lightseq's rules:\n" + "\n".join(
                f"  {p} = {v}: {m}" for p, v, m in issues))
        self._structure = s
        self._model = C.CompiledModel.load(self.spec, self.device.index or 0, cache_dir)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))
        self._group = process_group
        self._comm = _communicator(C, process_group, self.device) if process_group is not None else None
        self._step = C.TrainStep(self._model, seed=seed, loss_scale=loss_scale, cuda_graphs=cuda_graphs,
                                 comm=self._comm)
        layout, total = self._step.layout()
        _check_coverage(s, optimizer, layout)
        self.optimizer = optimizer
        self.pad_to_multiple = pad_to_multiple
        a = self._step.addresses()
        arr = lambda key, dt: _device_array(self._step, a[key], total, dt, self.device)  # noqa: E731
        self._params = arr("params", self.dtype)
        self._grads = arr("grads", self.dtype)
        self._masters = arr("masters", torch.float32) if a["masters"] else None
        self._layout = {n: (tuple(shape), off) for n, shape, off in layout}
        # The module's parameters become views of the arena the step keeps exact: the fp32 master
        # weights when fp32 parameters train in 16 bits, else the parameters themselves.
        self._module_arena = self._masters if self.param_dtype != self.dtype else self._params
        with torch.no_grad():
            for name, p in s.tensors.items():
                shape, off = self._layout[name]
                if tuple(p.shape) != shape:
                    raise ArgumentError(f"lightseq.TrainStep: {name} is {tuple(p.shape)}, the model's spec makes it "
                                        f"{shape}")
                self._view(self._params, name).copy_(p)
                if self._masters is not None:
                    self._view(self._masters, name).copy_(p)
            if self._comm is not None:  # the group starts from rank 0's parameters, as DDP does
                import torch.distributed as dist
                src = dist.get_global_rank(process_group, 0)
                for arena in (self._params, self._masters):
                    if arena is not None:
                        dist.broadcast(arena, src, group=process_group)
            torch.cuda.current_stream(self.device).synchronize()
            for name, p in s.tensors.items():
                p.data = self._view(self._module_arena, name)
                p.grad = None
        self._tensors = list(s.tensors.values())
        self._version = self._versions()
        self._lr = None
        self._outputs = {}

    # ---- views ---------------------------------------------------------------------------------
    def _view(self, arena: Tensor, name: str) -> Tensor:
        shape, off = self._layout[name]
        return optim.flat_view(arena, off, shape)

    def parameter_names(self) -> List[str]:
        """The parameters the step trains, by their state_dict names in nn.Transformer's layout."""
        return list(self._layout)

    def gradient(self, name: str) -> Tensor:
        """The last step's gradient of parameter `name` (a view, in the compute dtype; overwritten by
        the next step). Note: after the update, not before clipping or unscaling."""
        if name not in self._layout:
            raise ArgumentError(f"lightseq.TrainStep: no parameter {name!r}; parameter_names() lists them")
        return self._view(self._grads, name)

    def _versions(self) -> int:
        return sum(p._version for p in self._tensors)

    def _sync_parameters(self) -> None:
        """After in-place changes to the module's parameters: derive the other copy from them."""
        with torch.no_grad():
            if self._masters is not None:
                if self._module_arena is self._masters:
                    self._params.copy_(self._masters)
                else:
                    self._masters.copy_(self._params)
        self._version = self._versions()

    # ---- a step --------------------------------------------------------------------------------
    def _tokens(self, t: Tensor, what: str, fill: int, length: Optional[int] = None) -> Tensor:
        if not isinstance(t, Tensor):
            raise ArgumentTypeError(f"lightseq.TrainStep: {what} is {a_type(t)}, not a tensor")
        if t.dim() != 2 or t.dtype not in (torch.int64, torch.int32):
            raise ArgumentError(f"lightseq.TrainStep: {what} must be a [batch, len] integer tensor, got {t.dtype} "
                                f"{tuple(t.shape)}")
        if t.device != self.device:
            raise ArgumentError(f"lightseq.TrainStep: {what} is on {t.device}, the model on {self.device}")
        if length is not None and t.shape[1] != length:
            raise ArgumentError(f"lightseq.TrainStep: {what} has {t.shape[1]} positions, the target tokens {length}")
        m = self.pad_to_multiple
        if t.shape[1] % m:
            t = torch.nn.functional.pad(t, (0, m - t.shape[1] % m), value=fill)
        return t.to(torch.int64).contiguous()

    def _batch(self, args) -> tuple:
        s = self._structure
        if s.two_streams:
            if len(args) != 3:
                raise ArgumentError("lightseq.TrainStep: an encoder-decoder model takes (src, tgt, targets)")
            src = self._tokens(args[0], "src", s.pad)
        else:
            if len(args) != 2:
                raise ArgumentError("lightseq.TrainStep: an encoder-only model takes (tokens, targets)")
            src = None
        tgt = self._tokens(args[-2], "tgt" if s.two_streams else "tokens", s.pad)
        targets = self._tokens(args[-1], "targets", s.ignore_index, args[-2].shape[1])
        if src is not None and src.shape[0] != tgt.shape[0]:
            raise ArgumentError(f"lightseq.TrainStep: src has {src.shape[0]} sequences, tgt {tgt.shape[0]}")
        return src, tgt, targets

    def _run_args(self, batch, token_types: Optional[Tensor], stream: int) -> Tuple[tuple, tuple]:
        """(run()'s and evaluate()'s arguments for a batch, the tensors they point into: keep them
        until the call has enqueued its copies), after the parameters' copies agree."""
        src, tgt, targets = self._batch(batch)
        types = self._types(token_types, tgt)
        if self._versions() != self._version:
            self._sync_parameters()
        ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
        B, T = tgt.shape
        args = (ptr(src), tgt.data_ptr(), targets.data_ptr(), B, src.shape[1] if src is not None else 0, T, stream,
                ptr(types))
        return args, (src, tgt, targets, types)

    def _set_lr(self, stream: int) -> None:
        # The step is the optimizer's update: an LR scheduler stepped after it must not warn that
        # optimizer.step() was never called (torch reads this flag).
        self.optimizer._opt_called = True
        lr = self.optimizer.param_groups[0]["lr"]
        if lr != self._lr:
            lr = float(lr)
            if not math.isfinite(lr) or lr <= 0:
                raise ArgumentError(f"lightseq.TrainStep: the optimizer's lr is {lr}; it must be positive and finite")
            for g in self.optimizer.param_groups[1:]:
                if float(g["lr"]) != lr:
                    raise Unsupported("lightseq.TrainStep: the optimizer's parameter groups have different lr")
            self._step.set_lr(lr, stream)
            self._lr = lr

    def _types(self, token_types: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
        """A batch's token types as the step reads them (a model with embedding token types; None:
        all type 0)."""
        if token_types is None:
            return None
        if not self._structure.spec["embedding"].get("token_types", 0):
            raise ArgumentError("lightseq.TrainStep: token_types given, but the embedding has no token types")
        t = self._tokens(token_types, "token_types", 0, None)
        if t.shape != like.shape:
            raise ArgumentError(f"lightseq.TrainStep: token_types is {tuple(token_types.shape)}, the tokens "
                                f"{tuple(like.shape)} (after padding to a multiple of {self.pad_to_multiple})")
        return t

    def __call__(self, *batch: Tensor, token_types: Optional[Tensor] = None) -> Tensor:
        """One training step (forward, backward, update) on (src, tgt, targets) — or (tokens,
        targets) for an encoder-only model — [batch, len] int64 CUDA tensors (token_types: the
        tokens' types, for an embedding with token types). Returns the mean loss over the counted
        targets (a float32 scalar on the device; reading it synchronizes)."""
        stream = torch.cuda.current_stream(self.device).cuda_stream
        args, _keep = self._run_args(batch, token_types, stream)
        self._set_lr(stream)
        self._step.run(*args)
        o = self._step.last_outputs()
        key = (o["loss"], o["rows"])
        views = self._outputs.get(key)
        if views is None:
            views = (_device_array(self._step, o["loss"], o["rows"], torch.float32, self.device),
                     _device_array(self._step, o["tokens"], 1, torch.float32, self.device))
            self._outputs[key] = views
        return views[0].sum() / views[1][0]

    def stats(self) -> dict:
        """The last step's loss and nll (means over its counted targets), its target count, the
        updates applied, the loss scale and the skipped (fp16 overflow) updates. Synchronizes."""
        st = self._step.stats(torch.cuda.current_stream(self.device).cuda_stream)
        return _mean_stats(st)

    def evaluate(self, *batch: Tensor, token_types: Optional[Tensor] = None) -> dict:
        """The loss of a batch without training (dropout off, nothing updated): stats()' keys."""
        stream = torch.cuda.current_stream(self.device).cuda_stream
        args, _keep = self._run_args(batch, token_types, stream)
        return _mean_stats(self._step.evaluate(*args))

    def save(self, path: str) -> None:
        """The whole training state (weights, master weights, moments, step count, loss scale,
        dropout stream) as one file, written atomically."""
        self._step.save(str(path), torch.cuda.current_stream(self.device).cuda_stream)

    def load(self, path: str) -> None:
        """Restores save()'s state (refuses a file of another model); the module sees it."""
        self._step.load(str(path), torch.cuda.current_stream(self.device).cuda_stream)
        self._version = self._versions()

    @property
    def graphs_captured(self) -> int:
        return self._step.graphs_captured

    @property
    def graph_replays(self) -> int:
        return self._step.graph_replays

    def __repr__(self) -> str:
        s = json.loads(self.spec)
        layers = ", ".join(f"{l['count']}×{l['type']} {l['hidden']}/{l['heads']}/{l['ffn']} {l['norm']}-LN"
                           for l in s["layers"])
        return (f"lightseq.TrainStep({layers}; vocab {s['embedding']['vocab']}, {s['precision']}, "
                f"{s['optimizer']['type']}, {len(self._layout)} tensors)")


def _mean_stats(st: dict) -> dict:
    n = max(st["tokens"], 1)
    out = dict(st)
    out["loss"] = st["loss"] / n
    out["nll"] = st["nll"] / n
    return out
