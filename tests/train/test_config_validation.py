"""TrainConfig refuses at construction every value that would train silently wrong
(issue 14): one line naming the field, its value and what is allowed."""
import math

import pytest

from mimetic.train import TrainConfig


@pytest.mark.parametrize("field, value, allowed", [
    ("grad_clip", -1.0, "> 0"),         # would ascend the gradient
    ("grad_clip", 0, "> 0"),            # would freeze training
    ("grad_clip", math.inf, "finite"),
    ("steps", 6.5, "integer >= 1"),     # trained 7 steps, reported 6
    ("steps", True, "integer >= 1"),
    ("steps", "100", "integer >= 1"),
    ("batch_size", 0, "integer >= 1"),
    ("warmup_steps", 2.5, "integer >= 0"),
    ("eval_batch_size", 0, "integer >= 1"),
    ("checkpoint_every", 1.5, "integer >= 1"),
    ("interrupt_after", 0, "integer >= 1"),
    ("seed", 1.0, "integer"),
    ("weight_decay", -1, ">= 0"),
    ("lr", math.nan, "finite"),
    ("lr", "1e-3", "finite number"),
    ("eps", 0.0, "> 0"),
    ("min_lr_ratio", 1.5, r"in \[0, 1\]"),
    ("target_acc", 0.0, r"in \(0, 1\]"),
    ("betas", (0.9,), "two numbers"),
    ("betas", (0.9, 1.0), "two numbers"),
    ("early_stop", "no", "true or false"),  # a non-empty string is truthy
    ("amp", 1, "true or false"),
    ("device", "nosuch", "not a device name"),
    ("device", 3, "device name"),
    ("allow_changed", 3, "list of setting names"),
])
def test_bad_field_is_one_line_naming_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=allowed) as e:
        TrainConfig(**{field: value})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("TrainConfig: ") and f"{field}={value!r}" in msg


def test_cuda_device_without_cuda_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        TrainConfig(device="cuda")


def test_all_problems_listed_at_once():
    with pytest.raises(ValueError) as e:
        TrainConfig(grad_clip=-1.0, weight_decay=-1.0)
    assert "grad_clip=-1.0" in str(e.value) and "weight_decay=-1.0" in str(e.value)


def test_valid_values_unchanged():
    c = TrainConfig(grad_clip=None, betas=[0.9, 0.99], weight_decay=0.0, device="cpu", allow_changed=["lr"])
    assert c.betas == (0.9, 0.99) and c.allow_changed == ("lr",) and c.grad_clip is None
    assert TrainConfig.from_dict(c.to_dict()) == c
