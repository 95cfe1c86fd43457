"""Helpers of the loader tests (test_data_loader.py, test_data_rare_class.py)."""

import torch

from mseg_semantic.config import load_config


def config_for(world, settings: dict, **changes):
    """The schema's defaults with ``settings``, this world as data_root, and ``changes``."""
    values = {**settings, "data_root": world, **changes}
    return load_config(None, [f"{key}={value}" for key, value in values.items()])


def take(loader, n):
    iterator = iter(loader)
    return [next(iterator) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys() == {"image", "label", "dataset_index"}
        for key in a:
            assert torch.equal(a[key], b[key]), key
