"""Ensemble tests run many small tensor ops on tiny models: one intra-op thread, as
``tests/conftest.py`` does for the train/tasks folders (spin-waiting threads only slow
them down on a busy 2-core machine)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
