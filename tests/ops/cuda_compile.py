"""What the tests of both run-time compiled ops (the selective scan's and the causal conv's
``cuda.py``) share: the compiler found here, and the check that every shipped
specialization compiles for sm_90 without spills."""
from __future__ import annotations

import pytest

from mimetic.ops import _cuda_rtc

ARCH = "sm_90"
COMPILER = _cuda_rtc.find_compiler()
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no CUDA compiler (NVRTC library or nvcc)")


def compile_shipped(cuda, prefix: str) -> dict:
    """{direction: (specs, {spec: ptxas resources}, log)}: every shipped specialization of
    the op module ``cuda``, compiled once per direction in one translation unit."""
    out = {}
    for direction in ("fwd", "bwd"):
        specs = cuda.shipped_specs(direction)
        cubin, log = COMPILER.compile(cuda.instantiations_source(specs), f"{prefix}_{direction}", ["-std=c++17"], ARCH)
        assert cubin[:4] == b"\x7fELF"
        out[direction] = (specs, cuda.resources_by_spec(specs, log), log)
    return out


def assert_no_spills(specs, found: dict, log: str) -> dict:
    """Every spec has a ptxas report, within 255 registers and without spills; returns the
    reports by spec name (printed, for the record: pytest -s)."""
    missing = [s.name for s in specs if s not in found]
    assert not missing, f"no ptxas report for {missing}:\n{log[:3000]}"
    report = {s.name: found[s] for s in specs}
    print(report)
    for spec, res in report.items():
        assert {"registers", "spill_stores", "spill_loads"} <= set(res), (spec, res)
        assert res["registers"] <= 255
    spilled = {name: res for name, res in report.items() if res["spill_stores"] or res["spill_loads"]}
    assert not spilled, f"spills: {spilled}"
    return report
