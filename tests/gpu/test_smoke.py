"""Whole models on a CUDA GPU: the paths a GPU picks by default (the Triton kernels) give
the CPU (PyTorch) paths' logits and gradients, decoding step by step gives the parallel
forward, and a short bf16-autocast training run learns the copy task. Skipped without CUDA
(``-m gpu`` selects these tests; they were the script ``benchmarks/gpu_smoke.py``).

Tolerances: relative errors in fp32 of 1e-4; measured on an H100 (benchmarks/RESULTS.md,
"Whole models on the GPU"): logits <= 1.3e-6, parameter gradients <= 9.3e-6, step-by-step
decoding <= 6.1e-7. Training: mimetic init reached token accuracy 0.875, default init 0.119.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimetic import MambaConfig, MambaLM
from mimetic.tasks import make_task
from mimetic.train import TrainConfig, train

from ..ops.numerics import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = 1e-4
BATCH, LENGTH, VOCAB = 4, 300, 100


def lm_config(layer: str, attn_layer_idx: list[int]) -> MambaConfig:
    """3 layers, d_model 128, mimetic init; Mamba-2 headdim 32 in chunks of 64; optional
    attention at the given layers (4 heads, rotary 32)."""
    ssm = {"layer": layer, "d_state": 16}
    if layer == "Mamba2":
        ssm.update(headdim=32, chunk_size=64)
    return MambaConfig(d_model=128, n_layer=3, vocab_size=VOCAB, ssm_cfg=ssm, init="mimetic",
                       attn_layer_idx=attn_layer_idx,
                       attn_cfg={"num_heads": 4, "rotary_emb_dim": 32} if attn_layer_idx else {})


MODELS = [
    pytest.param("Mamba1", [], id="mamba1"),
    pytest.param("Mamba1", [1], id="mamba1-attention"),
    pytest.param("Mamba2", [], id="mamba2"),
    pytest.param("Mamba2", [1], id="mamba2-attention"),
]


@pytest.mark.parametrize("layer,attn_layer_idx", MODELS)
def test_gpu_paths_match_cpu_and_decoding_matches_forward(layer, attn_layer_idx):
    torch.manual_seed(0)
    cfg = lm_config(layer, attn_layer_idx)
    cpu = MambaLM(cfg)
    gpu = MambaLM(cfg).cuda()
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    logits_cpu = cpu(ids)
    logits_gpu = gpu(ids.cuda())
    F.cross_entropy(logits_cpu.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
    F.cross_entropy(logits_gpu.flatten(0, 1), ids.cuda().roll(-1, 1).flatten()).backward()
    assert rel_err(logits_gpu, logits_cpu) < TOL
    grad_errs = {name: rel_err(pg.grad, pc.grad)
                 for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()) if pc.grad is not None}
    worst = max(grad_errs, key=grad_errs.get)
    assert grad_errs[worst] < TOL, f"grad of {worst}: relative error {grad_errs[worst]:.2e}"

    gpu.eval()
    with torch.no_grad():
        full = gpu(ids[:, :40].cuda())
        cache = gpu.allocate_cache(BATCH, 40)
        prefill = gpu(ids[:, :20].cuda(), cache=cache)
        steps = [gpu.step(ids[:, t:t + 1].cuda(), cache) for t in range(20, 40)]
    assert rel_err(torch.cat([prefill, *steps], 1), full) < TOL
    assert gpu.generate(ids[:, :5].cuda(), 16).shape == (BATCH, 5 + 16)


def test_copy_training_learns_with_bf16_autocast():
    """copy_len 32, vocab 16, a 2-layer d_model 64 Mamba-2, 400 steps (``mimetic demo``'s
    settings): every loss finite, and mimetic init learns where default init barely does."""
    task = make_task("copy", copy_len=32, vocab=16)
    acc = {}
    for init in ("default", "mimetic"):
        torch.manual_seed(0)
        model = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=task.vocab_size, init=init,
                                    ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 64}))
        result = train(model, task, TrainConfig(steps=400, batch_size=32, lr=6e-3, warmup_steps=30, eval_every=100,
                                                eval_batches=2, progress=False, device="cuda"))
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history), init
        acc[init] = result.final["token_acc"]
    assert acc["mimetic"] >= 0.5 and acc["mimetic"] > acc["default"], acc
