"""The CPU emulation (this package) of the causal conv1d's CUDA kernels
(``mimetic/ops/causal_conv1d/cuda_src``): their translation units and :class:`ConvEmulation`,
which stands in for the GPU under ``causal_conv1d/cuda.py``'s own launchers as
:class:`~tests.ops.cuda_emu.Emulation` does for the scan's (``_kernels``, ``_ptr`` and
``_check_device`` replaced; every launch checked the same way).

Every shipped width is built (:data:`WIDTHS`; a build of both directions takes seconds).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

from mimetic.ops.causal_conv1d import cuda as conv_cuda

from . import SMEM_CAPACITY, EmulatedKernel

WIDTHS = tuple(range(1, conv_cuda.MAX_WIDTH + 1))

#: Pointer fields the kernels write; dw and dbias are added into (the launcher zeroes them).
OUTPUTS = {"fwd": {"out"}, "bwd": {"dx", "dw", "dbias", "dh0"}}
ACCUMULATED = {"dw", "dbias"}


def specs(direction: str) -> list[conv_cuda.Spec]:
    return [s for s in conv_cuda.shipped_specs(direction) if s.width in WIDTHS]


def unit(direction: str) -> tuple[str, str]:
    """(translation unit, the text it includes) of one direction: simt.h, the sources as
    NVRTC sees them (by #include, so that reports name their lines) and one exported
    ``int <spec.name>(const EmuLaunch*)`` per spec of :func:`specs`."""
    params = "CcFwdParams" if direction == "fwd" else "CcBwdParams"
    files = [conv_cuda.SHARED_COMMON, conv_cuda.SOURCE_DIR / "conv_common.cuh",
             conv_cuda.SOURCE_DIR / f"conv_{direction}.cu"]
    lines = ['#include "simt.h"', *[f'#include "{f}"' for f in files],
             f"alignas(16) ss_f4 smem4[{SMEM_CAPACITY // 16}];   // extern __shared__ in the kernel",
             'extern "C" int emu_run(const void*, void (*)(const void*), void*, unsigned long long);']
    for i, spec in enumerate(specs(direction)):
        args = ", ".join(map(str, spec.template_args()))
        lines += [f"static void entry_{i}(const void* p) {{ cc_{direction}_kernel<{args}>"
                  f"(*static_cast<const {params}*>(p)); }}",
                  f'extern "C" int {spec.name}(const void* l) {{ return emu_run(l, entry_{i}, smem4, sizeof smem4); }}']
    return "\n".join(lines) + "\n", conv_cuda.source(direction)


class ConvEmulation:
    """The emulated GPU behind ``causal_conv1d/cuda.py``: install with :meth:`install`;
    ``order`` / ``seed`` pick the thread order of the launches that follow."""

    def __init__(self, libs: dict[str, Path]):
        self.libs = {d: ctypes.CDLL(str(libs[f"conv_{d}"])) for d in ("fwd", "bwd")}
        self.seen: list = []
        self.order, self.seed = 0, 0
        self._kernels: dict[conv_cuda.Spec, EmulatedKernel] = {}

    def reset(self) -> None:
        self.order, self.seed = 0, 0
        self.seen.clear()
        for k in self._kernels.values():
            k.last_params = None

    def ptr(self, t) -> int:
        """``cuda._ptr``, remembering the tensor (the next launch registers it)."""
        if t is None:
            return 0
        self.seen.append(t)
        return t.data_ptr()

    def kernel(self, spec: conv_cuda.Spec) -> EmulatedKernel:
        if spec not in self._kernels:
            if spec.width not in WIDTHS:
                raise AssertionError(f"{spec.name}: width {spec.width} is not emulated (WIDTHS)")
            self._kernels[spec] = EmulatedKernel(self, spec, OUTPUTS[spec.direction], ACCUMULATED)
        return self._kernels[spec]

    def kernels(self, device, specs):
        """``cuda._kernels`` on the emulation."""
        return [None if s is None else self.kernel(s) for s in specs]

    def install(self, monkeypatch) -> None:
        """Route ``causal_conv1d/cuda.py``'s launches on CPU tensors here."""
        monkeypatch.setattr(conv_cuda, "_kernels", self.kernels)
        monkeypatch.setattr(conv_cuda, "_ptr", self.ptr)
        monkeypatch.setattr(conv_cuda, "_check_device", lambda x: None)
