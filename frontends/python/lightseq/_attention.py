"""lightseq.attention: the fused attention (flash-style, on tensor cores, dropout included) as a
function, over a padded batch or a packed batch of variable lengths, with autograd.

    out = lightseq.attention(q, k, v, causal=True, dropout_p=0.1)        # q: [B, T, heads, d]
    out = lightseq.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu,  # q: [total, heads, d]
                             max_seqlen_q=longest, max_seqlen_k=longest)

The kernels are the ones compiled layers run (runtime/fused_attention.h), compiled on first use of
a (dtype, head dim, mask, dropout) variant and kept in the disk cache. Dropout draws from torch's
CUDA generator on the device (graph-safe: a captured call draws afresh at each replay); a packed
batch drops the entries its padded form (to max_seqlen_q, max_seqlen_k) drops."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import _native, _ops
from ._errors import ArgumentError, ArgumentTypeError, Unsupported, a_type
from ._flags import ErrorFlags

_HALVES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_handles: Dict[Tuple[str, int, int, Optional[str]], object] = {}
_flags = ErrorFlags()


def _handle(dtype: torch.dtype, head_dim: int, device: int, cache_dir: Optional[str]):
    key = (_HALVES[dtype], head_dim, device, cache_dir)
    found = _handles.get(key)
    if found is None:
        found = _handles[key] = _native.extension().FusedAttention(key[0], head_dim, device, cache_dir)
    return found


def _bad(what: str):
    raise ArgumentError(f"lightseq.attention: {what}")


def _rows(t: Tensor, lead: int) -> Tuple[Tensor, int]:
    """t [..lead dims.., heads, d] as token rows: the heads of a row contiguous (head h at columns
    h·d), rows `ld` elements apart (ld a multiple of 8), lead dims laid out as rows one after
    another; a tensor that is not (a transposed view, a slice of odd stride) is copied. Returns the
    tensor and ld."""
    heads, d = t.shape[-2], t.shape[-1]
    ok = t.stride(-1) == 1 and (heads == 1 or t.stride(-2) == d)
    ld = t.stride(lead - 1)
    if lead == 2:  # [B, T, ...]: batch element b's rows follow element b - 1's
        ok = ok and (t.shape[0] == 1 or t.stride(0) == t.shape[1] * ld)
    ok = ok and ld % 8 == 0 and ld >= heads * d and t.data_ptr() % 16 == 0
    if not ok:
        t = t.contiguous()
        if t.data_ptr() % 16 != 0:
            t = t.clone()
        ld = heads * d
    return t, ld


def _grad_views(ts, lds, leads):
    """The gradients of q, k, v in their token layouts (rows ld apart, as the kernels write them),
    as views of fresh buffers: tensors that are column slices of one buffer's rows (q, k and v of
    one packed projection) share one buffer of that row width, so a packed input's gradient costs
    no more than the input."""
    out = [None] * len(ts)
    groups: Dict[tuple, list] = {}
    for i, (t, ld, lead) in enumerate(zip(ts, lds, leads)):
        key = (t.untyped_storage().data_ptr(), ld, tuple(t.shape[:lead]), t.storage_offset() // ld)
        groups.setdefault(key, []).append(i)
    for (_, ld, lead_shape, _), members in groups.items():
        spans = sorted((ts[i].storage_offset() % ld, i) for i in members)
        width = ts[members[0]].shape[-2] * ts[members[0]].shape[-1]
        shared = all(b[0] >= a[0] + width for a, b in zip(spans, spans[1:])) and spans[-1][0] + width <= ld
        rows = 1
        for n in lead_shape:
            rows *= n
        if shared:
            buf = torch.empty(rows, ld, dtype=ts[members[0]].dtype, device=ts[members[0]].device)
            for col, i in spans:
                out[i] = buf[:, col:col + width].view(ts[i].shape)
        else:
            for _, i in spans:
                buf = torch.empty(rows, ld, dtype=ts[i].dtype, device=ts[i].device)
                out[i] = buf[:, :width].view(ts[i].shape)
    return out


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, pad, call_meta):
        handle, lead_q, lead_k, batch, q_len, k_len, causal, scale, dropout_p = call_meta
        q, ld_q = _rows(q, lead_q)
        k, ld_k = _rows(k, lead_k)
        v, ld_v = _rows(v, lead_k)
        if ld_k != ld_v:  # one row stride for k and v (the kernels take one)
            k, v = k.contiguous(), v.contiguous()
            ld_k = ld_v = k.shape[-2] * k.shape[-1]
        heads = q.shape[-2]
        device = q.device
        rows_q, rows_k = q[..., 0, 0].numel(), k[..., 0, 0].numel()  # each side's token rows
        rng = _ops._draw_rng(device, dropout_p > 0)
        # lse: [batch·heads, q_len] padded, [heads, total_q] packed
        lse_entries = heads * rows_q if cu_q is not None else batch * heads * q_len
        call = (q.data_ptr(), k.data_ptr(), v.data_ptr(), ld_q, ld_k, _ptr(cu_q), _ptr(cu_k), _ptr(pad), batch,
                heads, q_len, k_len, rows_q, rows_k, causal, scale, dropout_p,
                rng.data_ptr() if dropout_p > 0 else 0)
        out = torch.empty(q.shape, dtype=q.dtype, device=device)
        lse = torch.empty(lse_entries, dtype=torch.float32, device=device)
        bad = torch.zeros(1, dtype=torch.int32, device=device) if cu_q is not None or cu_k is not None else None
        handle.forward(call, out.data_ptr(), lse.data_ptr(), _ptr(bad), _ops.stream_of(device.index))
        if bad is not None:
            _flags.watch(bad)
        ctx.save_for_backward(q, k, v, out, lse, rng, cu_q, cu_k, pad)
        ctx.meta = (handle, lead_q, lead_k, ld_q, ld_k, batch, q_len, k_len, rows_q, rows_k, causal, scale,
                    dropout_p)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse, rng, cu_q, cu_k, pad = ctx.saved_tensors
        handle, lead_q, lead_k, ld_q, ld_k, batch, q_len, k_len, rows_q, rows_k, causal, scale, dropout_p = ctx.meta
        grad_out = grad_out.contiguous()
        if grad_out.data_ptr() % 16 != 0:
            grad_out = grad_out.clone()
        call = (q.data_ptr(), k.data_ptr(), v.data_ptr(), ld_q, ld_k, _ptr(cu_q), _ptr(cu_k), _ptr(pad), batch,
                q.shape[-2], q_len, k_len, rows_q, rows_k, causal, scale, dropout_p,
                rng.data_ptr() if dropout_p > 0 else 0)
        gq, gk, gv = _grad_views((q, k, v), (ld_q, ld_k, ld_k), (lead_q, lead_k, lead_k))
        nbytes = handle.workspace_bytes(call)
        workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=q.device)
        handle.backward(call, out.data_ptr(), lse.data_ptr(), grad_out.data_ptr(), gq.data_ptr(),
                        gk.data_ptr(), gv.data_ptr(), workspace.data_ptr(), nbytes,
                        _ops.stream_of(q.device.index))
        return gq, gk, gv, None, None, None, None


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _check_cu(cu: Optional[Tensor], name: str, device: torch.device, tokens: int) -> Optional[Tensor]:
    if cu is None:
        return None
    if not isinstance(cu, Tensor):
        raise ArgumentTypeError(f"lightseq.attention: {name} is {a_type(cu)}, not a tensor")
    if cu.dim() != 1 or cu.numel() < 2 or cu.dtype != torch.int32 or cu.device != device:
        _bad(f"{name} must be an int32 tensor [batch + 1] of cumulative sequence offsets on {device}, "
             f"got a {cu.dtype} tensor of shape {list(cu.shape)} on {cu.device}")
    return cu.contiguous()


def _longest(cu: Tensor, name: str, tokens: int) -> int:
    """The longest sequence of cu (one device-to-host copy: pass max_seqlen_* to avoid it), checking
    that cu starts at 0, never decreases and ends at the token count."""
    host = cu.tolist()
    lens = [b - a for a, b in zip(host, host[1:])]
    if host[0] != 0 or min(lens) < 0 or host[-1] != tokens:
        _bad(f"{name} must rise from 0 to the {tokens} rows of its tensor, never decreasing; got {host[:8]}"
             f"{' ...' if len(host) > 8 else ''}")
    return max(lens)


def attention(q: Tensor, k: Tensor, v: Tensor, *, cu_seqlens_q: Optional[Tensor] = None,
              cu_seqlens_k: Optional[Tensor] = None, max_seqlen_q: Optional[int] = None,
              max_seqlen_k: Optional[int] = None, key_padding_mask: Optional[Tensor] = None,
              causal: bool = False, dropout_p: float = 0.0, scale: Optional[float] = None,
              cache_dir: Optional[str] = None) -> Tensor:
    """softmax(q·kᵀ·scale + mask) (dropped) · v, each head apart, without materializing the scores.

    Padded: q [B, T, heads, d], k and v [B, S, heads, d]; key_padding_mask [B, S] (True or nonzero:
    a padding key) optional. Packed (variable lengths, no padding): q [total_q, heads, d], k and v
    [total_k, heads, d], with cu_seqlens_q and/or cu_seqlens_k (int32 [B + 1]: sequence b holds rows
    cu[b] .. cu[b + 1]) and max_seqlen_q / max_seqlen_k the longest sequences (computed from
    cu_seqlens when not given, at the cost of a device-to-host copy; a given maximum shorter than a
    sequence raises lightseq.ArgumentError at a later call). causal: query i sees key j when
    j <= i + (keys - queries) of its sequence. dropout_p: of the probabilities (pass 0 in eval).
    scale: default 1/sqrt(d). float16 or bfloat16, head dim a multiple of 16 up to 128, on a CUDA
    device; q, k and v may be views (e.g. slices of one packed [.., 3, heads, d] projection) whose
    heads are contiguous. Returns out shaped like q."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ArgumentTypeError(f"lightseq.attention: {name} is {a_type(t)}, not a tensor")
    if q.dtype not in _HALVES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise Unsupported(f"lightseq.attention: q, k, v of dtype {q.dtype}, {k.dtype}, {v.dtype}: the fused "
                          "kernels run float16 or bfloat16, all three alike")
    if not (q.is_cuda and k.device == q.device and v.device == q.device):
        _bad(f"q, k and v must be on one CUDA device, got {q.device}, {k.device}, {v.device}")
    if _flags.pending:  # an earlier packed call's lengths, reported once its flag is back
        _flags.check("lightseq.attention: a packed sequence was longer than the max_seqlen_q / "
                     "max_seqlen_k given (only its first rows were computed): pass the longest lengths")
    packed_q, packed_k = cu_seqlens_q is not None, cu_seqlens_k is not None
    lead_q, lead_k = (1 if packed_q else 2), (1 if packed_k else 2)
    if q.dim() != lead_q + 2 or k.dim() != lead_k + 2 or v.shape != k.shape:
        _bad(f"q must be [{'total_q' if packed_q else 'B, T'}, heads, d] and k, v alike "
             f"[{'total_k' if packed_k else 'B, S'}, heads, d]; got q {list(q.shape)}, k {list(k.shape)}, "
             f"v {list(v.shape)}")
    heads, d = q.shape[-2], q.shape[-1]
    if k.shape[-2:] != q.shape[-2:]:
        _bad(f"k and v have heads, d = {tuple(k.shape[-2:])}, q {tuple(q.shape[-2:])}: they must agree")
    cu_q = _check_cu(cu_seqlens_q, "cu_seqlens_q", q.device, q.shape[0])
    cu_k = _check_cu(cu_seqlens_k, "cu_seqlens_k", q.device, k.shape[0])
    batch = (cu_q.numel() - 1) if packed_q else q.shape[0]
    batch_k = (cu_k.numel() - 1) if packed_k else k.shape[0]
    if batch_k != batch:
        _bad(f"q has {batch} sequences, k and v {batch_k}")
    q_len = (max_seqlen_q if max_seqlen_q is not None else _longest(cu_q, "cu_seqlens_q", q.shape[0])) \
        if packed_q else q.shape[1]
    k_len = (max_seqlen_k if max_seqlen_k is not None else _longest(cu_k, "cu_seqlens_k", k.shape[0])) \
        if packed_k else k.shape[1]
    pad = None
    if key_padding_mask is not None:
        rows = k.shape[0] if packed_k else batch * k_len
        if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype not in (torch.bool, torch.uint8) \
                or key_padding_mask.numel() != rows or key_padding_mask.device != q.device:
            _bad(f"key_padding_mask must be a bool or uint8 tensor of {rows} elements "
                 f"({'one per key row' if packed_k else '[B, S]'}) on {q.device}")
        pad = key_padding_mask.contiguous().view(torch.uint8) if key_padding_mask.dtype == torch.bool \
            else key_padding_mask.contiguous()
    if not 0.0 <= dropout_p < 1.0:
        _bad(f"dropout_p {dropout_p} must be in [0, 1)")
    if scale is None:
        scale = d ** -0.5
    if d % 16 != 0 or d > 128 or d <= 0:
        raise Unsupported(f"lightseq.attention: head dim {d}: the fused kernels take multiples of 16 up to 128")
    handle = _handle(q.dtype, d, q.device.index, cache_dir)
    out, _ = _Attention.apply(q, k, v, cu_q, cu_k, pad,
                              (handle, lead_q, lead_k, batch, int(q_len), int(k_len), bool(causal),
                               float(scale), float(dropout_p)))
    return out
