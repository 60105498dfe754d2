"""List the copy-like ops of one forward+backward of a layer, with shapes and origins.

"Copy-like": ops that move or fill memory without computing anything new -- layout
copies (``copy_``, ``clone``, ``contiguous``), dtype casts (``_to_copy``), ``cat`` /
``stack``, the zero-fill + scatter of a slice's gradient (``slice_backward``,
``select_backward``, ``index_put``, ``*_scatter``), and fills (``zeros``, ``zero_``,
``fill_``). On a GPU each is a kernel launch and a pass over memory.

Each op is logged by a ``TorchDispatchMode`` with its phase (forward, or the autograd
node whose backward ran it), input/output shapes, dtypes and strides, and the innermost
Python frames of this repository (``src/mimetic`` and this script) that led to it.
Backward formulas of built-in ops run in C++, so their origin is the autograd node name
(e.g. ``SplitWithSizesBackward0``), not a Python line. Each op's bytes are what it reads
plus what it writes (its distinct tensors' sizes), totalled per kind at the end.

    python benchmarks/layer_copies.py                          # CUDA, the H100 shape, bf16
    python benchmarks/layer_copies.py --d-model 768 --batch 8 --length 2048
    TRITON_INTERPRET=1 python benchmarks/layer_copies.py --device cpu --d-model 64 \\
        --batch 2 --length 64 --backend triton                 # no GPU: Triton interpreted

With ``--device cpu --backend triton`` (needs ``TRITON_INTERPRET=1``) the ops' "auto"
backend is forced to Triton, the path CUDA tensors take, and the CPU-only batch
parallelism of the layers is turned off; copies made by the Triton interpreter itself
(it stages kernel arguments) are left out, as they do not exist on a GPU. The aten ops
seen here are the same on CUDA (autograd formulas and matmul's decomposition do not
depend on the device); copies made inside a device kernel (e.g. cuBLAS operand
preparation) are below this level and only a CUDA profile shows them.

Mamba-1 (--d-model 16 --batch 2 --length 32 on the interpreter): 15 layout copies, 6
casts, 2 fills at e51eff4; 2 layout copies (the concatenated gradient of x_proj's
dt/B/C split, (b, r + 2n, L); the conv's contiguous dx made feature-major for in_proj's
backward), 5 casts, 0 fills after the layout changes of the following commits.

Mamba2 (--layer mamba2 --d-model 64 --batch 2 --length 64 on the interpreter): 7 layout
copies (the scan's contiguous x, dt, B, C and D as (H, P); the concatenated gradients of
the x | B | C and z | xBC | dt splits), 6 casts, 0 fills at cd15026; 1 layout copy (the
z | xBC | dt concatenation), 6 casts (dB and dC written into their blocks of the conv's
gradient, four parameter-sized), 0 fills after the scan read its inputs in place.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.sep + ".venv" + os.sep   # a virtual environment inside the repository is not its code
sys.path.insert(0, os.path.join(ROOT, "src"))

aten = torch.ops.aten

# Op packets (overload-independent) whose kernels only copy or fill memory, by kind.
FILL_OPS = {"zeros", "zeros_like", "new_zeros", "zero_", "fill_", "full", "full_like"}
COPY_OPS = FILL_OPS | {
    "copy_", "clone", "_to_copy", "cat", "stack", "contiguous",
    "slice_backward", "select_backward", "index_put", "index_put_", "_index_put_impl_",
    "slice_scatter", "select_scatter", "as_strided_scatter", "diagonal_scatter",
    "expand_copy", "permute_copy", "transpose_copy",
}


def kind(record) -> str:
    """'fill', 'cast' (a copy that changes the dtype), 'layout' (any other copy), or '-'
    for an op that is not a copy (``--all-ops``)."""
    name = record["op"].split(".")[1]
    if name not in COPY_OPS:
        return "-"
    if name in FILL_OPS:
        return "fill"
    if name in ("_to_copy", "copy_") and len(set(record["dtypes"])) > 1:
        return "cast"
    return "layout"
# Frames from these files never explain a copy: the tracer, the dispatch machinery.
_SKIP_FILES = ("_python_dispatch.py", "layer_copies.py", "torch/autograd/", "torch/_ops.py",
               "torch/nn/modules/module.py", "torch/utils/_contextlib.py")


def _describe(x):
    if isinstance(x, torch.Tensor):
        dt = str(x.dtype).replace("torch.", "")
        return f"{dt}{list(x.shape)}@{list(x.stride())}"
    if isinstance(x, (list, tuple)):
        inner = [_describe(a) for a in x if isinstance(a, torch.Tensor)]
        return "[" + ", ".join(inner) + "]" if inner else None
    return None


def _origin(repo_only: bool = True) -> tuple[str, bool]:
    """(innermost repository frames as 'file:line fn' joined by ' < ', whether a Triton
    interpreter frame is on the stack)."""
    frames = traceback.extract_stack()
    interp = any("triton/runtime/interpreter" in f.filename for f in frames)
    mine = [f for f in frames if ROOT in os.path.abspath(f.filename) and VENV not in f.filename
            and not f.filename.endswith(_SKIP_FILES)]
    if not mine and not repo_only:
        mine = [f for f in frames if not any(s in f.filename for s in _SKIP_FILES)]
    text = " < ".join(f"{os.path.relpath(f.filename, ROOT)}:{f.lineno} {f.name}"
                      for f in reversed(mine[-3:]))
    return text, interp


class CopyLog(TorchDispatchMode):
    """Records every copy-like aten op (see ``COPY_OPS``) run while active."""

    def __init__(self, all_ops: bool = False):
        super().__init__()
        self.all_ops = all_ops
        self.records = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if self.all_ops or name in COPY_OPS:
            node = torch._C._current_autograd_node()
            origin, interp = _origin()
            if not interp:  # the interpreter's staging of kernel arguments: not on a GPU
                ins = [d for d in map(_describe, list(args) + list(kwargs.values())) if d]
                tensors = [a for a in list(args) + [out] if isinstance(a, torch.Tensor)]
                self.records.append(dict(
                    dtypes=[t.dtype for t in tensors], bytes=moved_bytes(args, out),
                    op=str(func), phase=f"backward {node.name()}" if node is not None else "forward",
                    inputs=ins, output=_describe(out), origin=origin))
        return out


def moved_bytes(args, out) -> int:
    """Bytes an op reads and writes: every distinct tensor among its arguments (a list's
    too: ``cat``) and its output, once each (``copy_``'s destination is both)."""
    seen = {}
    for a in list(args) + [out]:
        for t in (a if isinstance(a, (list, tuple)) else [a]):
            if isinstance(t, torch.Tensor):
                seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def force_triton() -> None:
    """Make the ops' ``backend="auto"`` pick Triton on CPU tensors (interpreter), as it
    does for CUDA tensors, and turn off the CPU-only whole-layer batch parallelism."""
    import importlib

    from mimetic.cpu import set_cpu_workers

    # import_module: the package attributes of these names are the public functions.
    for name in ("causal_conv1d", "selective_scan", "ssd", "rms_norm"):
        mod = importlib.import_module(f"mimetic.ops.{name}")
        orig = mod.resolve_backend

        def resolve(backend, x, has_triton_kernel=True, _orig=orig):
            return _orig("triton" if backend == "auto" and has_triton_kernel else backend, x,
                         has_triton_kernel)
        mod.resolve_backend = resolve
    set_cpu_workers(1)


def build(layer: str, d_model: int, device: str, dtype: torch.dtype):
    if layer == "mamba":
        from mimetic.modules.mamba import Mamba
        return Mamba(d_model, device=device, dtype=dtype)
    from mimetic.modules.mamba2 import Mamba2
    return Mamba2(d_model, headdim=min(64, 2 * d_model), device=device, dtype=dtype)


def trace(layer, x, dout, all_ops=False):
    """Records of one forward+backward (after a warm-up one, which compiles kernels)."""
    for _ in range(2):
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        log = CopyLog(all_ops)
        with log:
            layer(x).backward(dout)
    return log.records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", default="mamba", choices=["mamba", "mamba2"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--backend", default="auto", choices=["auto", "triton"],
                    help="triton: force the Triton path on CPU (needs TRITON_INTERPRET=1)")
    ap.add_argument("--all-ops", action="store_true", help="log every aten op, not only copies")
    args = ap.parse_args(argv)
    if args.backend == "triton" and args.device == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            ap.error("--device cpu --backend triton needs TRITON_INTERPRET=1 in the environment")
        force_triton()
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)[args.dtype]
    torch.manual_seed(0)
    layer = build(args.layer, args.d_model, args.device, dtype)
    x = torch.randn(args.batch, args.length, args.d_model, device=args.device,
                    dtype=dtype).requires_grad_(True)
    dout = torch.randn_like(x)
    records = trace(layer, x, dout, args.all_ops)

    print(f"{args.layer} d_model {args.d_model} batch {args.batch} L {args.length} "
          f"{args.dtype} on {args.device} (backend {args.backend}): {len(records)} ops")
    counts = collections.Counter(r["op"] for r in records)
    kinds = collections.Counter(kind(r) for r in records)
    for i, r in enumerate(records):
        print(f"[{i:2d}] {kind(r):6s} {r['op']:28s} {r['phase']}  {r['bytes']} B")
        print(f"      in  {', '.join(r['inputs'])}")
        print(f"      out {r['output']}")
        if r["origin"]:
            print(f"      at  {r['origin']}")
    print("by op:", ", ".join(f"{k} x{v}" for k, v in counts.most_common()))
    print("by kind:", ", ".join(f"{k} x{kinds[k]}" for k in ("layout", "cast", "fill")))
    moved = collections.Counter()
    for r in records:
        moved[kind(r)] += r["bytes"]
    print("bytes read + written:", ", ".join(f"{k} {moved[k]}" for k in ("layout", "cast", "fill")),
          f"(all {sum(moved.values())})")


if __name__ == "__main__":
    main()
