"""Fixtures shared by several test modules.

A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`; nothing here is
autouse, so a test module gets only what it asks for.
"""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the whole module: on a shared, loaded CPU, OpenMP threads
    competing with other processes make small convolutions 5-10x slower; results do not
    depend on it. The previous thread count comes back when the module is done."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
