"""CUDA-graph decoding: the single-token decode step captured once, replayed per token.

Why: one decoding step runs every layer's step -- for a 24-layer Mamba some 25 small
kernels a layer, 600+ launches a token -- on tensors of a few kilobytes. The GPU finishes
each kernel in microseconds, faster than Python and the driver can launch the next, so
plain single-token decoding is bound by launch overhead, not by the GPU. A CUDA graph
records the whole step (all layers, final norm, LM head) once and replays it with one
launch, as ``mamba_ssm``'s ``generate(cg=True)`` does.

What a graph needs: every tensor the step reads or writes stays at one address. The token
goes into a static input buffer, the logits come out in a static output buffer, and each
layer's state is updated in place (conv state by ``causal_conv1d_update``, SSM state by
``selective_state_update`` / ``ssd_state_update``). The graph is bound to the tensors of
one cache; a prefill assigns new state tensors, so prefill into a separate cache and copy
it in with :meth:`DecodeGraph.load` (``generate`` does).

Attention layers are not supported (a clear error): their step reads a Python-int
``seqlen_offset`` (which KV slot to write, how many keys to attend over), which a graph
would freeze at its capture-time value. Supporting them would need a device-side offset
and attention over the whole fixed-size KV buffer with a mask.
"""
from __future__ import annotations

import weakref

import torch

from ..modules import MHA
from .cache import InferenceCache

__all__ = ["DecodeGraph", "check_graphable", "decode_graph"]


def check_graphable(model) -> None:
    """Raise ``ValueError`` unless ``model`` (a MambaLM) can decode through a CUDA graph:
    no attention layers, parameters on a CUDA device."""
    attn = [i for i, layer in enumerate(model.backbone.layers) if isinstance(layer.mixer, MHA)]
    if attn:
        raise ValueError(f"cuda_graph=True does not support attention layers (layers {attn}): "
                         "their decoding step follows a Python-side sequence offset that a "
                         "captured graph cannot; use cuda_graph=False")
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device; this one is on {device}")


def _set_offset(cache: InferenceCache, offset: int) -> None:
    cache.seqlen_offset = offset
    for state in cache.layers:
        state.seqlen_offset = offset


class DecodeGraph:
    """One captured decoding step of ``model`` on ``cache``.

    Args:
        model: a :class:`~mimetic.models.MambaLM` of Mamba layers on CUDA.
        cache: an :class:`~mimetic.models.cache.InferenceCache` of that model; from now on
            the graph owns its state tensors (their values are kept through the capture).
        n_warmup: eager steps on a side stream before the capture (they compile the
            Triton kernels and set up cuBLAS); their effect on the state is undone.

    ``graph(input_ids)``: input_ids (batch, 1) -> logits (batch, 1, vocab_size), and the
    cache advanced by one token, exactly as ``model.step(input_ids, cache)``. The logits
    are a static buffer that the next call overwrites.
    """

    @torch.inference_mode()
    def __init__(self, model, cache: InferenceCache, n_warmup: int = 2):
        check_graphable(model)
        self.cache = cache
        self.key = None  # what decode_graph reuses this graph for
        device = next(model.parameters()).device
        self.static_ids = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        saved = [(s.conv_state.clone(), s.ssm_state.clone()) for s in cache.layers]
        offset, max_seqlen = cache.seqlen_offset, cache.max_seqlen
        _set_offset(cache, max(offset, 1))  # > 0: the layers take their recurrent step
        cache.max_seqlen = max(max_seqlen, cache.seqlen_offset + 1)  # room for the captured step
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(n_warmup):
                model(self.static_ids, cache=cache)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits = model(self.static_ids, cache=cache)
        for s, (conv, ssm) in zip(cache.layers, saved):
            s.conv_state.copy_(conv)
            s.ssm_state.copy_(ssm)
        _set_offset(cache, offset)
        cache.max_seqlen = max_seqlen
        self._bound = [(s.conv_state, s.ssm_state) for s in cache.layers]

    def _check_bound(self) -> None:
        if any(s.conv_state is not conv or s.ssm_state is not ssm
               for s, (conv, ssm) in zip(self.cache.layers, self._bound)):
            raise RuntimeError("the graph's cache tensors were replaced (a prefill assigns new "
                               "ones); prefill into another cache and copy it in with load()")

    @torch.inference_mode()
    def load(self, other: InferenceCache) -> None:
        """Copy the states and offset of ``other`` (e.g. a freshly prefilled cache of the
        same batch size) into the graph's cache."""
        mine = self.cache
        if other.batch_size != mine.batch_size or len(other.layers) != len(mine.layers):
            raise ValueError(f"cache for batch {other.batch_size} with {len(other.layers)} layers "
                             f"does not fit a graph of batch {mine.batch_size}, {len(mine.layers)} layers")
        for dst, src in zip(mine.layers, other.layers):
            dst.conv_state.copy_(src.conv_state)
            dst.ssm_state.copy_(src.ssm_state)
        mine.max_seqlen = other.max_seqlen
        _set_offset(mine, other.seqlen_offset)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape != self.static_ids.shape:
            raise ValueError(f"graph was captured for input_ids of shape "
                             f"{tuple(self.static_ids.shape)}, got {tuple(input_ids.shape)}")
        if self.cache.seqlen_offset >= self.cache.max_seqlen:
            raise ValueError(f"cache is full ({self.cache.max_seqlen} tokens)")
        self._check_bound()
        self.static_ids.copy_(input_ids)
        self.graph.replay()
        self.cache.advance(1)
        return self.static_logits


# One graph per model, reused by later generate calls of the same batch size. Weak keys:
# the graph (which holds no reference to the model) goes when the model does.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_key(model) -> tuple:
    # A graph reads the weights at their capture-time addresses: recapture when any
    # parameter or buffer was replaced (e.g. model.half(), a new device).
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape))
                 for t in (*model.parameters(), *model.buffers()))


def decode_graph(model, batch_size: int, state_dtype: torch.dtype = torch.float32) -> DecodeGraph:
    """``model``'s :class:`DecodeGraph` for ``batch_size``: captured on first use (on a
    cache of its own, SSM states in ``state_dtype``), then reused while the batch size,
    the state dtype and the weights' storage stay."""
    key = (batch_size, state_dtype, _weights_key(model))
    graph = _GRAPHS.get(model)
    if graph is None or graph.key != key:
        _GRAPHS.pop(model, None)  # free the old graph's memory before capturing anew
        del graph
        graph = DecodeGraph(model, model.allocate_cache(batch_size, 1, state_dtype=state_dtype))
        graph.key = key
        _GRAPHS[model] = graph
    return graph
