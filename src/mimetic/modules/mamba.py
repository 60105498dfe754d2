"""Mamba-1 layer (selective SSM), with ``mamba_ssm``'s constructor and parameter names."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..init import default_init_mamba_
from ..ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update
from ._args import check_factory, check_hidden, check_mamba_args
from .batch_parallel import batch_parallel


class Mamba(nn.Module):
    """Selective state space layer (Gu & Dao 2023).

    in_proj: d_model -> 2*d_inner (x, z); causal depthwise conv + SiLU on x; x_proj gives
    (dt, B, C) from x; delta = softplus(dt_proj(dt) + bias); selective scan with A =
    -exp(A_log) and skip D; gate with SiLU(z); out_proj back to d_model.

    Input and output: (batch, length, d_model).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,  # accepted for mamba_ssm compatibility; ops pick the path
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_mamba_args(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale,
                         dt_init_floor, conv_bias, bias, use_fast_path)
        check_factory("Mamba", layer_idx, device, dtype)
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.dt_init_cfg = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                                dt_init_floor=dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        default_init_mamba_(self)

    def forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model). With ``cache`` (a
        :class:`~mimetic.models.cache.SSMState`), fills it with the final conv and SSM
        states (prefill) or, for L == 1 and a warm cache, takes one recurrent step."""
        check_hidden("Mamba", hidden_states, self.d_model, self.in_proj.weight)
        if cache is not None and cache.seqlen_offset > 0:
            if hidden_states.shape[1] != 1:
                raise ValueError("a warm cache can only be advanced one token at a time")
            return self.step(hidden_states, cache)
        if hidden_states.numel() == 0:  # no batch rows or no steps: nothing to scan
            return self.out_proj(self.in_proj(hidden_states)[..., :self.d_inner])
        if cache is None:
            return batch_parallel(self, self._forward, hidden_states)
        return self._forward(hidden_states, cache)

    def scan_inputs(self, hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
        """What this layer feeds its selective scan for hidden_states (b, L, d_model): the
        keyword arguments of :func:`mimetic.ops.selective_scan`, ``u`` (the conv output),
        ``delta`` (before bias and softplus), ``A``, ``B``, ``C``, ``D``, ``z``,
        ``delta_bias`` and ``delta_softplus``. The layer's output is
        ``out_proj(selective_scan(**inputs).transpose(1, 2))``."""
        return self._scan_inputs(hidden_states, None)

    def _scan_inputs(self, hidden_states: torch.Tensor, cache) -> dict[str, torch.Tensor]:
        # Every (batch, features, L) tensor here has L contiguous, the layout of the conv
        # and the scan, and each projection is one GEMM that reads and writes its operands
        # in the layout they come in, forward and backward: no layout copies (see the
        # helpers below; torch.matmul(W, h^T) would copy twice, forward and backward).
        x, z = _in_proj(hidden_states, self.in_proj.weight, self.in_proj.bias,
                        (self.d_inner, self.d_inner))  # (batch, d_inner, L), feature-major
        x = causal_conv1d(x, rearrange(self.conv1d.weight, "d 1 w -> d w"), self.conv1d.bias,
                          activation="silu", return_final_states=cache is not None)
        if cache is not None:
            x, cache.conv_state = x
        dt, B, C = _weight_bmm(self.x_proj.weight, x).split(
            [self.dt_rank, self.d_state, self.d_state], dim=1)   # (batch, rank | n | n, L)
        dt = _weight_bmm(self.dt_proj.weight, dt)  # (batch, d_inner, L); bias goes in the scan
        # D and the dt bias go in as they are (the kernels read any float dtype in fp32).
        return dict(u=x, delta=dt, A=self.A, B=B, C=C, D=self.D, z=z,
                    delta_bias=self.dt_proj.bias, delta_softplus=True)

    def _forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        y = selective_scan(**self._scan_inputs(hidden_states, cache),
                           return_last_state=cache is not None)
        if cache is not None:
            y, last = y
            cache.ssm_state = last.to(cache.ssm_state.dtype)
        return _out_proj(y, self.out_proj.weight, self.out_proj.bias)

    @property
    def A(self) -> torch.Tensor:
        """State matrix (d_inner, d_state), negative real."""
        return -torch.exp(self.A_log.float())

    def step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step: hidden_states (batch, 1, d_model) -> (batch, 1, d_model)."""
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)  # (batch, d_inner)
        x = causal_conv1d_update(x, cache.conv_state, rearrange(self.conv1d.weight, "d 1 w -> d w"),
                                 self.conv1d.bias, activation="silu")
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The step applies dt_proj and forms A = -exp(A_log) itself: fewer launches a token.
        y = selective_state_update(cache.ssm_state, x, dt, self.A_log, B, C, self.D, z=z,
                                   dt_bias=self.dt_proj.bias, dt_softplus=True, A_is_log=True,
                                   dt_proj_weight=self.dt_proj.weight)
        return self.out_proj(y).unsqueeze(1)

    def allocate_state(self, batch_size: int, device=None, dtype=None,
                       state_dtype: torch.dtype = torch.float32):
        """Zero conv state (batch, d_inner, d_conv-1) in ``dtype`` (default: the conv
        weight's) and SSM state (batch, d_inner, d_state) in ``state_dtype``."""
        device = device or self.out_proj.weight.device
        dtype = dtype or self.conv1d.weight.dtype
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=state_dtype)
        return conv, ssm


# ------------------------------------------------------------------- layout-free projections
#
# "Feature-major": a (batch, f, L) view of (f, batch * L) memory (strides (L, batch*L, 1)),
# i.e. W @ h^T computed as one GEMM over all batch * L tokens. Its rows are L-contiguous
# (what the conv and scan kernels need) and it is a plain matrix to the GEMMs of the
# projections' backward. torch.matmul(W, h^T) instead folds the batch through h's
# transpose and returns ``.mT.contiguous()`` of the product (a copy), and its backward
# copies the gradient back (two more).


def _token_matrix(t: torch.Tensor) -> torch.Tensor:
    """(batch, f, L) -> (f, batch * L): a view when t is feature-major (or a transposed
    (batch, L, f) tensor, as the CPU scan returns), else a copy."""
    batch, f, L = t.shape
    return t.permute(1, 0, 2).reshape(f, batch * L)


class _FeatureMajorLinear(torch.autograd.Function):
    """(h W^T + bias)^T split into row blocks of W: h (batch, L, d_in) -> one (batch, f_i, L)
    tensor per block, feature-major views of a single (sum f_i, batch * L) GEMM output.

    Returning the blocks from one Function (instead of ``.chunk`` of one output) lets the
    backward take each block's gradient separately: autograd's split backward would
    concatenate them first (a copy). Each gradient is read as a (f_i, batch * L) matrix
    (a view when it is feature-major, as the scan writes dz; else one copy), and the
    blocks' GEMMs write dW's rows in place and accumulate dh (addmm).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, sizes):
        batch, L, d_in = h.shape
        tokens = h.reshape(batch * L, d_in)                    # a view of a contiguous h
        if bias is None:
            out = torch.mm(weight, tokens.t())                 # (sum f_i, batch * L)
        else:
            out = torch.addmm(bias[:, None], weight, tokens.t())
        ctx.save_for_backward(tokens, weight)
        ctx.sizes, ctx.batch, ctx.has_bias = sizes, batch, bias is not None
        ctx.set_materialize_grads(False)   # an unused block's gradient stays None
        return tuple(m.view(f, batch, L).permute(1, 0, 2) for f, m in zip(sizes, out.split(sizes)))

    @staticmethod
    def backward(ctx, *grads):
        tokens, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtokens = None
        dW = torch.empty_like(weight) if need_w else None
        dbias = weight.new_empty(weight.shape[0]) if need_b and ctx.has_bias else None
        row = 0
        for f, g in zip(ctx.sizes, grads):
            rows = slice(row, row + f)
            row += f
            if g is None:                                      # block unused by the loss
                for d in (dW, dbias):
                    if d is not None:
                        d[rows].zero_()
                continue
            gm = _token_matrix(g)                              # (f, batch * L)
            if need_w:
                torch.mm(gm, tokens, out=dW[rows])
            if dbias is not None:
                torch.sum(gm, 1, out=dbias[rows])
            if need_h:
                if dtokens is None:
                    dtokens = torch.mm(gm.t(), weight[rows])   # (batch * L, d_in)
                else:
                    dtokens.addmm_(gm.t(), weight[rows])
        dh = dtokens.view(ctx.batch, -1, tokens.shape[1]) if dtokens is not None else None
        return dh, dW, dbias, None


def _in_proj(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             sizes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """h (batch, L, d_in) -> the row blocks ``sizes`` of h W^T + bias, each (batch, f_i, L)
    feature-major (see :class:`_FeatureMajorLinear`). Under autocast, as nn.Linear would:
    operands cast to the autocast dtype (the casts recorded by autograd), GEMMs in it."""
    device = h.device.type
    if not torch.is_autocast_enabled(device):
        return _FeatureMajorLinear.apply(h, weight, bias, sizes)
    dtype = torch.get_autocast_dtype(device)
    h, weight = h.to(dtype), weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False):
        return _FeatureMajorLinear.apply(h, weight, bias, sizes)


def _weight_bmm(weight: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """weight (f_out, f_in) @ t (batch, f_in, L) -> (batch, f_out, L), contiguous.

    A batched GEMM over the weight expanded along batch (stride 0, no copy): it takes t
    in any L- or f-contiguous layout, and its backward gives dt the same way and dW as
    per-batch products summed (ExpandBackward). Used for x_proj and dt_proj, whose
    weights are small (their per-batch dW partials too). Under autocast the weight is
    cast before the expand (autocast would materialize the expanded copy)."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        weight = weight.to(torch.get_autocast_dtype(device))
    return torch.bmm(weight.expand(t.shape[0], -1, -1), t)


def _out_proj(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y (batch, d_inner, L) -> y^T W^T + bias (batch, L, d_model), one GEMM over the
    batch * L tokens: y enters as the transpose of its (d_inner, batch * L) matrix (a view
    for the feature-major y of the Triton scan; GEMMs take transposed operands), and
    autograd's mm backward returns dy in that same feature-major layout."""
    batch, _, L = y.shape
    return F.linear(_token_matrix(y).t(), weight, bias).view(batch, L, -1)
