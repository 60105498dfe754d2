"""The scans as ``torch.library`` custom ops, so that ``torch.compile`` sees one opaque op.

Compiling a model::

    model = MambaLM(config)
    compiled = torch.compile(model)                    # or backend="aot_eager" to skip codegen
    logits = compiled(input_ids)                        # the first call traces (slow), later ones are fast
    with torch.autocast("cuda", dtype=torch.bfloat16):  # autocast works too, eager or compiled
        logits = compiled(input_ids)                    # (batch, L, vocab) in bf16
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
    loss.backward()

Nothing else is needed: while dynamo traces, :func:`mimetic.ops.selective_scan` and
:func:`mimetic.ops.ssd_scan` call the ops below (``torch.ops.mimetic.selective_scan``,
``torch.ops.mimetic.ssd_scan``) instead of their backends, so the graph holds one node per
scan instead of the backends' Python loops and threads (which dynamo cannot trace: the
CPU path's ``torch.get_num_threads`` alone broke the graph). In eager mode the public
functions call their backend directly, as before.

Design:

* The forward op runs the backend chosen by the public function (``backend`` is resolved
  before the op, so the op never inspects devices) and returns its outputs; a final state
  that was not asked for comes back as an empty (0,) placeholder, since an op's outputs
  are fixed by its schema.
* The backward is a second opaque op, ``<name>_backward``, which recomputes: it reruns the
  backend forward with autograd on and differentiates it with ``torch.autograd.grad``.
  This costs one extra forward per backward (the backends' own backward passes already
  recompute states chunk by chunk), but needs nothing from the backends beyond their
  public function, whether they are ``autograd.Function``s (selective_scan) or plain
  autograd code (ssd torch path). Eager mode does not pay it.
* Fake (meta) kernels give every output's shape, dtype and strides; the real kernels copy
  an output into that layout only when the backend returned another (torch.compile
  relies on fake and real strides agreeing).
* Autocast: the kernels run with autocast off. The scans compute in float32 themselves
  and return the input dtype (final states float32), so under ``torch.autocast`` the ops
  see the same mixed bf16/fp32 inputs as without it and give the same answer; autocast
  left on would silently run the backends' matmuls in bf16.

Cost of the op route, measured (min of repeats, eager calls of the op against the direct
backend call): H100, Triton backend, bf16, selective scan B=8 D=1536 L=2048 N=16:
forward 1.26 vs 1.27 ms, fwd+bwd 8.23 vs 6.52 ms (the recompute); SSD B=8 L=2048 H=24
P=64 N=128: fwd+bwd 19.6 vs 19.1 ms; a tiny scan (B=1 D=64 L=16): forward 0.22 vs 0.13 ms
(custom-op dispatch, ~0.1 ms a call). CPU torch path, batch 16 dim 256 L 256 N 16:
fwd+bwd 243 vs 193 ms. Hence eager mode keeps the direct call.

The Mamba-1 conv and the norms are plain PyTorch code that dynamo traces (and inductor
fuses) without help, so they are not wrapped; a Triton backend for them would need the
same treatment.
"""
import contextlib
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._dispatch import backend_function

# --------------------------------------------------------------------------------------
# Helpers shared by the ops


def _state_dtype(t: Tensor) -> torch.dtype:
    """Final states are float32, float64 for float64 inputs (the backends' contract)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _no_autocast(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


_AUTOGRAD_KEYS = (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.AutogradOther,
                  torch._C.DispatchKey.AutogradNestedTensor)


@contextlib.contextmanager
def _autograd_on():
    """Re-enable autograd inside a custom op's kernel.

    The dispatcher runs an op's kernel with the Autograd keys excluded (thread-local), so
    there ``enable_grad`` alone records nothing. The backward kernel needs autograd to
    differentiate the backend, so it lifts that exclusion (private API; the same guard
    torch's own higher-order ops use) for the duration of the recompute.
    """
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), \
            torch.enable_grad():
        yield


def _shares_memory(t: Tensor, others: Sequence[Optional[Tensor]]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(o is not None and o.numel() and o.untyped_storage().data_ptr() == ptr
               for o in others)


def _laid_out(t: Tensor, like: Tensor, inputs: Sequence[Optional[Tensor]]) -> Tensor:
    """t in like's layout (like: the empty tensor the fake kernel returns), copying only
    when the strides differ or t shares memory with an input (op outputs may not alias)."""
    if t.numel() and (t.stride() != like.stride() or _shares_memory(t, inputs)):
        return like.copy_(t)
    return t


def _grads_fake(inputs: Sequence[Optional[Tensor]], needs: Sequence[bool], ref: Tensor) -> List[Tensor]:
    """Backward outputs: d loss / d input laid out like the input where needed, else an
    empty (0,) placeholder (an op cannot return None)."""
    return [torch.empty_like(t) if t is not None and need else ref.new_empty(0)
            for t, need in zip(inputs, needs)]


def _recompute_grads(forward: Callable, inputs: Sequence[Optional[Tensor]], needs: Sequence[bool],
                     grad_outputs: Sequence[Optional[Tensor]]) -> List[Tensor]:
    """Gradients of ``forward(*inputs)`` (a tuple of tensors) by rerunning it with autograd.

    inputs: tensors or None; needs: which inputs want a gradient; grad_outputs: one per
    output of forward, None for an output that does not reach the loss. Returns
    :func:`_grads_fake`'s list, filled.
    """
    ref = next(g for g in grad_outputs if g is not None)
    result = _grads_fake(inputs, needs, ref)
    with _autograd_on(), _no_autocast(ref.device.type):
        leaves = [None if t is None else t.detach().requires_grad_(bool(need))
                  for t, need in zip(inputs, needs)]
        wanted = [i for i, leaf in enumerate(leaves) if leaf is not None and leaf.requires_grad]
        if not wanted:
            return result
        outputs = forward(*leaves)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted],
                                    [g for _, g in pairs], allow_unused=True)
    everything = list(inputs) + list(grad_outputs)
    for i, g in zip(wanted, grads):
        if g is None:  # the input does not reach any output that reaches the loss
            result[i].zero_()
        else:
            result[i] = _laid_out(g, result[i], everything)
    return result


# --------------------------------------------------------------------------------------
# selective_scan (Mamba-1)


def _ss_triton_out(u: Tensor, z: Optional[Tensor]) -> Tensor:
    """The Triton backend's out (its default lane / segment kernels): laid out like z (like
    u without z) when that tensor is dense, else contiguous -- ``torch.empty_like`` of it
    after the backend's copy of inputs whose time axis is strided (see ``_out_like`` in
    ``selective_scan/triton.py``)."""
    like = z if z is not None else u
    if like.stride(-1) != 1 and like.shape[-1] != 1:
        like = like.contiguous()
    return torch.empty_like(like, dtype=u.dtype)


def _ss_fake(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
             delta_softplus: bool, return_last_state: bool, backend: str) -> Tuple[Tensor, Tensor]:
    batch, dim, L = u.shape
    # float64 goes to the torch path whatever the backend (the kernels compute in float32).
    if backend == "torch" or u.dtype == torch.float64:
        # the torch path writes out as a (b, d, L) view of (b, L, d) memory
        out = u.new_empty(batch, L, dim).transpose(1, 2)
    elif backend == "triton":
        out = _ss_triton_out(u, z)
    else:
        out = u.new_empty(batch, dim, L)
    last = (u.new_empty(batch, dim, A.shape[1], dtype=_state_dtype(u)) if return_last_state
            else u.new_empty(0))
    return out, last


@torch.library.custom_op("mimetic::selective_scan", mutates_args=())
def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                       initial_state: Optional[Tensor], delta_softplus: bool,
                       return_last_state: bool, backend: str) -> Tuple[Tensor, Tensor]:
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    out_like, last_like = _ss_fake(*args, delta_softplus, return_last_state, backend)
    fn = backend_function("selective_scan", backend)
    with _no_autocast(u.device.type):
        result = fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                    delta_softplus=delta_softplus, return_last_state=return_last_state,
                    initial_state=initial_state)
    out, last = result if return_last_state else (result, last_like)
    return _laid_out(out, out_like, args), _laid_out(last, last_like, args)


_selective_scan_op.register_fake(_ss_fake)


@torch.library.custom_op("mimetic::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(grad_out: Tensor, grad_last: Optional[Tensor], u: Tensor,
                                delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                D: Optional[Tensor], z: Optional[Tensor],
                                delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
                                delta_softplus: bool, backend: str,
                                needs: List[bool]) -> List[Tensor]:
    fn = backend_function("selective_scan", backend)

    def forward(u, delta, A, B, C, D, z, delta_bias, initial_state):
        return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                  delta_softplus=delta_softplus, return_last_state=True,
                  initial_state=initial_state)

    return _recompute_grads(forward, (u, delta, A, B, C, D, z, delta_bias, initial_state),
                            needs, (grad_out, grad_last))


@_selective_scan_backward_op.register_fake
def _(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
      backend, needs):
    return _grads_fake((u, delta, A, B, C, D, z, delta_bias, initial_state), needs, grad_out)


def _ss_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.delta_softplus, ctx.return_last_state, ctx.backend = inputs[9:]


def _ss_backward(ctx, grad_out, grad_last):
    tensors = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:9])
    if grad_out is None:
        grad_out = torch.zeros_like(tensors[0])
    grads = _selective_scan_backward_op(
        grad_out, grad_last if ctx.return_last_state else None, *tensors, ctx.delta_softplus,
        ctx.backend, needs)
    return (*[g if need else None for g, need in zip(grads, needs)], None, None, None)


_selective_scan_op.register_autograd(_ss_backward, setup_context=_ss_setup_context)


def selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                   return_last_state, backend):
    """``torch.ops.mimetic.selective_scan`` with the public function's results: out, or
    (out, last state) with ``return_last_state``. Arguments as in
    :func:`mimetic.ops.selective_scan` (already validated; ``backend`` resolved)."""
    out, last = _selective_scan_op(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                   delta_softplus, return_last_state, backend)
    return (out, last) if return_last_state else out


# --------------------------------------------------------------------------------------
# ssd_scan (Mamba-2)


def _ssd_fake(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
              z: Optional[Tensor], dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
              chunk_size: int, dt_softplus: bool, dt_min: float, dt_max: float,
              return_final_states: bool, backend: str) -> Tuple[Tensor, Tensor]:
    batch, _, H, P = x.shape
    final = (x.new_empty(batch, H, P, B.shape[3], dtype=_state_dtype(x)) if return_final_states
             else x.new_empty(0))
    return x.new_empty(x.shape), final


@torch.library.custom_op("mimetic::ssd_scan", mutates_args=())
def _ssd_scan_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                 z: Optional[Tensor], dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
                 chunk_size: int, dt_softplus: bool, dt_min: float, dt_max: float,
                 return_final_states: bool, backend: str) -> Tuple[Tensor, Tensor]:
    args = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    y_like, final_like = _ssd_fake(*args, chunk_size, dt_softplus, dt_min, dt_max,
                                   return_final_states, backend)
    fn = backend_function("ssd", backend)
    with _no_autocast(x.device.type):
        result = fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                    dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max),
                    initial_states=initial_states, return_final_states=return_final_states)
    y, final = result if return_final_states else (result, final_like)
    return _laid_out(y, y_like, args), _laid_out(final, final_like, args)


_ssd_scan_op.register_fake(_ssd_fake)


@torch.library.custom_op("mimetic::ssd_scan_backward", mutates_args=())
def _ssd_scan_backward_op(grad_y: Tensor, grad_final: Optional[Tensor], x: Tensor, dt: Tensor,
                          A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                          z: Optional[Tensor], dt_bias: Optional[Tensor],
                          initial_states: Optional[Tensor], chunk_size: int, dt_softplus: bool,
                          dt_min: float, dt_max: float, backend: str,
                          needs: List[bool]) -> List[Tensor]:
    fn = backend_function("ssd", backend)

    def forward(x, dt, A, B, C, D, z, dt_bias, initial_states):
        return fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                  dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max),
                  initial_states=initial_states, return_final_states=True)

    return _recompute_grads(forward, (x, dt, A, B, C, D, z, dt_bias, initial_states), needs,
                            (grad_y, grad_final))


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
