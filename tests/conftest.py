"""Suite-wide fixtures: tests that run a tool in-process must not leak torch's global settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def restore_torch_global_settings():
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_num_threads(threads)
