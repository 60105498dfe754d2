"""Second adversarial pass of issue 14, models: what ``MambaLM.generate`` returns is an
ordinary tensor (the method itself ran under inference mode, so the clone inside did too),
an ``eos_token_id`` that is no token is refused, as are a negative ``num_last_tokens`` and
ids that are not a tensor."""
import pytest
import torch

from mimetic import MambaConfig, MambaLM


def tiny():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8,
                               ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8})).eval()


def test_generate_method_returns_an_ordinary_tensor():
    out = tiny().generate(torch.tensor([[1, 2, 3]]), 3)
    assert out.shape == (1, 6) and not out.is_inference()
    out[0, 0] = 4  # in-place use works
    assert out.requires_grad is False


@pytest.mark.parametrize("eos", [8, 100, -1, 1.0, True])
def test_eos_token_id_that_is_no_token_is_refused(eos):
    with pytest.raises(ValueError, match=r"generate: eos_token_id="):
        tiny().generate(torch.tensor([[1, 2]]), 2, eos_token_id=eos)


def test_eos_token_id_in_the_vocabulary_stops_generation():
    model = tiny()
    greedy = model.generate(torch.tensor([[1, 2]]), 4)
    eos = int(greedy[0, 2])  # the first token generated
    out = model.generate(torch.tensor([[1, 2]]), 4, eos_token_id=eos)
    assert out.tolist() == [[1, 2, eos]]


@pytest.mark.parametrize("n", [-1, 1.5, True])
def test_num_last_tokens_must_be_a_non_negative_int(n):
    with pytest.raises(ValueError, match=r"num_last_tokens must be an int >= 0"):
        tiny()(torch.zeros(1, 3, dtype=torch.long), num_last_tokens=n)


def test_ids_that_are_not_a_tensor_are_a_type_error():
    with pytest.raises(TypeError, match=r"input_ids must be a torch.Tensor \(batch, length\), got list"):
        tiny()([[1, 2]])
