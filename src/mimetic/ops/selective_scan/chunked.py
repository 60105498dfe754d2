"""Mamba-1 selective scan, fast pure PyTorch for CPU (and any device), with its own backward.

The recurrence, per batch b, channel d, state n (see ``reference.py``):

    h_t = dA_t * h_{t-1} + x_t,    dA_t = exp(delta_t * A),   x_t = delta_t * u_t * B_t
    y_t = sum_n C_t * h_t

Design:

* Time is cut into chunks of ``T`` steps (``T * b * d * n`` about ``_CHUNK_ELEMS``). A
  chunk's per-step tensors are laid out (T, b, d, n), so one step is one contiguous
  slab and the chunk's buffers (decays, inputs/states, adjoints) are reused and stay in
  cache. Whole-sequence (b, d, L, n) tensors are never materialized: on this machine a
  fresh 67 MB tensor costs more in page faults than the arithmetic on it (``x * x``:
  33 ms into a fresh tensor, 6 ms into a reused one).
* Inside a chunk the recurrence is one fused multiply-add per step,
  ``x_t.addcmul_(dA_t, h_{t-1})``, in place. Only exp(delta * A) <= 1 is ever formed,
  never exp(-cumsum(delta * A)), so long sequences and huge delta * |A| cannot
  overflow: decays underflow to 0, which is the exact answer.
* The backward (a ``torch.autograd.Function``) keeps only the state entering each chunk
  (b, d, n), recomputes the chunk's states, and runs the adjoint recurrence
  G_t = C_t gy_t + dA_{t+1} G_{t+1} backwards the same way. Contractions over n or over
  a group's channels are batched matmuls; delta's bias/softplus, the D skip and the z
  gate are fused in (no autograd temporaries), all in step-major (L, b, d) layout.
* The scan runs on one intra-op thread and splits the batch over the library's CPU
  workers (``mimetic.cpu``: one Python thread per slice, each running its slice's
  whole scan), unless it already runs inside such a slice (a batch-parallel layer).
* Inside a chunk the loop is one op per step: on a memory-bound CPU the loop-free
  in-chunk forms (a log-step scan, or a (T, T) decay matrix per chunk) do more work and
  were slower at every chunk length tried.

Measurements (against mambapy's parallel scan, the reference, OpenMP per op, and the
in-chunk alternatives) are in ``benchmarks/RESULTS.md`` ("CPU selective scan").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ...cpu import one_intraop_thread, run_slices, split_batch, workers_for

# Elements (T * batch * dim * n) per chunk buffer: big enough that the per-chunk Python
# work is amortized, small enough that the ~3 chunk buffers stay in cache.
_CHUNK_ELEMS = 1 << 20
_LOG2E = math.log2(math.e)
# The least work (b * L * d * n elements) worth a worker thread of its own.
_MIN_WORK_PER_WORKER = 1 << 21


def _chunk_len(L: int, slab: int) -> int:
    return max(1, min(L, _CHUNK_ELEMS // max(slab, 1)))


def _as_steps(M: torch.Tensor) -> torch.Tensor:
    """B or C, (b, n, L) or (b, g, n, L) -> (L, b, g, n), contiguous."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.permute(3, 0, 1, 2).contiguous()


def _to_steps(t: torch.Tensor) -> torch.Tensor:
    """(b, d, L) -> (L, b, d), contiguous, so that one time step is one contiguous slab.

    Inside Mamba, u, delta and z usually come as transposed views of (b, L, d) tensors
    (the output of a Linear): then this is a cheap copy of contiguous rows. For a truly
    (b, d, L)-contiguous tensor it is a 2-D transpose of (b*d, L), which torch does with
    its blocked transpose kernel (2x faster here than a permuted copy).
    """
    b, d, L = t.shape
    if t.stride(1) == 1 or not t.is_contiguous():
        return t.permute(2, 0, 1).contiguous()
    return t.reshape(b * d, L).t().contiguous().view(L, b, d)


def _owns(t: torch.Tensor, src: torch.Tensor) -> bool:
    """True when t is a fresh copy, not sharing memory with the caller's tensor src."""
    return t.untyped_storage().data_ptr() != src.untyped_storage().data_ptr()


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, softplus, workers):
    """The whole forward in the compute dtype, on one intra-op thread per batch slice
    (up to ``workers`` slices).

    Everything runs in step-major layout (L, b, d): delta's bias/softplus, the D skip and
    the z gate are fused in here rather than left to autograd, which would allocate a
    fresh tensor per intermediate and per gradient and transpose back and forth.

    Inputs: u, delta, z (b, d, L); A (d, n); B, C (b, g, n, L); D, delta_bias (d,);
    h0 (b, d, n); any of z, D, delta_bias, h0 may be None. Returns out (b, d, L), a view
    of (b, L, d) memory (what Mamba's out_proj consumes), h_last (b, d, n), and what
    :func:`scan_bwd` needs: (tensors, sizes, flags).
    """
    with one_intraop_thread():
        b, d, L = u.shape
        n = A.shape[1]
        g = B.shape[1]
        uT = _to_steps(u)  # (L, b, d)
        xT = _to_steps(delta)
        if delta_bias is not None:
            # In place only on our own copy: _to_steps returns delta itself when delta
            # is already step-major.
            xT = xT.add_(delta_bias) if _owns(xT, delta) else xT + delta_bias
        dtT = F.softplus(xT) if softplus else xT
        dtuT = dtT * uT
        Bs, Cs = _as_steps(B), _as_steps(C)  # (L, b, g, n)
        # exp(x) = exp2(x log2 e), and exp2 is 1.5x faster than exp in torch on CPU.
        A2 = A * _LOG2E
        T = _chunk_len(L, b * d * n)
        flags = (delta_bias is not None, h0 is not None)
        h0 = u.new_zeros(b, d, n) if h0 is None else h0

        def run(b0, b1):  # the scan of batch rows b0..b1-1
            return _forward_loop(_rows(dtT, b0, b1), _rows(dtuT, b0, b1), A2, _rows(Bs, b0, b1),
                                 _rows(Cs, b0, b1), h0[b0:b1], T)

        parts = _by_batch(run, b, L * d * n, workers)
        yT = _cat([p[0] for p in parts], dim=1)  # (L, b, d)
        starts = _cat([p[1] for p in parts], dim=1)  # (nchunks, b, d, n)
        h = _cat([p[2] for p in parts], dim=0)
        if D is not None:
            yT.addcmul_(uT, D)
        out = u.new_empty(b, L, d)
        zT = None
        if z is None:
            out.copy_(yT.transpose(0, 1))
        else:
            zT = _to_steps(z)
            torch.mul(yT.transpose(0, 1), F.silu(zT).transpose(0, 1), out=out)
        saved = (uT, xT if softplus else None, dtT, dtuT, A, A2, Bs, Cs, starts, D, zT,
                 yT if z is not None else None)
        return out.transpose(1, 2), h, (saved, (b, d, L, n, g, T), flags)


def scan_bwd(saved, gout, gh_last, workers):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, h0) from :func:`scan_fwd`'s
    ``saved``; gout (b, d, L) d loss / d out, gh_last (b, d, n) d loss / d h_last. Those
    of u, delta, z come back as views of (L, b, d) memory."""
    tensors, sizes, flags = saved
    with one_intraop_thread():
        uT, xT, dtT, dtuT, A, A2, Bs, Cs, starts, D, zT, yT = tensors
        b, d, L, n, g, T = sizes
        has_bias, has_h0 = flags
        gT = _to_steps(gout)  # (L, b, d)
        gzT = None
        if zT is None:
            gyT = gT
        else:
            s = torch.sigmoid(zT)
            # out = y * z * s(z):  d/dy = z s ;  d/dz = y s (1 + z (1 - s))
            gyT = torch.mul(gT, zT).mul_(s)
            gzT = torch.rsub(s, 1).mul_(zT).add_(1).mul_(s).mul_(yT).mul_(gT)
        gD = None if D is None else (gyT * uT).sum((0, 1))

        def run(b0, b1):
            return _backward_loop(_rows(dtT, b0, b1), _rows(dtuT, b0, b1), _rows(gyT, b0, b1), A,
                                  A2, _rows(Bs, b0, b1), _rows(Cs, b0, b1), starts[:, b0:b1],
                                  gh_last[b0:b1], T)

        parts = _by_batch(run, b, L * d * n, workers)
        g_dtT, g_dtuT, gB, gC = (_cat([p[i] for p in parts], dim=1) for i in range(4))
        gA = sum(p[4] for p in parts)
        carry = _cat([p[5] for p in parts], dim=0)
        # delta enters through its decay and delta * u; u through delta * u and the skip.
        g_dtT.addcmul_(g_dtuT, uT)
        guT = g_dtuT.mul_(dtT)
        if D is not None:
            guT.addcmul_(gyT, D)
        if xT is not None:
            g_dtT.mul_(torch.sigmoid(xT))  # softplus' = sigmoid
        g_bias = g_dtT.sum((0, 1)) if has_bias else None

        def back(t):  # (L, b, d) -> (b, d, L) view
            return None if t is None else t.permute(1, 2, 0)

        return (back(guT), back(g_dtT), gA, gB.permute(1, 2, 3, 0), gC.permute(1, 2, 3, 0),
                gD, back(gzT), g_bias, carry if has_h0 else None)


class _SelectiveScan(torch.autograd.Function):
    """Eager autograd around :func:`scan_fwd` / :func:`scan_bwd`."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus):
        # Batch slices are chosen here and reused by the backward.
        ctx.workers = workers_for(u.shape[0], u.numel() * A.shape[1], _MIN_WORK_PER_WORKER)
        out, h, (tensors, ctx.sizes, ctx.flags) = scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                                           h0, softplus, ctx.workers)
        ctx.save_for_backward(*tensors)
        return out, h

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, gh_last):
        saved = (ctx.saved_tensors, ctx.sizes, ctx.flags)
        return (*scan_bwd(saved, gout, gh_last, ctx.workers), None)


def _forward_loop(dtT, dtuT, A2, Bs, Cs, h, T):
    """The chunked forward scan. dtT, dtuT (L, b, d); A2 (d, n); Bs, Cs (L, b, g, n);
    h (b, d, n) the initial state. Returns yT (L, b, d), the state entering each chunk
    (nchunks, b, d, n) and the last state (b, d, n)."""
    L, b, d = dtT.shape
    n, g = A2.shape[1], Bs.shape[2]
    nchunks = -(-L // T)
    starts = dtT.new_empty(nchunks, b, d, n)
    yT = dtT.new_empty(L, b, d)
    dA_buf = dtT.new_empty(T, b, d, n)
    H_buf = dtT.new_empty(T, b, d, n)
    for k in range(nchunks):
        t0, t1 = k * T, min(L, (k + 1) * T)
        starts[k] = h
        dA, H = _chunk_inputs(dtT[t0:t1], dtuT[t0:t1], A2, Bs[t0:t1], dA_buf, H_buf, g)
        _scan_forward(dA, H, h)
        h = H[-1].clone()
        yT[t0:t1] = _contract_n(Cs[t0:t1], H, g).view(t1 - t0, b, d)
    return yT, starts, h


def _backward_loop(dtT, dtuT, gyT, A, A2, Bs, Cs, starts, carry, T):
    """The chunked backward scan, chunks in reverse, recomputing each chunk's states.

    Shapes as in :func:`_forward_loop`; gyT (L, b, d) is d loss / d y, carry (b, d, n)
    d loss / d last state. Returns d loss / d delta and / d (delta u) (L, b, d), gB, gC
    (L, b, g, n), gA (d, n) and d loss / d initial state (b, d, n).
    """
    L, b, d = dtT.shape
    n, g = A.shape[1], Bs.shape[2]
    dg = d // g
    carry = carry.clone()
    g_dtT = dtT.new_empty(L, b, d)  # d loss / d delta (after bias/softplus)
    g_dtuT = dtT.new_empty(L, b, d)  # d loss / d (delta * u), through x_t only
    gA = torch.zeros_like(A)
    gB = dtT.new_empty(L, b, g, n)
    gC = dtT.new_empty(L, b, g, n)
    dA_buf = dtT.new_empty(T, b, d, n)
    H_buf = dtT.new_empty(T, b, d, n)
    G_buf = dtT.new_empty(T, b, d, n)
    for k in reversed(range(starts.shape[0])):
        t0, t1 = k * T, min(L, (k + 1) * T)
        Tk = t1 - t0
        dtc, dtuc, gyc = dtT[t0:t1], dtuT[t0:t1], gyT[t0:t1]
        dA, H = _chunk_inputs(dtc, dtuc, A2, Bs[t0:t1], dA_buf, H_buf, g)
        _scan_forward(dA, H, starts[k])
        H5 = H.view(Tk, b, g, dg, n)
        # gC_t[g, n] = sum_{d in g} gy_t[d] H_t[d, n]
        gC[t0:t1] = (gyc.view(Tk, b, g, 1, dg) @ H5).view(Tk, b, g, n)
        # Adjoint of the states: G_t = C_t gy_t + dA_{t+1} G_{t+1}, G_last += carry.
        G = G_buf[:Tk]
        torch.mul(gyc.view(Tk, b, g, dg, 1), Cs[t0:t1, :, :, None, :],
                  out=G.view(Tk, b, g, dg, n))
        G[-1] += carry
        for t in range(Tk - 2, -1, -1):
            G[t].addcmul_(dA[t + 1], G[t + 1])
        torch.mul(dA[0], G[0], out=carry)  # adjoint of the state entering this chunk
        G5 = G.view(Tk, b, g, dg, n)
        # gB_t[g, n] = sum_{d in g} G_t[d, n] delta_t u_t
        gB[t0:t1] = (dtuc.view(Tk, b, g, 1, dg) @ G5).view(Tk, b, g, n)
        # Through x_t = (delta u)_t B_t: d/d(delta u)_t = sum_n G_t B_t.
        g_dtuT[t0:t1] = _contract_n(Bs[t0:t1], G, g).view(Tk, b, d)
        # Through dA_t = exp(delta_t A): P = G_t * dA_t * h_{t-1}, formed in dA's
        # buffer (no longer needed) so no second exp and no new allocation.
        dA[1:].mul_(H[:-1])
        dA[0].mul_(starts[k])
        P = dA.mul_(G).view(Tk * b, d, n)
        # d/d delta_t = sum_n A P, as a (1, n) @ (n, t*b) matmul per channel (BLAS
        # reads P's strides; 3x faster than a mul + sum here) ...
        g_dtT[t0:t1] = torch.bmm(A.unsqueeze(1), P.permute(1, 2, 0)).view(d, Tk, b).permute(1, 2, 0)
        # ... and d/dA = sum_{t, b} delta_t P (a mul into a spare buffer, then a sum,
        # beat bmm and einsum here).
        dtP = torch.mul(dtc.reshape(Tk * b, d, 1), P, out=H.view(Tk * b, d, n))
        gA += dtP.sum(0)
    return g_dtT, g_dtuT, gB, gC, gA, carry


def _rows(t: torch.Tensor, b0: int, b1: int) -> torch.Tensor:
    """Batch rows b0..b1-1 of a step-major (L, b, ...) tensor, contiguous."""
    return t if (b0, b1) == (0, t.shape[1]) else t[:, b0:b1].contiguous()


def _cat(parts: list, dim: int) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _by_batch(run, batch: int, work_per_row: int, workers: int) -> list:
    """run(b0, b1) over up to ``workers`` slices of the batch, concurrently (see
    ``mimetic.cpu``), each slice at least the least work worth a thread.

    Each slice is an independent scan; a worker runs its whole slice, ~1000 ops, without
    waiting for the others, unlike an OpenMP team that meets at every op.
    """
    workers = min(workers, batch, max(1, batch * work_per_row // _MIN_WORK_PER_WORKER))
    if workers <= 1:
        return [run(0, batch)]

    def job(b0, b1):  # worker threads have their own grad mode
        def go():
            with torch.no_grad():
                return run(b0, b1)
        return go

    return run_slices([job(b0, b1) for b0, b1 in split_batch(batch, workers)])


def _chunk_inputs(dt, dtu, A2, Bs, dA_buf, X_buf, g):
    """Decays dA_t = exp2(delta_t A2) = exp(delta_t A) and inputs x_t = delta_t u_t B_t
    of one chunk, written into the reusable buffers. dt, dtu (Tk, b, d); A2 = A log2(e)
    (d, n); Bs (Tk, b, g, n). Returns views (Tk, b, d, n)."""
    Tk, b, d = dt.shape
    n = A2.shape[1]
    dA = dA_buf[:Tk]
    torch.mul(dt[..., None], A2, out=dA)
    dA.exp2_()
    X = X_buf[:Tk]
    torch.mul(dtu.view(Tk, b, g, d // g, 1), Bs[:, :, :, None, :], out=X.view(Tk, b, g, d // g, n))
    return dA, X


def _contract_n(V, H, g):
    """out[t, b, d] = sum_n V[t, b, g(d), n] H[t, b, d, n]; V (Tk, b, g, n), H (Tk, b, d, n).

    Written as (1, n) @ (n, dg) matmuls: BLAS takes H's transpose as a flag, and this
    orientation was 3.6x faster on CPU than the (dg, n) @ (n, 1) matvec, which torch
    runs one batch entry at a time.
    """
    Tk, b, d, n = H.shape
    rows = Tk * b * g
    return torch.bmm(V.reshape(rows, 1, n), H.view(rows, d // g, n).transpose(1, 2))


def _scan_forward(dA, H, h0):
    """In place: H_t <- dA_t * H_{t-1} + H_t with H_{-1} = h0 (turns inputs into states)."""
    H[0].addcmul_(dA[0], h0)
    for t in range(1, H.shape[0]):
        H[t].addcmul_(dA[t], H[t - 1])


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
):
    """Same contract as :func:`mimetic.ops.selective_scan.reference.selective_scan_ref`
    (computed in float32, float64 for float64 inputs)."""
    dtype_in = u.dtype
    compute = _compute_dtype(u)
    args = _in_compute(compute, u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.shape[2] == 0:
        out = u.new_zeros(u.shape)
        h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=compute)
        if initial_state is not None:
            h = h + args[8]
    else:
        out, h = _SelectiveScan.apply(*args, delta_softplus)
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _in_compute(compute, u, delta, A, B, C, D, z, delta_bias, initial_state):
    """The inputs in the compute dtype, B and C as (b, g, n, L)."""
    def c(t):
        return None if t is None else t.to(compute)

    Bc = c(B) if B.dim() == 4 else c(B).unsqueeze(1)
    Cc = c(C) if C.dim() == 4 else c(C).unsqueeze(1)
    return c(u), c(delta), c(A), Bc, Cc, c(D), c(z), c(delta_bias), c(initial_state)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                       return_last_state, need_grad):
    """The forward without autograd, for the torch.compile op (``ops/_library.py``):
    (out, last state or None, None). Nothing is kept: :func:`selective_scan_bwd`
    recomputes the forward (the chunk-entry states are cheap next to the backward)."""
    del need_grad
    result = selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state, initial_state)
    return (*result, None) if return_last_state else (result, None, None)


def selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                       ckpt, dout, dlast):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state) in their inputs'
    shapes and dtypes, without autograd: reruns :func:`scan_fwd`, then :func:`scan_bwd`.
    dout (b, d, L); dlast (b, d, n) or None; ``ckpt`` is unused (None)."""
    del ckpt
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    compute = _compute_dtype(u)
    args = _in_compute(compute, *inputs)
    batch, dim, L = u.shape
    n = A.shape[1]
    dlast = (torch.zeros(batch, dim, n, dtype=compute, device=u.device) if dlast is None
             else dlast.to(compute))
    if L == 0:
        grads = [None if t is None else torch.zeros_like(t) for t in inputs]
        if initial_state is not None:
            grads[8] = dlast.to(initial_state.dtype)
        return tuple(grads)
    workers = workers_for(batch, u.numel() * n, _MIN_WORK_PER_WORKER)
    with torch.no_grad():
        _, _, saved = scan_fwd(*args, delta_softplus, workers)
        grads = scan_bwd(saved, dout.to(compute), dlast, workers)
    grads = list(grads)
    for i in (3, 4):   # back from (b, g, n, L) for ungrouped B, C
        if inputs[i].dim() == 3:
            grads[i] = grads[i].squeeze(1)
    return tuple(None if t is None or g is None else g.to(t.dtype)
                 for t, g in zip(inputs, grads))
