"""The `mimetic` command: small end-to-end runs and one-line errors for bad input."""
import json

import pytest

from mimetic.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_task_is_one_line_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--task", "copyy", "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("mimetic: error:") and "copyy" in err and err.count("\n") == 1


def test_impossible_task_setting_is_one_line_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--task", "copy", "--task-arg", "vocab=1",
                           "--out", str(tmp_path))
    assert code == 2 and "vocab" in err and err.count("\n") == 1


def test_bad_task_arg_syntax(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--task-arg", "copy_len", "--out", str(tmp_path))
    assert code == 2 and "KEY=VALUE" in err


def test_missing_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", str(tmp_path / "nope"), "--prompt", "1 2")
    assert code == 2 and "not found" in err


def test_train_then_generate_end_to_end(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--task", "copy", "--task-arg", "copy_len=4",
                                "--task-arg", "vocab=5", "--d-model", "16", "--d-state", "4",
                                "--headdim", "8", "--steps", "6", "--eval-every", "3",
                                "--batch-size", "4", "--out", str(out), "--device", "cpu")
    assert code == 0, err
    assert "token_acc=" in stdout
    lines = (out / "metrics.jsonl").read_text().strip().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6]
    code, stdout, err = run_cli(capsys, "generate", str(out / "model"), "--prompt", "5 0 1 2 3 6",
                                "--max-new-tokens", "4")
    assert code == 0, err
    tokens = stdout.split()
    assert len(tokens) == 10 and tokens[:6] == ["5", "0", "1", "2", "3", "6"]
    assert all(0 <= int(t) < 7 for t in tokens)
    code, stdout, err = run_cli(capsys, "generate", str(out / "model"), "--prompt", "5 0 1 2 3 6",
                                "--max-new-tokens", "4", "--device", "cpu",
                                "--state-dtype", "bfloat16")
    assert code == 0, err
    assert len(stdout.split()) == 10
    code, _, err = run_cli(capsys, "generate", str(out / "model"), "--prompt", "5 0",
                           "--device", "cpu", "--cuda-graph")
    assert code == 2 and "CUDA device" in err  # a clear error, not a crash


def test_argparse_rejects_unknown_layer(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--layer", "Mamba3"])
    assert e.value.code == 2


def test_attn_on_trained_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--task-arg", "copy_len=4", "--task-arg", "vocab=5", "--d-model", "16",
                 "--d-state", "4", "--headdim", "8", "--steps", "2", "--eval-every", "2",
                 "--batch-size", "2", "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    png = tmp_path / "maps.png"
    code, stdout, err = run_cli(capsys, "attn", str(out / "model"), "--input", "copy",
                                "--task-arg", "copy_len=4", "--task-arg", "vocab=5", "--out", str(png))
    assert code == 0, err
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "layer 0" in stdout and "layer 1" in stdout
    code, _, err = run_cli(capsys, "attn", str(out / "model"), "--input", "copy", "--layers", "7",
                           "--out", str(png))
    assert code != 0 and "7" in err


def test_demo_runs_small_and_writes_table_and_plot(capsys, tmp_path):
    code, stdout, err = run_cli(capsys, "demo", "--steps", "4", "--copy-len", "4",
                                "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert "default" in stdout and "mimetic" in stdout and "steps to 50%" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"default", "mimetic"}
    assert all(r["step"] == 4 for r in results.values())
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
