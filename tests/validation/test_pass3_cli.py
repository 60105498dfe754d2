"""Issue 14, third pass: ``mimetic generate --prompt`` that holds no token ids is a user
error naming the flag (it was Python's "invalid literal for int()", or a float-tensor
message for an empty prompt)."""
from __future__ import annotations

import pytest
import torch

from mimetic import MambaConfig, MambaLM

from ..cli_helpers import assert_user_error, run_cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8,
                        ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8})).save_pretrained(path)
    return path


@pytest.mark.parametrize("prompt", ["a b", "1.5", "", "   "])
def test_generate_prompt_without_token_ids(capsys, checkpoint, prompt):
    code, err = run_cli(capsys, "generate", str(checkpoint), "--prompt", prompt, "--device", "cpu")
    assert_user_error(code, err, "--prompt")


def test_generate_prompt_of_ids_runs(capsys, checkpoint):
    code, err = run_cli(capsys, "generate", str(checkpoint), "--prompt", "1 2", "--max-new-tokens", "2",
                        "--device", "cpu")
    assert code == 0, err
