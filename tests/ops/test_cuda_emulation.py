"""The CPU emulation of CUDA (tests/ops/cuda_emu) checked on its own small kernels
(cuda_emu/probes.cu): the shuffles' lane arithmetic as the CUDA programming guide states
it, block and grid indices, atomics, and that every check the emulated scan tests rely
on fires (memory bounds, writes into inputs, array bounds, misaligned vector loads,
divergent warp operations and barriers, races). Skipped without g++."""
from __future__ import annotations

import ctypes
import platform

import pytest
import torch

from . import cuda_emu

pytestmark = pytest.mark.skipif(cuda_emu.GXX is None or platform.system() != "Linux",
                                reason="the CPU emulation of CUDA needs g++ on Linux")


class ProbeParams(ctypes.Structure):
    _fields_ = [("in_", ctypes.c_uint64), ("out", ctypes.c_uint64), ("n", ctypes.c_int64), ("mode", ctypes.c_int64)]


@pytest.fixture(scope="module")
def probes(request, tmp_path_factory):
    folder = cuda_emu.build_folder(request, tmp_path_factory)
    return ctypes.CDLL(str(cuda_emu.build(folder, ("probes",))["probes"]))


def launch(probes, name, *, inp=None, out=None, n=0, mode=0, grid=(1, 1, 1), block=(64, 1, 1), smem=0, order=0,
           seed=0):
    tensors = [("in", inp, False)] if inp is not None else []
    tensors += [("out", out, True)] if out is not None else []
    params = ProbeParams(0 if inp is None else inp.data_ptr(), 0 if out is None else out.data_ptr(), n, mode)
    cuda_emu.run(cuda_emu.entry(probes, f"probe_{name}"), grid, block, smem, params, tensors, order, seed, name)


def expected_shuffles(threads: int) -> torch.Tensor:
    """Each lane's source per the programming guide: srcLane taken modulo width within the
    lane's width-segment (__shfl_sync); a source below the segment (up) or above it (down,
    xor) leaves the lane its own value, while xor may read an earlier segment."""
    rows = []
    for t in range(threads):
        base, lane = t - t % 32, t % 32

        def seg(width, lane=lane):
            return lane - lane % width

        up = lambda d, w, lane=lane: lane - d if lane - d >= seg(w) else lane  # noqa: E731
        down = lambda d, w, lane=lane: lane + d if lane + d < seg(w) + w else lane  # noqa: E731
        xor = lambda m, w, lane=lane: lane ^ m if (lane ^ m) < seg(w) + w else lane  # noqa: E731
        src = [seg(8) + 3 % 8, 35 % 32, up(2, 8), up(5, 32), down(3, 16), down(1, 32), xor(5, 8), xor(12, 8)]
        rows.append([base + s for s in src])
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_shuffles(probes, order):
    out = torch.full((96, 8), float("nan"))
    launch(probes, "shuffles", out=out, block=(96, 1, 1), order=order, seed=order)
    assert torch.equal(out, expected_shuffles(96))


def test_indices_and_atomics(probes):
    grid, block = (3, 2, 1), (64, 1, 1)
    total = 3 * 2 * 64
    out = torch.zeros(total + 1)
    launch(probes, "indices", out=out, grid=grid, block=block)
    assert torch.equal(out[:total], torch.arange(total, dtype=torch.float32)) and out[total] == total


def test_a_race_shows_as_order_dependence(probes):
    results = {}
    for mode in (0, 1):
        for order in (0, 1, 3):
            out = torch.zeros(64)
            launch(probes, "race", out=out, mode=mode, smem=16, order=order)
            results[mode, order] = out
    # without the barrier the readers before thread 0 see unset (NaN) shared memory
    assert torch.equal(results[0, 0], torch.ones(64)) and results[0, 1].isnan().sum() == 63
    assert all(torch.equal(results[1, order], torch.ones(64)) for order in (0, 1, 3))


CHECKS = [
    ("read_past_end", dict(inp=torch.zeros(10), out=torch.zeros(64), n=10), r"read of 4 bytes at in\+40 bytes"),
    ("write_input", dict(inp=torch.zeros(64)), r"write of 4 bytes into the input in"),
    ("shared_past_end", dict(n=4, smem=16), r"write of 4 bytes at shared memory\+16 bytes \(it has 16 bytes\)"),
    ("array_past_end", dict(out=torch.zeros(64), n=4), r"array index out of bounds"),
    ("misaligned_vector", dict(inp=torch.zeros(16), out=torch.zeros(64), n=1), r"misaligned"),
    ("partial_shuffle", dict(out=torch.zeros(64)), r"deadlock"),
    ("split_shuffle", dict(out=torch.zeros(64)), r"meet at different warp operations"),
    ("partial_syncthreads", dict(out=torch.zeros(64)), r"__syncthreads.*exited|deadlock"),
]


@pytest.mark.parametrize("name,kwargs,message", CHECKS, ids=[c[0] for c in CHECKS])
def test_checks_fire(probes, name, kwargs, message):
    with pytest.raises(cuda_emu.EmulationError, match=message):
        launch(probes, name, **kwargs)


def test_a_failed_launch_leaves_the_next_one_clean(probes):
    with pytest.raises(cuda_emu.EmulationError):
        launch(probes, "partial_shuffle", out=torch.zeros(64))
    out = torch.zeros(64 * 8)
    launch(probes, "shuffles", out=out)
    assert torch.equal(out.view(64, 8), expected_shuffles(64))
