"""Sampling and the generate loop (prefill with the parallel path, then step)."""
from __future__ import annotations

import functools

import torch

from .._progress import progress_bar
from .._validate import bool_arg, int_arg, real_arg
from .cuda_graph import check_graphable, decode_graph


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 1, top_p: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (batch, vocab) -> next token ids (batch,).

    ``top_k == 1`` or ``temperature == 0``: greedy. Otherwise softmax(logits / temperature)
    restricted to the ``top_k`` best tokens (0: no limit) and to the smallest set whose
    mass reaches ``top_p`` (0 or 1: no limit)."""
    if top_k < 0 or not 0.0 <= top_p <= 1.0 or temperature < 0:
        raise ValueError(f"need top_k >= 0, 0 <= top_p <= 1, temperature >= 0; got "
                         f"top_k={top_k}, top_p={top_p}, temperature={temperature}")
    if top_k == 1 or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the best always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 1, top_p: float = 0.0, eos_token_id: int | None = None,
             generator: torch.Generator | None = None, progress: bool = False,
             cuda_graph: bool = False, state_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """See :meth:`mimetic.models.MambaLM.generate`. input_ids (batch, L) -> (batch, L + n).

    ``cuda_graph=True``: the decode steps replay a captured CUDA graph (see
    :mod:`mimetic.models.cuda_graph`); the prefill stays an ordinary forward. The result is
    an ordinary tensor (usable in autograd and in-place ops), not an inference-mode one."""
    int_arg("generate", "max_new_tokens", max_new_tokens, minimum=0)
    real_arg("generate", "temperature", temperature, low=0)
    int_arg("generate", "top_k", top_k, minimum=0)
    real_arg("generate", "top_p", top_p, low=0, high=1)
    int_arg("generate", "eos_token_id", eos_token_id, minimum=0, optional=True)
    bool_arg("generate", "progress", progress)
    bool_arg("generate", "cuda_graph", cuda_graph)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generate: generator={generator!r} must be a torch.Generator or None")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if eos_token_id is not None and vocab is not None and eos_token_id >= vocab:
        raise ValueError(f"generate: eos_token_id={eos_token_id} must be a token id, "
                         f"below vocab_size={vocab}")
    if (not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2
            or input_ids.dtype not in (torch.long, torch.int)):
        got = f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} {tuple(getattr(input_ids, 'shape', ()))}"
        raise ValueError(f"generate: input_ids must be an integer tensor (batch, length), got {got}")
    if input_ids.shape[0] == 0:  # allocate_cache would name its own batch_size=0
        raise ValueError(f"generate: input_ids {tuple(input_ids.shape)} holds no prompt (batch 0)")
    return _generate(model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator,
                     progress, cuda_graph, state_dtype).clone()


@torch.inference_mode()
def _generate(model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator, progress,
              cuda_graph, state_dtype) -> torch.Tensor:
    if cuda_graph:
        check_graphable(model)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_new_tokens == 0:
        return input_ids
    batch, L = input_ids.shape
    if L == 0:
        raise ValueError("generate needs a prompt of at least one token")
    cache = model.allocate_cache(batch, L + max_new_tokens, state_dtype=state_dtype)
    logits = model(input_ids, cache=cache, num_last_tokens=1)[:, -1]
    if cuda_graph and max_new_tokens > 1:
        step = decode_graph(model, batch, state_dtype=state_dtype)
        step.load(cache)  # the graph decodes on its own cache, from the prefilled states
    else:
        step = functools.partial(model.step, cache=cache)
    out = [input_ids]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    for i in progress_bar(range(max_new_tokens), desc="generate", enabled=progress):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            token = token.masked_fill(finished, eos_token_id)
            finished |= token == eos_token_id
        out.append(token[:, None])
        if (eos_token_id is not None and bool(finished.all())) or i == max_new_tokens - 1:
            break
        logits = step(token[:, None])[:, -1]
    return torch.cat(out, dim=1)
