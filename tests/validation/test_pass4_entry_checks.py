"""Issue 14, fourth (independent) adversarial pass: what it found accepted silently, failing
deep inside torch/stdlib, or refused with a misleading line, now checked where it enters.
One test per class of input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mimetic import MHA, Mamba, Mamba2, MambaConfig, MambaLM, MimeticConfig
from mimetic.analysis import plot_attention_maps
from mimetic.modules import LinearAttention
from mimetic.ops import (
    causal_conv1d,
    causal_conv1d_update,
    rms_norm,
    selective_scan,
    selective_state_update,
    ssd_scan,
    ssd_state_update,
)
from mimetic.tasks import make_task
from mimetic.train import TrainConfig, train
from mimetic.train.sweep import run_sweep

SWEEP = """
[grid]
task = ["copy"]
init = ["default"]
layer = ["Mamba2"]
d_state = [4]
length = [3]
seed = [0]
[tasks.copy]
vocab = 6
[model]
d_model = 16
n_layer = 1
[model.ssm_cfg.Mamba2]
headdim = 8
[train]
steps = 4
batch_size = 4
eval_every = 2
eval_batches = 1
warmup_steps = 1
"""


def tiny(**kw):
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=10,
                               ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8}, **kw))


# ---- numpy scalars: refused with a line saying what they are and what to pass -------------

@pytest.mark.parametrize("make, name", [
    (lambda: Mamba(16, d_state=np.int32(4)), "d_state"),
    (lambda: Mamba(16, dt_min=np.float32(1e-3)), "dt_min"),
    (lambda: MambaConfig(d_model=np.int64(16), n_layer=1, vocab_size=10), "d_model"),
    (lambda: MimeticConfig(keep=np.float32(0.5)), "keep"),
    (lambda: MimeticConfig(horizon=np.int64(64)), "horizon"),
    (lambda: make_task("copy", copy_len=np.int64(4)), "copy_len"),
    (lambda: TrainConfig(steps=np.int64(5)), "steps"),
    (lambda: tiny().allocate_cache(np.int64(1), 8), "batch_size"),
])
def test_numpy_scalar_names_its_type(make, name):
    with pytest.raises(ValueError, match=rf"{name}.*\(a numpy \w+: pass (int|float)\(value\)\)"):
        make()


# ---- layer constructors: device, dtype, layer_idx --------------------------------------

LAYERS = {"Mamba": lambda **kw: Mamba(16, d_state=4, **kw),
          "Mamba2": lambda **kw: Mamba2(16, d_state=4, headdim=8, **kw),
          "LinearAttention": lambda **kw: LinearAttention(16, d_state=4, headdim=8, **kw),
          "MHA": lambda **kw: MHA(16, 2, **kw)}


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("kw, name", [
    ({"dtype": "float32"}, "dtype"), ({"dtype": torch.int64}, "dtype"), ({"device": "nosuch"}, "device"),
    ({"layer_idx": "a"}, "layer_idx"), ({"layer_idx": -1}, "layer_idx"),
])
def test_layer_factory_arguments(layer, kw, name):
    with pytest.raises(ValueError, match=rf"{name}={kw[name]!r}"):
        LAYERS[layer](**kw)


# ---- mixer shapes of a sweep (default factory): refused before the first point trains ------

@pytest.mark.parametrize("axis, match", [
    ('"model.ssm_cfg.Mamba2.headdim" = [8, 5]', "multiple of headdim=5"),
    ('"model.ssm_cfg.Mamba2.ngroups" = [1, 3]', "ngroups=3 must divide"),
])
def test_sweep_mixer_shapes_checked_up_front(tmp_path, axis, match):
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.replace("seed = [0]", f"seed = [0]\n{axis}"))
    with pytest.raises(ValueError, match=rf"s.toml: point copy-default-Mamba2-.*{match}"):
        run_sweep(path, tmp_path / "out", progress=False, device="cpu")
    assert not (tmp_path / "out" / "sweep.json").exists() and not (tmp_path / "out" / "runs").exists()


def test_sweep_attention_shapes_checked_up_front(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.replace('layer = ["Mamba2"]', 'layer = ["Mamba2", "attention"]')
                    + "[model.attn_cfg]\nnum_heads = 4\nnum_heads_kv = 3\n")
    with pytest.raises(ValueError, match=r"point copy-default-attention-.*num_heads_kv=3 must divide"):
        run_sweep(path, tmp_path / "out", progress=False, device="cpu")


# ---- ops: booleans that must be booleans, widths, group sizes ---------------------------

def _ssd_args():
    torch.manual_seed(0)
    return (torch.randn(1, 6, 2, 3), torch.randn(1, 6, 2), -torch.rand(2), torch.randn(1, 6, 1, 4),
            torch.randn(1, 6, 1, 4))


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("name", ["dt_softplus", "return_final_states"])
def test_ssd_scan_flags_are_booleans(backend, name):
    with pytest.raises(ValueError, match=rf"{name}='no' must be true or false"):
        ssd_scan(*_ssd_args(), chunk_size=4, backend=backend, **{name: "no"})


def _ss_args():
    torch.manual_seed(0)
    return (torch.randn(1, 3, 5), torch.rand(1, 3, 5), -torch.rand(3, 4), torch.randn(1, 4, 5),
            torch.randn(1, 4, 5))


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("name", ["delta_softplus", "return_last_state"])
def test_selective_scan_flags_are_booleans(backend, name):
    with pytest.raises(ValueError, match=rf"{name}='no' must be true or false"):
        selective_scan(*_ss_args(), backend=backend, **{name: "no"})


@pytest.mark.parametrize("name", ["dt_softplus", "A_is_log"])
def test_selective_state_update_flags_are_booleans(name):
    u, delta, A, B, C = _ss_args()
    with pytest.raises(ValueError, match=rf"{name}='no' must be true or false"):
        selective_state_update(torch.zeros(1, 3, 4), u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0],
                               **{name: "no"})


@pytest.mark.parametrize("name", ["dt_softplus", "A_is_log"])
def test_ssd_state_update_flags_are_booleans(name):
    x, dt, A, B, C = _ssd_args()
    state = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match=rf"{name}='no' must be true or false"):
        ssd_state_update(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], **{name: "no"})


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_causal_conv1d_flags_and_width(backend):
    x = torch.randn(2, 3, 7)
    with pytest.raises(ValueError, match="return_final_states='no' must be true or false"):
        causal_conv1d(x, torch.randn(3, 4), return_final_states="no", backend=backend)
    with pytest.raises(ValueError, match=r"width >= 1, got \(3, 0\)"):
        causal_conv1d(x, torch.randn(3, 0), backend=backend)
    with pytest.raises(ValueError, match=r"width >= 1, got \(3, 0\)"):
        causal_conv1d_update(x[..., 0], torch.zeros(2, 3, 0), torch.randn(3, 0))


@pytest.mark.parametrize("kw, match", [
    ({"group_size": 2.0}, "group_size=2.0 must be an integer"), ({"group_size": True}, "group_size=True"),
    ({"group_size": "4"}, "group_size='4'"), ({"group_size": 0}, "group_size=0"),
    ({"prenorm": "no"}, "prenorm='no' must be true or false"),
    ({"norm_before_gate": "no"}, "norm_before_gate='no'"), ({"residual_in_fp32": 1}, "residual_in_fp32=1"),
])
def test_rms_norm_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        rms_norm(torch.randn(3, 8), torch.ones(8), **kw)


# ---- model inputs: the message says which integer dtypes ---------------------------------

@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.bool])
def test_input_ids_dtype_message(dtype):
    with pytest.raises(TypeError, match=r"integer tensor of int64 \(long\) or int32, got torch\."):
        tiny()(torch.ones(1, 3, dtype=dtype))


def test_generate_empty_batch_names_input_ids():
    with pytest.raises(ValueError, match=r"generate: input_ids \(0, 3\) holds no prompt"):
        tiny().generate(torch.zeros(0, 3, dtype=torch.long), 2)


# ---- files and folders ------------------------------------------------------------------

def test_out_dir_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"cannot be created: .*f is a file"):
        train(tiny(), make_task("copy", copy_len=2, vocab=4),
              TrainConfig(steps=2, out_dir=str(tmp_path / "f" / "run"), progress=False, device="cpu"))


def test_plot_path_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    maps = {0: torch.rand(1, 1, 3, 3).tril()}
    with pytest.raises(ValueError, match=r"plot_attention_maps: the folder of path=.* cannot be created: .*f is a"):
        plot_attention_maps(maps, tmp_path / "f" / "x.png")


def test_config_json_with_another_format_tag(tmp_path):
    tiny().save_pretrained(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**raw, "format": "other"}))
    with pytest.raises(ValueError, match=r"config.json: format='other' is not 'mimetic'"):
        MambaLM.from_pretrained(tmp_path / "m")


# ---- sweeps: a diverged point is a row, as in a pack; pack checked before the folder ------

def test_diverging_point_is_an_error_row(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.replace("seed = [0]", 'seed = [0]\n"train.lr" = [3e-3, 1e6]').replace(
        "warmup_steps = 1", "warmup_steps = 1\ngrad_clip = 1e9"))
    result = run_sweep(path, tmp_path / "out", progress=False, device="cpu", pack="off", plot=False)
    errors = [r.get("error") for r in result.rows]
    assert errors[0] is None and "non-finite" in errors[1], errors
    again = run_sweep(path, tmp_path / "out", progress=False, device="cpu", pack="off", plot=False)
    assert again.skipped == 2


@pytest.mark.parametrize("pack", [0, -1, "on", True])
def test_pack_checked_before_the_folder_is_touched(tmp_path, pack):
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    with pytest.raises(ValueError, match=f"pack must be 'auto', 'off' or a positive int, got {pack!r}"):
        run_sweep(path, tmp_path / "out", progress=False, device="cpu", pack=pack)
    assert not (tmp_path / "out").exists()


def test_failed_checkpoint_write_is_an_os_error(tmp_path, monkeypatch):
    from mimetic.train import checkpoint

    def full_disk(*args, **kwargs):  # what torch's zip writer raises when a write comes up short
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 16128 vs 16080")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"state.pt: write failed .*is the disk full\?"):
        checkpoint.save_checkpoint(tmp_path, 1, tiny(), {"step": 1})
    assert checkpoint.latest_checkpoint(tmp_path) is None
