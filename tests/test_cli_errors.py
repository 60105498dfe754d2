"""The CLI never prints a traceback for a user error: one line ``mimetic: error: ...``, exit
2 (issue 14); an internal error is one line that says where to look."""
import json

import pytest
import torch

from mimetic.cli import main

from .cli_helpers import TRAIN, assert_user_error, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def test_unknown_device(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, *TRAIN[:-2], "--device", "nosuch", "--out", str(tmp_path)),
                      "device='nosuch'")


def test_cuda_device_without_cuda(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_user_error(*run_cli(capsys, *TRAIN[:-2], "--device", "cuda", "--out", str(tmp_path)),
                      "CUDA is not available")


def test_out_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    assert_user_error(*run_cli(capsys, *TRAIN, "--out", str(tmp_path / "f")), "is a file, not a folder")


def test_zero_headdim(capsys, tmp_path):
    args = [*TRAIN]
    args[args.index("--headdim") + 1] = "0"
    assert_user_error(*run_cli(capsys, *args, "--out", str(tmp_path)), "headdim=0")


def test_zero_d_state(capsys, tmp_path):
    args = [*TRAIN]
    args[args.index("--d-state") + 1] = "0"
    assert_user_error(*run_cli(capsys, *args, "--out", str(tmp_path)), "d_state=0")


def test_sweep_given_a_folder(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, "sweep", str(tmp_path)), "a folder; give its .toml file")


def test_demo_negative_threads(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, "demo", "--threads", "-1", "--out", str(tmp_path)), "--threads=-1")


def test_generate_nan_temperature(capsys, trained):
    assert_user_error(*run_cli(capsys, "generate", str(trained / "model"), "--prompt", "1 2",
                               "--temperature", "nan", "--device", "cpu"), "temperature=nan")


def test_resume_with_another_d_model(capsys, trained):
    args = [*TRAIN]
    args[args.index("--d-model") + 1] = "32"
    assert_user_error(*run_cli(capsys, *args, "--out", str(trained), "--resume"), "model.d_model was 16, now 32")


def test_resume_with_changed_lr_and_allow_changed(capsys, tmp_path):
    out = str(tmp_path / "run")
    assert main([*TRAIN, "--out", out]) == 0
    capsys.readouterr()  # its progress bars
    longer = [*TRAIN]
    longer[longer.index("--steps") + 1] = "6"
    assert_user_error(*run_cli(capsys, *longer, "--lr", "0.01", "--out", out, "--resume"), "lr was 0.003, now 0.01")
    with pytest.warns(UserWarning, match="lr: 0.003 -> 0.01"):
        assert main([*longer, "--lr", "0.01", "--out", out, "--resume", "--allow-changed", "lr"]) == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["step"] == 6


def test_truncated_model_weights(capsys, trained, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((trained / "model" / "config.json").read_text())
    (model / "model.safetensors").write_bytes((trained / "model" / "model.safetensors").read_bytes()[:64])
    assert_user_error(*run_cli(capsys, "generate", str(model), "--prompt", "1", "--device", "cpu"),
                      "model.safetensors: unreadable")


def test_config_json_holding_a_list(capsys, tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    assert_user_error(*run_cli(capsys, "generate", str(tmp_path), "--prompt", "1", "--device", "cpu"),
                      "must hold a JSON object")


def test_nan_weights_in_a_model(capsys, trained, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((trained / "model" / "config.json").read_text())
    weights = load_file(str(trained / "model" / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(model / "model.safetensors"))
    assert_user_error(*run_cli(capsys, "generate", str(model), "--prompt", "1", "--device", "cpu"),
                      f"tensor {name} holds non-finite")


def test_internal_error_is_one_line_naming_the_debug_switch(capsys, monkeypatch, tmp_path):
    import mimetic.train

    def boom(*a, **k):
        raise KeyError("oops")

    monkeypatch.setattr(mimetic.train, "train", boom)
    code, err = run_cli(capsys, *TRAIN, "--out", str(tmp_path))
    assert code == 1 and err.count("\n") == 1 and "internal error: KeyError" in err and "MIMETIC_DEBUG=1" in err
