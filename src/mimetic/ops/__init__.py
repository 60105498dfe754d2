"""The math of Mamba, one folder per op; each public function hides its backends.

Every op folder has the same shape: ``__init__.py`` holds the public function(s), their
input checks and one literal backend table (``BACKENDS``; ``STEP_BACKENDS`` for the
decoding step); ``reference.py`` is the plain oracle; the fast pure-PyTorch path is named
after its method (``chunked.py``, ``shifted.py``); ``triton.py`` holds the kernels;
``step.py`` / ``step_triton.py`` the one-token decoding step. ``_dispatch.py`` resolves
``backend=``, ``_library.py`` wraps the scans for torch.compile.

Notation (the shapes in docstrings use it):

    b      batch
    L      sequence length (time steps)
    d      channels: of a Mamba-1 scan (the layer's d_inner), of the conv, of a norm
    n      state size per channel or head (d_state)
    g      groups sharing B and C (ngroups); they split d (Mamba-1) or h (Mamba-2) evenly
    h      heads of a Mamba-2 scan (nheads)
    p      channels per head (headdim); h * p = d_inner
    W      conv width (d_conv)
    chunk  steps per chunk of a chunked algorithm (chunk_size)

In formulas and code a lowercase letter is also the index and the capital its size: head
h of H, group g of G, channel p of P, state n of N; ``batch``, ``dim`` and ``L`` name the
sizes b, d and L in code. A chunk has T steps in the pure-PyTorch code and Q in the SSD
kernels (where T is the transpose).

Mamba-1 tensors are channel-major, (b, d, L); Mamba-2 tensors are time-major, (b, L, h, p).
Scans compute in float32 (float64 for float64 inputs) and return the input's dtype;
final states are float32 (float64 for float64 inputs).
"""
from .causal_conv1d import causal_conv1d, causal_conv1d_update
from .rms_norm import rms_norm
from .selective_scan import selective_scan, selective_state_update
from .ssd import ssd_scan, ssd_state_update

__all__ = [
    "causal_conv1d",
    "causal_conv1d_update",
    "rms_norm",
    "selective_scan",
    "selective_state_update",
    "ssd_scan",
    "ssd_state_update",
]
