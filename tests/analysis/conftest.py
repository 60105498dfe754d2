import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many small tensor ops (tiles of a few rows); intra-op threads only
    add synchronisation, and on a busy 2-core machine their spin-waits made single tests
    30x slower. Restored after each test, so other test folders are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
