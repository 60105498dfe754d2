"""A ``transformers`` shard index is read only inside its checkpoint folder (issue 14): a
shard named by an absolute path, through ``..`` or a link that leaves the folder, or a file
that is not a weight file, is refused naming the index and the shard; unreadable or
non-finite shards are one-line errors naming the file."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from mimetic.models.hf_convert import read_transformers_weights

INDEX = "model.safetensors.index.json"


def write_index(folder, weight_map):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def shard(path, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def test_shards_inside_the_folder_are_read(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shard(ckpt / "model-1.safetensors", a=torch.ones(2))
    (ckpt / "sub").mkdir()
    shard(ckpt / "sub" / "model-2.safetensors", b=torch.zeros(3))
    write_index(ckpt, {"a": "model-1.safetensors", "b": "sub/model-2.safetensors"})
    state, source = read_transformers_weights(ckpt)
    assert set(state) == {"a", "b"} and source == str(ckpt / INDEX)


def test_shard_outside_through_dotdot_is_refused(tmp_path):
    shard(tmp_path / "elsewhere.safetensors", a=torch.ones(2))
    write_index(tmp_path / "ckpt", {"a": "../elsewhere.safetensors"})
    with pytest.raises(ValueError, match=r"lists shard '\.\./elsewhere\.safetensors', which lies outside the "
                                         r"checkpoint folder"):
        read_transformers_weights(tmp_path / "ckpt")


def test_shard_by_absolute_path_is_refused(tmp_path):
    shard(tmp_path / "elsewhere.safetensors", a=torch.ones(2))
    write_index(tmp_path / "ckpt", {"a": str(tmp_path / "elsewhere.safetensors")})
    with pytest.raises(ValueError, match=r"lies outside the checkpoint folder"):
        read_transformers_weights(tmp_path / "ckpt")


def test_shard_through_a_link_leaving_the_folder_is_refused(tmp_path):
    shard(tmp_path / "elsewhere.safetensors", a=torch.ones(2))
    write_index(tmp_path / "ckpt", {"a": "model-1.safetensors"})
    os.symlink(tmp_path / "elsewhere.safetensors", tmp_path / "ckpt" / "model-1.safetensors")
    with pytest.raises(ValueError, match=r"lies outside the checkpoint folder"):
        read_transformers_weights(tmp_path / "ckpt")


def test_shard_that_is_no_weight_file_is_refused(tmp_path):
    write_index(tmp_path / "ckpt", {"a": "config.json"})
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"lists shard 'config\.json': shards are \.safetensors or \.bin"):
        read_transformers_weights(tmp_path / "ckpt")


@pytest.mark.parametrize("weight_map", [["model-1.safetensors"], {"a": 3}, "x"])
def test_malformed_weight_map_is_refused(tmp_path, weight_map):
    write_index(tmp_path / "ckpt", weight_map)
    with pytest.raises(ValueError, match=r"weight_map must map tensor names to shard file names"):
        read_transformers_weights(tmp_path / "ckpt")


def test_nonfinite_shard_is_refused_naming_file_and_tensor(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shard(ckpt / "model-1.safetensors", a=torch.tensor([1.0, float("nan")]))
    write_index(ckpt, {"a": "model-1.safetensors"})
    with pytest.raises(ValueError, match=r"model-1\.safetensors: tensor a holds non-finite values"):
        read_transformers_weights(ckpt)


def test_truncated_shard_is_a_one_line_error_naming_it(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shard(ckpt / "model-1.safetensors", a=torch.ones(64))
    data = (ckpt / "model-1.safetensors").read_bytes()
    (ckpt / "model-1.safetensors").write_bytes(data[: len(data) // 2])
    write_index(ckpt, {"a": "model-1.safetensors"})
    with pytest.raises(ValueError, match=r"model-1\.safetensors: unreadable") as e:
        read_transformers_weights(ckpt)
    assert "\n" not in str(e.value)


def test_single_file_checkpoint_with_nan_is_refused(tmp_path):
    shard(tmp_path / "model.safetensors", w=torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor w holds non-finite"):
        read_transformers_weights(tmp_path)
