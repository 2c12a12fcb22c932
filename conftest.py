"""Shared pytest fixtures (pytest loads this file by itself)."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run several times faster on one thread (no spin-waiting of a second one). Test files that
    run them opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
