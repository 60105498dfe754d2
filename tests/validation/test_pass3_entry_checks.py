"""Issue 14, third adversarial pass: the inputs it found accepted silently, or failing deep
inside torch/einops/stdlib, now refused where they enter with one line naming the argument.
One test per class of input."""
from __future__ import annotations

import json

import pytest
import torch

from mimetic import MHA, Mamba, Mamba2, MambaConfig, MambaLM, mimetic_init_
from mimetic.analysis import attention_maps, pattern_matrix, plot_attention_maps
from mimetic.init import default_init_mamba2_, default_init_mamba_, init_lm_weights_, inverse_softplus
from mimetic.modules import GatedMLP, LinearAttention, RMSNorm, RMSNormGated
from mimetic.ops import rms_norm, selective_scan, ssd_scan
from mimetic.tasks import TASKS, copy_accuracy_by_length, evaluate, make_task
from mimetic.train import TrainConfig, lr_at, train
from mimetic.train.sweep import load_sweep, run_sweep


def tiny(layer="Mamba2", vocab=8, **kw):
    torch.manual_seed(0)
    ssm = {"layer": layer, "d_state": 4, **({"headdim": 8} if layer == "Mamba2" else {})}
    return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=vocab, ssm_cfg=ssm, **kw))


# ---- small layers: sizes and eps --------------------------------------------------------

@pytest.mark.parametrize("make, name", [
    (lambda: RMSNorm(0), "dim"), (lambda: RMSNorm(8, eps=-1.0), "eps"), (lambda: RMSNorm(8, eps=float("nan")), "eps"),
    (lambda: RMSNormGated(8, group_size=3), "group_size"), (lambda: GatedMLP(8, 0), "hidden_features"),
    (lambda: GatedMLP(True, 8), "in_features"),
])
def test_norm_and_mlp_sizes_refused(make, name):
    with pytest.raises(ValueError, match=name):
        make()


# ---- layer inputs: MHA checked like the SSM layers; dtype and device of the weights -------

LAYERS = {"Mamba": lambda: Mamba(16, d_state=4), "Mamba2": lambda: Mamba2(16, d_state=4, headdim=8),
          "LinearAttention": lambda: LinearAttention(16, d_state=4, headdim=8), "MHA": lambda: MHA(16, 2)}


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("x, err, match", [
    (lambda: torch.randn(10, 16), ValueError, "shape"), (lambda: torch.randn(2, 5, 8), ValueError, "shape"),
    (lambda: torch.ones(2, 5, 16, dtype=torch.long), TypeError, "floating"),
    (lambda: [[0.0] * 16], TypeError, "tensor"),
    (lambda: torch.randn(2, 5, 16, dtype=torch.float64), TypeError, "dtype"),
    (lambda: torch.randn(2, 5, 16, device="meta"), ValueError, "device"),
])
def test_layer_input_checked_where_it_enters(layer, x, err, match):
    with pytest.raises(err, match=match):
        LAYERS[layer]()(x())


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_input_of_another_dtype_runs_under_autocast(layer):
    m = LAYERS[layer]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(1, 5, 16, dtype=torch.bfloat16))
    assert y.shape == (1, 5, 16)


# ---- ops arguments ------------------------------------------------------------------------

def _ssd_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 16, 2, 4, generator=g), torch.rand(1, 16, 2, generator=g), -torch.rand(2, generator=g),
            torch.randn(1, 16, 1, 3, generator=g), torch.randn(1, 16, 1, 3, generator=g))


@pytest.mark.parametrize("kw, match", [(dict(chunk_size=True), "chunk_size"), (dict(chunk_size=8.0), "chunk_size"),
                                       (dict(dt_limit=(1.0, 0.1)), "dt_limit"),
                                       (dict(dt_limit=(float("nan"), 1.0)), "dt_limit")])
def test_ssd_scan_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ssd_scan(*_ssd_inputs(), **kw)


def test_op_tensor_arguments_must_be_tensors_and_eps_nonnegative():
    u = torch.randn(1, 4, 8)
    with pytest.raises(TypeError, match="u must be a tensor"):
        selective_scan(u.tolist(), torch.rand(1, 4, 8), -torch.rand(4, 3), torch.randn(1, 3, 8), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="eps"):
        rms_norm(torch.randn(2, 8), torch.ones(8), eps=-1.0)


# ---- init functions -----------------------------------------------------------------------

@pytest.mark.parametrize("call, err, match", [
    (lambda: mimetic_init_(torch.zeros(3)), TypeError, "Module"),
    (lambda: mimetic_init_(tiny(), {"dt": 1.0}), TypeError, "MimeticConfig"),
    (lambda: inverse_softplus(torch.tensor([-1.0])), ValueError, "x > 0"),
    (lambda: inverse_softplus(torch.tensor([0.0])), ValueError, "x > 0"),
    (lambda: init_lm_weights_(tiny(), 0), ValueError, "n_layer"),
    (lambda: default_init_mamba_(Mamba2(16, d_state=4, headdim=8)), TypeError, "Mamba layer"),
    (lambda: default_init_mamba2_(Mamba(16, d_state=4)), TypeError, "Mamba2 layer"),
])
def test_init_functions_check_what_they_are_given(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ---- MambaLM construction, cache, step, generate ---------------------------------------------

@pytest.mark.parametrize("call, err, match", [
    (lambda m: MambaLM({"d_model": 16}), TypeError, "MambaConfig"),
    (lambda m: MambaLM(m.config, device="bogus"), ValueError, "device"),
    (lambda m: MambaLM(m.config, dtype=torch.int64), ValueError, "dtype"),
    (lambda m: m.allocate_cache(1, 4, state_dtype=torch.int32), ValueError, "state_dtype"),
    (lambda m: m.allocate_cache(1, 4, state_dtype="float32"), ValueError, "state_dtype"),
    (lambda m: m.allocate_cache(1, 4, dtype=torch.int64), ValueError, "dtype"),
    (lambda m: m.step([[1]], m.allocate_cache(1, 4)), TypeError, "input_ids"),
    (lambda m: m.step(torch.ones(1, 1, dtype=torch.long), None), TypeError, "cache"),
    (lambda m: m.generate(torch.tensor([[1]]), 2, generator=5), ValueError, "generator"),
    (lambda m: m.generate(torch.tensor([[1]]), 2, progress="no"), ValueError, "progress"),
    (lambda m: m.generate(torch.tensor([[1]]), 2, state_dtype=torch.int64), ValueError, "state_dtype"),
    (lambda m: MambaConfig.from_dict([1, 2]), ValueError, "dict"),
])
def test_model_entries_check_their_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call(tiny())


def test_attn_layer_listed_twice_refused():
    with pytest.raises(ValueError, match="twice"):
        MambaConfig(d_model=16, n_layer=2, vocab_size=8, attn_layer_idx=[1, 1], attn_cfg={"num_heads": 2})


# ---- checkpoints: a checksum of our weight files; dtype kinds ---------------------------------

def test_flipped_byte_in_saved_weights_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    w = tmp_path / "model.safetensors"
    b = bytearray(w.read_bytes())
    b[-40] ^= 0x55  # inside the tensor data: the file still parses, the values change
    w.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="checksum"):
        MambaLM.from_pretrained(tmp_path)


def test_saved_weights_load_back_exactly(tmp_path):
    m = tiny(init="mimetic")
    m.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(MambaLM.from_pretrained(tmp_path)(ids), m(ids))


def test_integer_tensor_for_a_float_weight_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny().save_pretrained(tmp_path)
    w = load_file(tmp_path / "model.safetensors")
    w["backbone.norm_f.weight"] = w["backbone.norm_f.weight"].long()
    save_file(w, tmp_path / "model.safetensors")  # no checksum in this rewritten file
    with pytest.raises(ValueError, match="backbone.norm_f.weight holds torch.int64"):
        MambaLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.int32, "float16"])
def test_from_pretrained_dtype_checked(tmp_path, dtype):
    tiny().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        MambaLM.from_pretrained(tmp_path, dtype=dtype)


# ---- tasks: knob types beyond ints; the generator of batch() ----------------------------------

@pytest.mark.parametrize("task, knobs, match", [
    ("mqar", dict(power_a="x"), "power_a"), ("mqar", dict(power_a=float("nan")), "power_a"),
    ("mqar", dict(random_non_queries="no"), "random_non_queries"), ("copy_jelassi", dict(packed="yes"), "packed"),
    ("induction_heads", dict(vocab_size="8"), "vocab_size"),
])
def test_task_knob_types(task, knobs, match):
    with pytest.raises(ValueError, match=match):
        make_task(task, **knobs)


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("generator", [5, None, "g"])
def test_task_batch_needs_a_torch_generator(name, generator):
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        make_task(name).batch(2, generator)


# ---- evaluate / copy_accuracy_by_length / train entries ----------------------------------------

COPY = make_task("copy", vocab=5, copy_len=3)


@pytest.mark.parametrize("kw, err, match", [
    (dict(seed="x"), ValueError, "seed"), (dict(seed=1.5), ValueError, "seed"), (dict(seed=True), ValueError, "seed"),
    (dict(num_batches=True), ValueError, "num_batches"), (dict(num_batches=1.5), ValueError, "num_batches"),
    (dict(batch_size="2"), ValueError, "batch_size"), (dict(autocast_dtype="bf16"), ValueError, "autocast_dtype"),
    (dict(autocast_dtype=torch.int32), ValueError, "autocast_dtype"), (dict(device="bogus"), ValueError, "device"),
])
def test_evaluate_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        evaluate(tiny(), COPY, **{"num_batches": 1, "batch_size": 2, **kw})


@pytest.mark.parametrize("model, task, err, match", [
    (lambda: "m", lambda: COPY, TypeError, "model"), (lambda: tiny(), lambda: "copy", TypeError, "task"),
    (lambda: tiny(vocab=4), lambda: COPY, ValueError, "vocab_size=4"),
])
def test_evaluate_model_and_task(model, task, err, match):
    with pytest.raises(err, match=match):
        evaluate(model(), task(), 1, 2)


@pytest.mark.parametrize("lengths", [[2.5], [True], ["x"], 3])
def test_copy_accuracy_by_length_lengths(lengths):
    with pytest.raises(ValueError, match="length"):
        copy_accuracy_by_length(tiny(vocab=16), make_task("copy_jelassi", vocab=6, min_len=2, max_len=4), lengths, 1, 2)


def test_copy_accuracy_by_length_takes_numpy_ints():
    np = pytest.importorskip("numpy")
    task = make_task("copy_jelassi", vocab=6, min_len=2, max_len=4)
    assert list(copy_accuracy_by_length(tiny(vocab=16), task, np.arange(2, 4), 1, 2)) == [2, 3]


def test_train_refuses_a_model_vocabulary_smaller_than_the_task():
    with pytest.raises(ValueError, match="vocab_size=4"):
        train(tiny(vocab=4), COPY, TrainConfig(steps=2, batch_size=2, progress=False, device="cpu"))


@pytest.mark.parametrize("step", [-1, 2.5, True])
def test_lr_at_step(step):
    with pytest.raises(ValueError, match="step"):
        lr_at(step, TrainConfig())


def test_train_config_from_dict_needs_a_dict():
    with pytest.raises(ValueError, match="dict"):
        TrainConfig.from_dict([1])


# ---- analysis -------------------------------------------------------------------------------

def test_attention_maps_reduce_checked_for_every_layer_kind():
    with pytest.raises(ValueError, match="reduce"):
        attention_maps(tiny(), torch.tensor([[1, 2, 3]]), reduce="bogus")


def test_pattern_matrix_length_and_nonfinite_maps_refused(tmp_path):
    with pytest.raises(ValueError, match="L"):
        pattern_matrix(0, "identity")
    with pytest.raises(ValueError, match="non-finite"):
        plot_attention_maps({0: torch.full((1, 1, 3, 3), float("nan"))}, tmp_path / "n.png")
    assert not (tmp_path / "n.png").exists()


# ---- sweeps -----------------------------------------------------------------------------------

SWEEP = """[grid]
task = ["copy"]
init = ["default"]
layer = ["Mamba1"]
d_state = [4]
length = [3]
seed = [0]
[model]
d_model = 16
n_layer = 1
[tasks.copy]
vocab = 5
[train]
steps = 2
batch_size = 2
eval_every = 2
eval_batches = 1
"""


@pytest.mark.parametrize("old, new, match", [("seed = [0]", "seed = [0, 0]", "grid.seed"),
                                             ('layer = ["Mamba1"]', 'layer = ["Mamba1", "Mamba1"]', "grid.layer")])
def test_sweep_grid_value_listed_twice_refused(tmp_path, old, new, match):
    p = tmp_path / "s.toml"
    p.write_text(SWEEP.replace(old, new))
    with pytest.raises(ValueError, match=match):
        load_sweep(p)


def test_sweep_file_not_text_named(tmp_path):
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ValueError, match="bin.toml"):
        load_sweep(p)


@pytest.mark.parametrize("device", ["cuda:99", "nosuch", "meta"])
def test_run_sweep_device_checked_before_anything_runs(tmp_path, device):
    p = tmp_path / "s.toml"
    p.write_text(SWEEP)
    with pytest.raises(ValueError, match="device"):
        run_sweep(p, tmp_path / "out", device=device, progress=False)
    assert not (tmp_path / "out").exists()


def test_run_sweep_config_path_type():
    with pytest.raises(TypeError, match="config_path"):
        run_sweep({"grid": {}}, "unused", progress=False)


def test_torn_settings_file_says_what_to_do(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(SWEEP)
    run_sweep(p, tmp_path / "out", progress=False, device="cpu", plot=False)
    (settings,) = (tmp_path / "out" / "runs").glob("*/settings.json")
    settings.write_text("{")
    with pytest.raises(ValueError, match="delete the folder"):
        run_sweep(p, tmp_path / "out", progress=False, device="cpu", plot=False)
    json.loads((tmp_path / "out" / "sweep.json").read_text())  # the record is still readable
