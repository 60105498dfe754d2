"""The scans as ``torch.library`` custom ops, so that ``torch.compile`` sees one opaque op.

Compiling a model::

    model = MambaLM(config)
    compiled = torch.compile(model)                    # or backend="aot_eager" to skip codegen
    logits = compiled(input_ids)                        # the first call traces (slow), later ones are fast
    with torch.autocast("cuda", dtype=torch.bfloat16):  # autocast works too, eager or compiled
        logits = compiled(input_ids)                    # (b, L, vocab) in bf16
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
    loss.backward()

Nothing else is needed: while dynamo traces, :func:`mimetic.ops.selective_scan` and
:func:`mimetic.ops.ssd_scan` call the ops below (``torch.ops.mimetic.selective_scan``,
``torch.ops.mimetic.ssd_scan``) instead of their backends, so the graph holds one node per
scan instead of the backends' Python loops and threads (which dynamo cannot trace). In
eager mode the public functions call their backend directly (the op's dispatch costs
about 0.1 ms a call; benchmarks/RESULTS.md).

Design:

* Each backend gives the op a pair of plain functions, ``fwd`` and ``bwd`` (no autograd
  inside): the Triton backends their kernels' forward and backward, the chunked
  selective scan its hand-written forward and backward. The forward op returns the
  backend's outputs and, for the Triton selective scan, its float32 checkpoints (the
  state entering each chunk) as an extra output that the backward op takes back; so
  the backward runs no second forward. A final state that was not asked for (or an
  absent checkpoint) comes back as an empty (0,) placeholder, since an op's outputs
  are fixed by its schema.
* Backends without a hand-written backward (the references, and the chunked SSD, which
  is plain autograd code) are differentiated by rerunning their forward with autograd
  (:func:`_autograd_grads`), on a helper thread since the backward op's kernel runs with
  autograd off. (Rerunning it in the op's autograd formula instead, outside any kernel,
  needs no thread but traces the rerun into the compiled backward graph: compiling the
  chunked SSD with dynamic shapes became an order of magnitude slower.) The chunked
  selective scan's backward also reruns its forward loop, without autograd, instead of
  keeping a dozen intermediates as op outputs.
* Fake (meta) kernels give every output's shape, dtype and strides, from helpers of
  the backends themselves for the Triton selective scan (``output_like``,
  ``checkpoint_shape``); the real kernels copy an output into that layout only when
  the backend returned another (torch.compile relies on fake and real strides agreeing).
* Autocast: the kernels run with autocast off. The scans compute in float32 themselves
  and return the input dtype (final states float32), so under ``torch.autocast`` the ops
  see the same mixed bf16/fp32 inputs as without it and give the same answer; autocast
  left on would silently run the backends' matmuls in bf16.

The Mamba-1 conv and the norms are plain PyTorch code that dynamo traces (and inductor
fuses) without help, so they are not wrapped; a Triton backend for them would need the
same treatment.
"""
import contextlib
import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._dispatch import resolve_backend

# --------------------------------------------------------------------------------------
# Helpers shared by the ops


def _state_dtype(t: Tensor) -> torch.dtype:
    """Final states are float32, float64 for float64 inputs (the backends' contract)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _no_autocast(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _shares_memory(t: Tensor, others: Sequence[Tensor | None]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(o is not None and o.numel() and o.untyped_storage().data_ptr() == ptr
               for o in others)


def _laid_out(t: Tensor, like: Tensor, inputs: Sequence[Tensor | None]) -> Tensor:
    """t in like's layout (like: the empty tensor the fake kernel returns), copying only
    when the strides differ or t shares memory with an input (op outputs may not alias)."""
    if t.numel() and (t.stride() != like.stride() or _shares_memory(t, inputs)):
        return like.copy_(t)
    return t


def _grads_fake(inputs: Sequence[Tensor | None], needs: Sequence[bool], ref: Tensor) -> list[Tensor]:
    """Backward outputs: d loss / d input laid out like the input where needed, else an
    empty (0,) placeholder (an op cannot return None)."""
    return [torch.empty_like(t) if t is not None and need else ref.new_empty(0)
            for t, need in zip(inputs, needs)]


def _finish_grads(grads: Sequence[Tensor | None], inputs: Sequence[Tensor | None],
                  needs: Sequence[bool], grad_outputs: Sequence[Tensor | None]) -> list[Tensor]:
    """A backend's gradients as the backward op returns them (:func:`_grads_fake`'s list):
    laid out like their inputs, zeros for an input that reaches no output, and copied
    where one shares memory with an op input or another gradient (the Triton SSD's dA
    and d dt_bias are slices of one buffer; op outputs may not alias)."""
    ref = next(g for g in grad_outputs if g is not None)
    result = _grads_fake(inputs, needs, ref)
    everything = list(inputs) + list(grad_outputs)
    for i, (t, need) in enumerate(zip(inputs, needs)):
        if t is None or not need:
            continue
        g = grads[i]
        if g is None:  # the input does not reach any output that reaches the loss
            result[i].zero_()
        else:
            result[i] = _laid_out(g, result[i], everything)
            everything.append(result[i])
    return result


def _autograd_grads(forward: Callable, inputs: Sequence[Tensor | None], needs: Sequence[bool],
                    grad_outputs: Sequence[Tensor | None]) -> list[Tensor | None]:
    """Gradients of ``forward(*inputs)`` (a tuple of tensors) by rerunning it with autograd.

    inputs: tensors or None; needs: which want a gradient; grad_outputs: one per output
    of forward, None for an output that does not reach the loss. A custom op's kernel
    runs with autograd turned off for its thread (the dispatcher's thread-local state), so
    the rerun happens on a short-lived helper thread, which starts with autograd on and
    no autocast; on CUDA it runs on the caller's current stream.
    """
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs)) if t is not None and need]
    grads: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return grads
    ref = next(g for g in grad_outputs if g is not None)
    stream = torch.cuda.current_stream(ref.device) if ref.device.type == "cuda" else None
    box: dict = {}

    def work():
        try:
            with (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()), \
                    torch.enable_grad():
                leaves = [None if t is None else t.detach().requires_grad_(i in wanted)
                          for i, t in enumerate(inputs)]
                outputs = forward(*leaves)
                pairs = [(o, g) for o, g in zip(outputs, grad_outputs)
                         if g is not None and o.requires_grad]
                box["grads"] = torch.autograd.grad([o for o, _ in pairs],
                                                   [leaves[i] for i in wanted],
                                                   [g for _, g in pairs], allow_unused=True)
        except BaseException as e:  # re-raised on the caller's thread
            box["error"] = e

    helper = threading.Thread(target=work, name="mimetic-backward")
    helper.start()
    helper.join()
    if "error" in box:
        raise box["error"]
    for i, g in zip(wanted, box["grads"]):
        grads[i] = g
    return grads


# --------------------------------------------------------------------------------------
# selective_scan (Mamba-1)
#
# The backends are imported when an op first runs: the op packages import this module.


def _ss_backend(backend: str, dtype: torch.dtype):
    """(fwd, bwd) of a selective-scan backend (float64 runs on the chunked path whatever
    the backend: the kernels compute in float32). "cuda": resolved by :func:`_ss_runs` first."""
    if backend == "triton" and dtype != torch.float64:
        from .selective_scan import triton
        return triton.selective_scan_fwd, triton.selective_scan_bwd
    if backend == "cuda" and dtype != torch.float64:
        from .selective_scan import cuda
        return cuda.selective_scan_cuda_fwd, cuda.selective_scan_cuda_bwd
    if backend in ("torch", "triton", "cuda"):
        from .selective_scan import chunked
        return chunked.selective_scan_fwd, chunked.selective_scan_bwd
    return _ss_ref_fwd, _ss_ref_bwd


def _ss_runs(backend: str, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
             z: Tensor | None, need_grad: bool) -> str:
    """The backend that runs a call given ``backend``: "cuda" where its kernels can run these
    inputs (float64 and empty inputs take the chunked scan, as in eager), else the Triton
    scan on CUDA (the chunked one on the CPU) with the kernels' one warning. The fake kernel,
    the forward and the backward all ask, and get the same answer for the same inputs: what
    the fake promises (the checkpoint's shape) is what the forward returns and the backward
    reads."""
    if backend != "cuda":
        return backend
    if u.dtype == torch.float64 or not u.numel():
        return "torch"
    from .selective_scan import cuda
    problem = cuda.unavailable(u, delta, A, B, C, z, need_grad)
    if problem is None:
        return "cuda"
    cuda.warn_fallback(problem)
    return resolve_backend("auto", u)


def _ss_ref_run(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
    from .selective_scan.reference import selective_scan_ref
    return selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                              delta_softplus=delta_softplus, return_last_state=True,
                              initial_state=initial_state)


def _ss_ref_fwd(*args):
    *inputs, delta_softplus, return_last_state, _ = args
    out, last = _ss_ref_run(*inputs, delta_softplus)
    return out, last if return_last_state else None, None


def _ss_ref_bwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, ckpt,
                dout, dlast):
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _autograd_grads(lambda *t: _ss_ref_run(*t, delta_softplus), inputs, [True] * 9,
                      (dout, dlast))


def _ss_fake(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
             z: Tensor | None, delta_bias: Tensor | None, initial_state: Tensor | None,
             delta_softplus: bool, return_last_state: bool, backend: str,
             need_grad: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    runs = _ss_runs(backend, u, delta, A, B, C, z, need_grad)
    return _ss_empty(u, A, B, z, return_last_state, runs, need_grad)


def _ss_empty(u: Tensor, A: Tensor, B: Tensor, z: Tensor | None, return_last_state: bool, backend: str,
              need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last, ckpt) as ``backend`` (an answer of :func:`_ss_runs`) returns them, empty."""
    batch, dim, L = u.shape
    ckpt = u.new_empty(0)
    if backend == "cuda":
        from .selective_scan import cuda
        out = cuda.output_like(u, z)
        if need_grad:
            config = cuda.default_config(u, A.shape[1])
            ckpt = u.new_empty(cuda.checkpoint_shape(u, A, config), dtype=torch.float32)
    elif backend == "triton" and u.dtype != torch.float64:
        from .selective_scan import triton
        out = triton.output_like(u, z)
        if need_grad:  # the forward's default configuration, as the backward recomputes it
            config = triton.default_config(u, A, B, need_grad=True)
            ckpt = u.new_empty(triton.checkpoint_shape(u, A, config), dtype=torch.float32)
    elif backend in ("torch", "triton"):
        # the chunked path writes out as a (b, d, L) view of (b, L, d) memory
        out = u.new_empty(batch, L, dim).transpose(1, 2)
    else:
        out = u.new_empty(batch, dim, L)
    last = (u.new_empty(batch, dim, A.shape[1], dtype=_state_dtype(u)) if return_last_state
            else u.new_empty(0))
    return out, last, ckpt


@torch.library.custom_op("mimetic::selective_scan", mutates_args=())
def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
                       initial_state: Tensor | None, delta_softplus: bool,
                       return_last_state: bool, backend: str,
                       need_grad: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    runs = _ss_runs(backend, u, delta, A, B, C, z, need_grad)
    out_like, last_like, ckpt_like = _ss_empty(u, A, B, z, return_last_state, runs, need_grad)
    fwd, _ = _ss_backend(runs, u.dtype)
    with _no_autocast(u.device.type):
        out, last, ckpt = fwd(*args, delta_softplus, return_last_state, need_grad)
    if ckpt is not None and tuple(ckpt.shape) != tuple(ckpt_like.shape):
        raise RuntimeError(f"selective_scan checkpoints {tuple(ckpt.shape)}, but the fake "
                           f"kernel promised {tuple(ckpt_like.shape)}")
    return (_laid_out(out, out_like, args), last_like if last is None else _laid_out(last, last_like, args),
            ckpt_like if ckpt is None else ckpt)


_selective_scan_op.register_fake(_ss_fake)


@torch.library.custom_op("mimetic::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(grad_out: Tensor, grad_last: Tensor | None, u: Tensor,
                                delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                D: Tensor | None, z: Tensor | None,
                                delta_bias: Tensor | None, initial_state: Tensor | None,
                                delta_softplus: bool, backend: str, needs: list[bool],
                                ckpt: Tensor | None = None) -> list[Tensor]:
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    _, bwd = _ss_backend(_ss_runs(backend, u, delta, A, B, C, z, True), u.dtype)
    if ckpt is not None and not ckpt.numel():
        ckpt = None
    with _no_autocast(u.device.type):
        grads = bwd(*inputs, delta_softplus, ckpt, grad_out, grad_last)
    return _finish_grads(grads, inputs, needs, (grad_out, grad_last))


@_selective_scan_backward_op.register_fake
def _(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state,
      delta_softplus, backend, needs, ckpt=None):
    return _grads_fake((u, delta, A, B, C, D, z, delta_bias, initial_state), needs, grad_out)


def _ss_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9], output[2])
    ctx.delta_softplus, ctx.return_last_state, ctx.backend = inputs[9:12]
    ctx.set_materialize_grads(False)


def _ss_backward(ctx, grad_out, grad_last, grad_ckpt):
    *tensors, ckpt = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:9])
    if grad_out is None:
        grad_out = torch.zeros_like(tensors[0])
    grads = _selective_scan_backward_op(
        grad_out, grad_last if ctx.return_last_state else None, *tensors,
        ctx.delta_softplus, ctx.backend, needs, ckpt)
    return (*[g if need else None for g, need in zip(grads, needs)], None, None, None, None)


_selective_scan_op.register_autograd(_ss_backward, setup_context=_ss_setup_context)


def selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                   return_last_state, backend):
    """``torch.ops.mimetic.selective_scan`` with the public function's results: out, or
    (out, last state) with ``return_last_state``. Arguments as in
    :func:`mimetic.ops.selective_scan` (already validated; ``backend`` resolved)."""
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    out, last, _ = _selective_scan_op(*tensors, delta_softplus, return_last_state, backend,
                                      need_grad)
    return (out, last) if return_last_state else out


# --------------------------------------------------------------------------------------
# ssd_scan (Mamba-2)


def _ssd_backend(backend: str, dtype: torch.dtype):
    """(fwd, bwd) of an SSD backend: the Triton kernels' own, else through autograd of the
    backend's code (float64 runs on the chunked path whatever the backend)."""
    if backend == "triton" and dtype != torch.float64:
        from .ssd import triton
        return triton.ssd_scan_fwd, triton.ssd_scan_bwd
    if backend in ("torch", "triton"):
        from .ssd.chunked import ssd_scan_torch as run
    else:
        from .ssd.reference import ssd_scan_ref as run

    def fwd(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus, dt_limit,
            return_final_states):
        result = run(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                     dt_softplus=dt_softplus, dt_limit=dt_limit, initial_states=initial_states,
                     return_final_states=return_final_states)
        return result if return_final_states else (result, None)

    def bwd(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus, dt_limit,
            dout, dfinal):
        def forward(*inputs):
            return fwd(*inputs, chunk_size, dt_softplus, dt_limit, True)
        return _autograd_grads(forward, (x, dt, A, B, C, D, z, dt_bias, initial_states), [True] * 9,
                          (dout, dfinal))

    return fwd, bwd


def _ssd_fake(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
              z: Tensor | None, dt_bias: Tensor | None, initial_states: Tensor | None,
              chunk_size: int, dt_softplus: bool, dt_min: float, dt_max: float,
              return_final_states: bool, backend: str) -> tuple[Tensor, Tensor]:
    batch, _, H, P = x.shape
    final = (x.new_empty(batch, H, P, B.shape[3], dtype=_state_dtype(x)) if return_final_states
             else x.new_empty(0))
    return x.new_empty(x.shape), final


@torch.library.custom_op("mimetic::ssd_scan", mutates_args=())
def _ssd_scan_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                 z: Tensor | None, dt_bias: Tensor | None, initial_states: Tensor | None,
                 chunk_size: int, dt_softplus: bool, dt_min: float, dt_max: float,
                 return_final_states: bool, backend: str) -> tuple[Tensor, Tensor]:
    args = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    y_like, final_like = _ssd_fake(*args, chunk_size, dt_softplus, dt_min, dt_max,
                                   return_final_states, backend)
    fwd, _ = _ssd_backend(backend, x.dtype)
    with _no_autocast(x.device.type):
        y, final = fwd(*args, chunk_size, dt_softplus, (dt_min, dt_max), return_final_states)
    return (_laid_out(y, y_like, args),
            final_like if final is None else _laid_out(final, final_like, args))


_ssd_scan_op.register_fake(_ssd_fake)


@torch.library.custom_op("mimetic::ssd_scan_backward", mutates_args=())
def _ssd_scan_backward_op(grad_y: Tensor, grad_final: Tensor | None, x: Tensor, dt: Tensor,
                          A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                          z: Tensor | None, dt_bias: Tensor | None,
                          initial_states: Tensor | None, chunk_size: int, dt_softplus: bool,
                          dt_min: float, dt_max: float, backend: str,
                          needs: list[bool]) -> list[Tensor]:
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    _, bwd = _ssd_backend(backend, x.dtype)
    with _no_autocast(x.device.type):
        grads = bwd(*inputs, chunk_size, dt_softplus, (dt_min, dt_max), grad_y, grad_final)
    return _finish_grads(grads, inputs, needs, (grad_y, grad_final))


@_ssd_scan_backward_op.register_fake
def _(grad_y, grad_final, x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size,
      dt_softplus, dt_min, dt_max, backend, needs):
    return _grads_fake((x, dt, A, B, C, D, z, dt_bias, initial_states), needs, grad_y)


def _ssd_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.flags = inputs[9:]


def _ssd_backward(ctx, grad_y, grad_final):
    tensors = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:9])
    chunk_size, dt_softplus, dt_min, dt_max, return_final_states, backend = ctx.flags
    if grad_y is None:
        grad_y = torch.zeros_like(tensors[0])
    grads = _ssd_scan_backward_op(
        grad_y, grad_final if return_final_states else None, *tensors, chunk_size,
        dt_softplus, dt_min, dt_max, backend, needs)
    return (*[g if need else None for g, need in zip(grads, needs)],) + (None,) * 6


_ssd_scan_op.register_autograd(_ssd_backward, setup_context=_ssd_setup_context)


def ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states,
             return_final_states, backend):
    """``torch.ops.mimetic.ssd_scan`` with the public function's results: y, or
    (y, final states) with ``return_final_states``. Arguments as in
    :func:`mimetic.ops.ssd_scan` (already validated; ``backend`` resolved)."""
    y, final = _ssd_scan_op(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size,
                            dt_softplus, float(dt_limit[0]), float(dt_limit[1]),
                            return_final_states, backend)
    return (y, final) if return_final_states else y
