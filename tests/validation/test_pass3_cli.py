"""Issue 14, third pass: ``mimetic generate --prompt`` that holds no token ids is a user
error naming the flag (it was Python's "invalid literal for int()", or a float-tensor
message for an empty prompt)."""
from __future__ import annotations

import pytest

from ..cli_helpers import assert_user_error, run_cli


@pytest.mark.parametrize("prompt", ["a b", "1.5", "", "   "])
def test_generate_prompt_without_token_ids(capsys, tiny_checkpoint, prompt):
    code, err = run_cli(capsys, "generate", str(tiny_checkpoint), "--prompt", prompt, "--device", "cpu")
    assert_user_error(code, err, "--prompt")


def test_generate_prompt_of_ids_runs(capsys, tiny_checkpoint):
    code, err = run_cli(capsys, "generate", str(tiny_checkpoint), "--prompt", "1 2", "--max-new-tokens", "2",
                        "--device", "cpu")
    assert code == 0, err
