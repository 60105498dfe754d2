"""benchmarks/gpu_generation.py on the CPU at tiny sizes: its prefill + decode split gives
the tokens of the library's generate (also when the decode is called again, as the timers
do), the parameter-matched Transformer is matched, and a run writes a row per (model,
batch) with positive numbers."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))  # the script imports harness from its folder
        spec = importlib.util.spec_from_file_location("gpu_generation", BENCH / "gpu_generation.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


@pytest.mark.parametrize("name", ["Mamba1", "Mamba2", "Transformer"])
def test_decode_split_gives_generates_tokens_every_call(bench, name):
    sizes = dict(bench.TINY, n_layer=2)
    model, _ = bench.build(name, sizes, 16, 32, "cpu", torch.float32)
    prompt = torch.randint(0, sizes["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    calls = bench.OursCalls(model, prompt, 6, graph=False, state_dtype=torch.float32)
    with torch.inference_mode():
        want = calls.generate()[:, 7:]
        decode = calls.decoder(calls.prefill())
        first, second = decode(), decode()
    assert torch.equal(first, want)
    assert torch.equal(second, want)  # the prefilled state was restored


def test_transformer_matches_mamba1_layer_params(bench):
    sizes = bench.TINY
    width = bench.matched_mlp_width(sizes)
    mamba = bench.per_layer_params(lambda k: bench.mamba_config(dict(sizes, n_layer=k), "Mamba1"))
    attn = bench.per_layer_params(lambda k: bench.transformer_config(dict(sizes, n_layer=k), width))
    # the width moves in steps of 8, each 3 * d_model weights: within half a step
    assert abs(attn - mamba) <= 3 * sizes["d_model"] * 4


def test_tiny_run_writes_a_row_per_model_and_batch(bench, tmp_path):
    models = ["Mamba1", "Mamba2", "Transformer"]
    if importlib.util.find_spec("transformers") is not None:
        models.append("HF")
    args = ["--device", "cpu", "--tiny", "--models", ",".join(models), "--prompts", "5",
            "--batches", "1,2", "--new", "3", "--repeats", "1", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    data = json.loads((tmp_path / "gpu_generation.json").read_text())
    rows = {(r["model"], r["batch"]): r for r in data["results"]}
    assert sorted(rows) == sorted((m, b) for m in models for b in (1, 2))
    for r in rows.values():
        assert "error" not in r, r
        assert r["tokens_equal"] is True, r
        for key in ("generate_tok_s", "decode_tok_s", "prefill_s"):
            assert r[key] > 0, (key, r)
        assert r["decode_tok_s_xT"] > 0
    assert set(data["info"]["params"]) == set(models)
    assert (tmp_path / "gpu_generation.md").read_text().count("\n| 5 |") == len(rows)
