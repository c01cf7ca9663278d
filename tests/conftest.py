"""What several test files share: one intra-op thread for files of tiny models."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models (matrices of tens of rows): one intra-op thread is faster than two, and far
    faster on a loaded machine, where every op's threads wait for each other (a path of a
    4-layer GPT-2 measured 0.015 s on one thread, 0.6 s on two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
