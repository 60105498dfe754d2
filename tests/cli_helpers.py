"""What the CLI error tests share: a small train command, running the CLI, and the shape of
a user error (one line ``mimetic: error: ...``, exit 2)."""
from mimetic.cli import main

TRAIN = ["train", "--task", "copy", "--task-arg", "copy_len=4", "--task-arg", "vocab=5", "--d-model", "16",
         "--d-state", "4", "--headdim", "8", "--n-layer", "1", "--steps", "4", "--eval-every", "2",
         "--batch-size", "4", "--device", "cpu"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    _, err = capsys.readouterr()
    return code, err


def assert_user_error(code, err, *words):
    assert code == 2, err
    assert err.startswith("mimetic: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
