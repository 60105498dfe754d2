"""Test-wide fixtures."""
from pathlib import Path

import pytest
import torch

from mimetic import MambaConfig, MambaLM

# Folders whose tests run many small tensor ops (tiny models, map tiles): intra-op threads
# only add synchronisation there, and on a busy 2-core machine their spin-waits made single
# tests up to 30x slower. The op and module tests keep torch's threads: some of them test
# the thread handling itself.
ONE_THREAD_FOLDERS = {"tasks", "train", "analysis"}


@pytest.fixture(autouse=True)
def one_thread_where_it_pays(request):
    """Pin torch to one intra-op thread for tests in ``ONE_THREAD_FOLDERS``; restored after."""
    if Path(str(request.node.path)).parent.name not in ONE_THREAD_FOLDERS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A saved one-layer Mamba-2 model (vocabulary 8): what the CLI tests load."""
    path = tmp_path_factory.mktemp("ckpt") / "model"
    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8,
                        ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8})).save_pretrained(path)
    return path
