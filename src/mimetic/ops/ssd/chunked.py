"""Mamba-2 SSD scan, chunked, in pure PyTorch (differentiable through autograd).

The sequence is cut into chunks of ``chunk_size`` steps. Per batch b, head h, chunk c,
with a_t = dt_t * A[h] (a log-decay, <= 0 for A < 0) and its in-chunk cumulative sum
cs_t = a_0 + ... + a_t:

1. intra-chunk (quadratic, a matmul): y_i += sum_{j<=i} (C_i . B_j) exp(seg[i, j]) dt_j x_j
   where seg[i, j] = a_{j+1} + ... + a_i, the segment sum of log-decays;
2. chunk states: s_c = sum_j exp(seg[T-1, j]) dt_j x_j B_j^T          (P, N);
3. state passing: S_{c+1} = exp(cs_{T-1}) S_c + s_c, from S_0 = initial state;
4. output from states: y_i += exp(cs_i) C_i . S_c.

Every exponent is a sum of log-decays over a forward segment, hence <= 0 for A < 0: we
only ever take exp of (masked) segment sums, never exp(-cumsum), so nothing overflows
however long the sequence or however large dt * |A|. The segment sums are built by a
cumulative sum of masked copies of a (not as a difference of two long cumsums), so they
keep full relative precision even when the cumsum itself is large.

Half inputs are computed in float32 (float64 inputs in float64); the output has x's
dtype and the final states are float32 (float64 for float64 inputs), like the reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._time_step import process_dt

# Longest chunk this path uses, whatever ``chunk_size`` asks (None: the caller's). The
# chunk length changes only the rounding, not the result; 256 suits the GPU kernels but
# on CPU the (T, T) decay and C B^T tensors per head then dominate a Mamba-2 training
# step (timings by chunk length: benchmarks/RESULTS.md, CPU).
MAX_CHUNK: int | None = 64


def chunk_plan(L: int, longest: int) -> tuple[int, int]:
    """(number of chunks, steps per chunk) for a sequence of L steps in chunks of at most
    ``longest``: as few chunks as that allows, as equal as L allows, so that fewer than one
    step per chunk is padding (L = 129 at 64: 3 chunks of 43, not 3 of 64 with 63 padded
    steps, whose (T, T) work would be paid too)."""
    longest = max(1, min(longest, L))
    nc = max(1, -(-L // longest))
    return nc, max(1, -(-L // nc))


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums of log-decays along the last dim.

    a: (..., T). Returns (..., T, T) with out[..., i, j] = a[j+1] + ... + a[i] for i >= j
    (0 on the diagonal) and -inf above the diagonal, so that exp(out) is the causal
    decay matrix (exactly 0 above the diagonal). Differentiable (:class:`_SegSum`).
    """
    return _SegSum.apply(a)


def _segsum_masks(T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, T) bool: strictly below the diagonal (j < i), and on or below it (j <= i)."""
    ones = torch.ones(T, T, dtype=torch.bool, device=device)
    return ones.tril(-1), ones.tril()


class _SegSum(torch.autograd.Function):
    """:func:`segsum` with its own backward. Autograd's would run the reverse cumulative sum
    of the (..., T, T) gradient over its strided dim as flip, cumsum, flip: two extra passes
    over the largest tensor of a CPU Mamba-2 step. Here d out[i, j] / d a[k] = 1 exactly when
    j < k <= i, so grad_a[k] = sum over i >= k of (sum over j < k of g[i, j]): one cumulative
    sum along the contiguous dim, then a masked sum over i."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        T = a.shape[-1]
        strict, causal = _segsum_masks(T, a.device)
        rep = a[..., :, None].expand(*a.shape, T)  # rep[..., i, j] = a[i]
        seg = rep.masked_fill(~strict, 0.0).cumsum(dim=-2)  # sum over j < k <= i
        return seg.masked_fill_(~causal, -math.inf)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        T = g.shape[-1]
        strict, causal = _segsum_masks(T, g.device)
        # Only entries j < i depend on a; the others (the -inf above the diagonal, the 0 on
        # it) are constants whose gradient, even NaN, reaches nothing.
        g = g.masked_fill(~strict, 0.0)
        before = F.pad(g[..., :-1].cumsum(dim=-1), (1, 0))  # before[i, k] = sum_{j < k} g[i, j]
        return before.masked_fill_(~causal, 0.0).sum(-2)   # over i >= k


def _intra_chunk(Ck: torch.Tensor, Bk: torch.Tensor, decay: torch.Tensor, xdt: torch.Tensor) -> torch.Tensor:
    """y_i = sum_{j<=i} (C_i . B_j) decay[i, j] (dt x)_j per chunk, keeping non-finite values causal.

    Ck, Bk (b, c, G, 1, T, N); decay (b, c, G, hg, T, T), 0 above the diagonal; xdt
    (b, c, G, hg, T, P). Returns (b, c, G, hg, T, P).

    As matmuls, the masked entries j > i multiply a NaN/inf in B_j or (dt x)_j by 0, which is
    NaN, and would poison the earlier positions i < j. So the matmuls see those entries as 0,
    and each position of a head at or after a step with a non-finite entry is set to NaN
    afterwards (the recurrence would make it NaN too). Elementwise work only (about 5% of
    this op on CPU); finite inputs give the same values as before.
    """
    bad_t = ~torch.isfinite(xdt).all(-1, keepdim=True)  # (b, c, G, hg, T, 1)
    bad_b = ~torch.isfinite(Bk).all(-1, keepdim=True)  # (b, c, G, 1, T, 1)
    finite = dict(nan=0.0, posinf=0.0, neginf=0.0)
    CB = Ck @ torch.nan_to_num(Bk, **finite).transpose(-1, -2)  # (b, c, G, 1, T, T)
    y = (CB * decay) @ torch.nan_to_num(xdt, **finite)
    poisoned = (bad_t | bad_b).cumsum(-2, dtype=torch.int32) > 0  # at or after a bad step
    return y.masked_fill(poisoned, math.nan)


def ssd_scan_torch(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Same contract as :func:`~mimetic.ops.ssd.reference.ssd_scan_ref`; chunks of at most
    ``min(chunk_size, MAX_CHUNK)`` steps, as equal as the length allows."""
    dtype_in = x.dtype
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    hg = H // G  # heads per group
    xc, Ac = x.to(compute), A.to(compute)
    dtc = process_dt(dt, dt_bias, dt_softplus, dt_limit, compute)

    nc, T = chunk_plan(L, min(chunk_size, MAX_CHUNK or chunk_size))
    pad = nc * T - L
    Bc, Cc = B.to(compute), C.to(compute)
    if pad:
        # Padded steps have dt = 0: decay exp(0) = 1 and no input, so the state passes
        # through them unchanged and the final state stays exact.
        xc_p = F.pad(xc, (0, 0, 0, 0, 0, pad))
        dtc_p = F.pad(dtc, (0, 0, 0, pad))
        Bc = F.pad(Bc, (0, 0, 0, 0, 0, pad))
        Cc = F.pad(Cc, (0, 0, 0, 0, 0, pad))
    else:
        xc_p, dtc_p = xc, dtc

    # Chunked layouts, heads split as (G, hg) so B and C broadcast over a group's heads.
    xk = xc_p.reshape(batch, nc, T, G, hg, P).permute(0, 1, 3, 4, 2, 5)  # (b, c, G, hg, T, P)
    dtk = dtc_p.reshape(batch, nc, T, G, hg).permute(0, 1, 3, 4, 2)  # (b, c, G, hg, T)
    Bk = Bc.reshape(batch, nc, T, G, N).permute(0, 1, 3, 2, 4).unsqueeze(3)  # (b, c, G, 1, T, N)
    Ck = Cc.reshape(batch, nc, T, G, N).permute(0, 1, 3, 2, 4).unsqueeze(3)
    a = dtk * Ac.reshape(G, hg, 1)  # log-decays (b, c, G, hg, T)
    decay = torch.exp(segsum(a))  # (b, c, G, hg, T, T), 0 above the diagonal
    xdt = xk * dtk.unsqueeze(-1)  # dt_j x_j  (b, c, G, hg, T, P)

    # 1. Intra-chunk: masked, decayed C B^T as a (T, T) matrix per head, times dt x.
    y = _intra_chunk(Ck, Bk, decay, xdt)  # (b, c, G, hg, T, P)

    # 2. Each chunk's own contribution to the state at its end: (P, N) per head.
    to_end = decay[..., -1, :]  # exp(a_{j+1} + ... + a_{T-1})  (b, c, G, hg, T)
    states = (xdt * to_end.unsqueeze(-1)).transpose(-1, -2) @ Bk  # (b, c, G, hg, P, N)

    # 3. State passing: a short loop over chunks (not time steps).
    chunk_decay = torch.exp(a.sum(-1))  # (b, c, G, hg)
    if initial_states is None:
        S = xc.new_zeros(batch, G, hg, P, N)
    else:
        S = initial_states.to(compute).reshape(batch, G, hg, P, N)
    starts = []
    for c in range(nc):
        starts.append(S)
        S = chunk_decay[:, c, ..., None, None] * S + states[:, c]
    S_start = torch.stack(starts, dim=1)  # state entering each chunk (b, c, G, hg, P, N)

    # 4. Output from the carried-in states, decayed to each position: exp(cs_i) <= 1.
    in_decay = torch.exp(a.cumsum(-1))  # (b, c, G, hg, T)
    y = y + (Ck @ S_start.transpose(-1, -2)) * in_decay.unsqueeze(-1)

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(batch, nc * T, H, P)[:, :L]
    if D is not None:
        Dc = D.to(compute)
        y = y + xc * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    if return_final_states:
        return out, S.reshape(batch, H, P, N)
    return out
