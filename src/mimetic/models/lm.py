"""MambaLM: embedding -> N x Block(mixer) -> final norm -> tied LM head."""
from __future__ import annotations

import torch
from torch import nn

from .._validate import numpy_note
from ..init import init_lm_weights_, mimetic_init_
from ..modules import MHA, Block, GatedMLP, RMSNorm
from ..modules._args import check_device, check_dtype
from . import checkpoint, generation
from .cache import InferenceCache, KVState, SSMState
from .config import LAYER_TYPES, MambaConfig


def _make_norm(config: MambaConfig, **factory) -> nn.Module:
    if config.rms_norm:
        return RMSNorm(config.d_model, eps=1e-5, **factory)
    return nn.LayerNorm(config.d_model, eps=1e-5, **factory)


def _make_block(config: MambaConfig, layer_idx: int, **factory) -> Block:
    if layer_idx in config.attn_layer_idx:
        mixer = MHA(config.d_model, layer_idx=layer_idx, **config.attn_cfg, **factory)
    else:
        mixer_cls = LAYER_TYPES[config.layer_type]
        mixer = mixer_cls(config.d_model, layer_idx=layer_idx, **config.mixer_kwargs(), **factory)
    mlp = norm2 = None
    if config.d_intermediate > 0:
        mlp = GatedMLP(config.d_model, config.d_intermediate, **factory)
        norm2 = _make_norm(config, **factory)
    return Block(config.d_model, mixer, _make_norm(config, **factory), mlp=mlp, norm2=norm2,
                 residual_in_fp32=config.residual_in_fp32)


class MixerModel(nn.Module):
    """The backbone: ``embedding``, ``layers``, ``norm_f`` (names as in ``mamba_ssm``)."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model, **factory)
        self.layers = nn.ModuleList(_make_block(config, i, **factory) for i in range(config.n_layer))
        self.norm_f = _make_norm(config, **factory)
        self.residual_in_fp32 = config.residual_in_fp32

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """input_ids (batch, L) -> final hidden states (batch, L, d_model)."""
        hidden, residual = self.embedding(input_ids), None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, cache=None if cache is None else cache.layers[i])
        if isinstance(self.norm_f, RMSNorm):
            return self.norm_f(hidden, residual=residual)
        return self.norm_f((hidden + residual).to(self.norm_f.weight.dtype))


class MambaLM(nn.Module):
    """A language model of Mamba-1 / Mamba-2 / attention blocks.

    ``model(input_ids)`` maps token ids (batch, L) to logits (batch, L, vocab_size) (the
    padding rows of the embedding are cut off). Decoding: :meth:`allocate_cache`,
    :meth:`step`, :meth:`generate`. Checkpoints: :meth:`save_pretrained`,
    :meth:`from_pretrained` (also reads ``mamba_ssm`` and ``transformers`` checkpoints).
    """

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        if not isinstance(config, MambaConfig):
            raise TypeError(f"MambaLM takes a MambaConfig (MambaConfig.from_dict for a dict), "
                            f"got {type(config).__name__}")
        check_device("MambaLM", device)
        check_dtype("MambaLM", "dtype", dtype)
        self.config = config
        self.backbone = MixerModel(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False,
                                 device=device, dtype=dtype)
        self.apply_init()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def apply_init(self) -> None:
        """(Re)apply the configured initialization: ``mamba_ssm``'s, then mimetic if asked."""
        n_res = 1 if self.config.d_intermediate == 0 else 2
        init_lm_weights_(self, self.config.n_layer, n_residuals_per_layer=n_res)
        if self.config.init == "mimetic" and len(self.config.attn_layer_idx) < self.config.n_layer:
            mimetic_init_(self, **self.config.init_cfg)

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor (batch, length), got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor of int64 (long) or int32, got {input_ids.dtype}")
        # The range check reads the data: skip it while compiling so it costs no graph break.
        if torch.compiler.is_compiling():
            return
        if input_ids.device.type == "cpu" and input_ids.numel() and (
                input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")

    def _check_cache(self, cache: InferenceCache, input_ids: torch.Tensor) -> None:
        """The cache fits this model and batch and has room for the new tokens (host-side
        numbers only: no device read). Mamba layers keep a fixed-size state and would
        accept any length; the cache's ``max_seqlen`` is the promise checked here."""
        if not isinstance(cache, InferenceCache):
            raise TypeError(f"cache must be an InferenceCache (model.allocate_cache), got {type(cache).__name__}")
        if len(cache.layers) != len(self.backbone.layers):
            raise ValueError(f"cache holds {len(cache.layers)} layers, the model has {len(self.backbone.layers)}")
        if input_ids.shape[0] != cache.batch_size:
            raise ValueError(f"cache was allocated for batch {cache.batch_size}, got {input_ids.shape[0]}")
        if cache.seqlen_offset + input_ids.shape[1] > cache.max_seqlen:
            raise ValueError(f"cache holds {cache.max_seqlen} tokens: {cache.seqlen_offset} consumed, "
                             f"{input_ids.shape[1]} more do not fit (allocate_cache with a larger max_seqlen)")

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None,
                num_last_tokens: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (batch, L) -> logits (batch, L, vocab_size), or of the last
        ``num_last_tokens`` positions only, or at ``positions`` (batch, P) long only:
        (batch, P, vocab_size), the LM head computed only where a loss reads it
        (:func:`mimetic.tasks.scored_slots`). With ``cache``, the layers' states are filled
        (prefill) and the cache advanced by L."""
        self._check_ids(input_ids)
        if isinstance(num_last_tokens, bool) or not isinstance(num_last_tokens, int) or num_last_tokens < 0:
            raise ValueError(f"num_last_tokens must be an int >= 0 (0: every position), got {num_last_tokens!r}")
        if positions is not None and (positions.dim() != 2 or positions.shape[0] != input_ids.shape[0]
                                      or num_last_tokens):
            raise ValueError(f"positions must be (batch={input_ids.shape[0]}, P) long, without num_last_tokens; "
                             f"got {tuple(positions.shape)}")
        if cache is not None:
            self._check_cache(cache, input_ids)
        hidden = self.backbone(input_ids, cache=cache)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        if positions is not None:
            hidden = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.lm_head(hidden)[..., : self.config.vocab_size]

    # ---- decoding -------------------------------------------------------------------------

    def allocate_cache(self, batch_size: int, max_seqlen: int, dtype=None,
                       state_dtype: torch.dtype = torch.float32) -> InferenceCache:
        """A fresh cache for ``batch_size`` sequences of up to ``max_seqlen`` tokens.
        ``dtype``: conv states and attention keys/values (default: the weights');
        ``state_dtype``: the Mamba layers' SSM states. float32 keeps the recurrence
        accurate over long generations; the model's half dtype (as ``mamba_ssm`` does)
        halves the state bytes that each decoding step reads and writes."""
        for name, value in (("batch_size", batch_size), ("max_seqlen", max_seqlen)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}{numpy_note(value)}")
        check_dtype("allocate_cache", "dtype", dtype)
        check_dtype("allocate_cache", "state_dtype", state_dtype, optional=False)
        cache = InferenceCache(batch_size=batch_size, max_seqlen=max_seqlen)
        for layer in self.backbone.layers:
            mixer = layer.mixer
            if isinstance(mixer, MHA):
                cache.layers.append(KVState(*mixer.allocate_state(batch_size, max_seqlen, dtype=dtype)))
            else:
                cache.layers.append(SSMState(*mixer.allocate_state(batch_size, dtype=dtype,
                                                                   state_dtype=state_dtype)))
        return cache

    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """Advance ``cache`` by one token: input_ids (batch, 1) -> logits (batch, 1, vocab)."""
        if not isinstance(input_ids, torch.Tensor):  # forward checks the rest (ids, cache room)
            raise TypeError(f"input_ids must be a torch.Tensor (batch, 1), got {type(input_ids).__name__}")
        if not isinstance(cache, InferenceCache):
            raise TypeError(f"cache must be an InferenceCache (model.allocate_cache), got {type(cache).__name__}")
        if input_ids.dim() != 2 or input_ids.shape[1] != 1:
            raise ValueError(f"step takes input_ids of shape (batch, 1), got {tuple(input_ids.shape)}")
        if input_ids.shape[0] != cache.batch_size:
            raise ValueError(f"cache was allocated for batch {cache.batch_size}, got {input_ids.shape[0]}")
        if cache.seqlen_offset >= cache.max_seqlen:
            raise ValueError(f"cache is full ({cache.max_seqlen} tokens)")
        # On an empty cache this is a length-1 prefill; on a warm one, a recurrent step.
        return self.forward(input_ids, cache=cache)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 1, top_p: float = 0.0, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None, progress: bool = False,
                 cuda_graph: bool = False, state_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Continue each prompt: input_ids (batch, L) -> (batch, L + n) with n <=
        ``max_new_tokens`` (fewer when every sequence has emitted ``eos_token_id``; finished
        sequences are padded with it). ``top_k=1`` is greedy; otherwise sample at
        ``temperature`` from the ``top_k`` most likely tokens (0: all) and/or the nucleus of
        mass ``top_p`` (0: off). The prompt is consumed by one parallel forward (prefill),
        then the model steps one token at a time. ``cuda_graph=True`` (CUDA, Mamba layers
        only) replays each step as one captured CUDA graph: same tokens, far fewer kernel
        launches; the graph is captured on the first call and reused by later ones of the
        same batch size (see :mod:`mimetic.models.cuda_graph`). ``state_dtype``: dtype of
        the SSM states while decoding (see :meth:`allocate_cache`)."""
        return generation.generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, eos_token_id=eos_token_id, generator=generator,
                                   progress=progress, cuda_graph=cuda_graph, state_dtype=state_dtype)

    # ---- checkpoints ----------------------------------------------------------------------

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` under directory ``path``."""
        checkpoint.save_pretrained(self, path)

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> MambaLM:
        """Load from a local directory in our format, ``mamba_ssm``'s (``config.json`` +
        ``pytorch_model.bin``) or ``transformers``' (``MambaForCausalLM`` /
        ``Mamba2ForCausalLM``)."""
        return checkpoint.load_pretrained(cls, path, device=device, dtype=dtype)

