"""Launch configuration of the Triton selective scan (``triton.py``): which forward kernel
runs and the tiles of each kernel, one immutable :class:`ScanConfig` per call.

:func:`default_config` picks it from the shapes, the input dtype and whether a gradient
is wanted; the values are the fastest measured on an H100/H200 (benchmarks/RESULTS.md,
"Selective scan"; the history in benchmarks/logs/gpu_kernel_log.md). Tests and
benchmarks pass other configurations explicitly (``dataclasses.replace`` of the default).

Pure Python (no triton import), so that the torch.compile fake kernel and the
benchmarks can build configurations cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# The segment forward keeps a channel's d_state states in one thread's registers; above
# this many the lane forward runs instead.
SEGMENT_MAX_STATE = 32


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class LaneTiles:
    """Tiles of the lane kernels (``triton_lane.py``): ``channels`` per program
    (BLOCK_D, a power of two dividing dim / groups: a program stays inside one group),
    ``warps`` per program, ``steps`` per tile (BLOCK_T, a power of two >= d_state: the
    carried states are held one per column of a tile)."""

    channels: int
    warps: int
    steps: int


@dataclass(frozen=True)
class SegmentTiles:
    """Tiles of the segment forward (``triton_segment.py``): ``steps`` per segment,
    ``channels`` per program (BLOCK_C, a power of two, one channel per thread: warps =
    channels / 32, at least 1), ``x_steps`` per u/delta/z/out tile (KX, one 16-byte
    vector per thread by default), ``bc_steps`` per B/C vector load (KB, dividing
    x_steps, which divides steps), and ``prefetch``: load the next u/delta/z tile while
    computing this one (faster for float32, slower for bf16)."""

    steps: int
    channels: int
    x_steps: int
    bc_steps: int
    prefetch: bool

    @property
    def warps(self) -> int:
        return max(1, self.channels // 32)


@dataclass(frozen=True)
class ScanConfig:
    """``forward``: "segment" or "lane", the forward kernel; ``lane``: the lane tiles of
    the backward (and of the forward when it is "lane"); ``segment``: the segment
    forward's tiles (unused with the lane forward).

    The forward with a gradient stores the state entering each chunk of ``chunk_steps``
    steps, which the backward reads per lane tile: then the chunk must be the lane tile
    (for the segment forward, ``segment.steps == lane.steps``)."""

    forward: str
    lane: LaneTiles
    segment: SegmentTiles

    @property
    def chunk_steps(self) -> int:
        """Steps between two stored states (the forward's checkpoints)."""
        return self.segment.steps if self.forward == "segment" else self.lane.steps

    def check(self, dim_per_group: int, d_state: int, need_grad: bool) -> None:
        """ValueError unless the kernels can run this configuration on these sizes."""
        lane = self.lane
        if self.forward not in ("segment", "lane"):
            raise ValueError(f"forward must be 'segment' or 'lane', got {self.forward!r}")
        if not (_is_pow2(lane.channels) and dim_per_group % lane.channels == 0):
            raise ValueError(f"lane channels {lane.channels} must be a power of two dividing "
                             f"the {dim_per_group} channels of a group")
        if not (_is_pow2(lane.steps) and lane.steps >= d_state) or lane.warps < 1:
            raise ValueError(f"lane steps {lane.steps} must be a power of two >= d_state "
                             f"{d_state}, warps {lane.warps} >= 1")
        if self.forward == "lane":
            return
        seg = self.segment
        if not (_is_pow2(seg.channels) and _is_pow2(seg.x_steps) and _is_pow2(seg.bc_steps)):
            raise ValueError(f"segment channels, x_steps, bc_steps must be powers of two: {seg}")
        if seg.steps % seg.x_steps or seg.x_steps % seg.bc_steps or seg.x_steps > 16:
            raise ValueError(f"segment length {seg.steps}, x tile {seg.x_steps} (<= 16), B/C "
                             f"vector {seg.bc_steps} do not nest")
        if need_grad and seg.steps != lane.steps:
            raise ValueError(f"with a gradient the segments are the lane backward's chunks: "
                             f"segment steps {seg.steps} != lane steps {lane.steps}")


# Lane tiles (channels, warps, steps), the fastest measured: without gradients the
# forward's; with gradients the backward's, which dominates (the forward then uses the
# same tile length, its checkpoints being per tile). With few channels (batch * dim <=
# 2048, long sequences at small batch) 16 channels per program leave too few programs.
_LANE_INFER = (4, 4, 256)
_LANE_TRAIN = (16, 4, 64)
_LANE_TRAIN_FEW = (8, 4, 128)
_SEGMENT_STEPS = 64       # steps per segment without gradients
_SEGMENT_WARPS = 4        # 32 channels per warp
_SEGMENT_BC_STEPS = 2


def default_config(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, need_grad: bool) -> ScanConfig:
    """The configuration the scan runs with unless given one: u (b, d, L), A (d, n), B
    (b, n, L) or (b, g, n, L); ``need_grad``: the forward stores checkpoints for a
    backward (which then runs with the same configuration)."""
    batch, dim, _ = u.shape
    n = A.shape[1]
    dim_per_group = dim // (1 if B.dim() == 3 else B.shape[1])
    if need_grad:
        channels, warps, steps = _LANE_TRAIN if batch * dim > 2048 else _LANE_TRAIN_FEW
    else:
        channels, warps, steps = _LANE_INFER
    while dim_per_group % channels:
        channels //= 2
    lane = LaneTiles(channels, warps, max(steps, next_pow2(n)))
    x_steps = max(16 // u.element_size(), 1)
    segment = SegmentTiles(
        steps=lane.steps if need_grad else _SEGMENT_STEPS,
        channels=min(32 * _SEGMENT_WARPS, next_pow2(dim)),
        x_steps=x_steps,
        bc_steps=min(_SEGMENT_BC_STEPS, x_steps),
        prefetch=u.element_size() == 4,
    )
    return ScanConfig("lane" if n > SEGMENT_MAX_STATE else "segment", lane, segment)
