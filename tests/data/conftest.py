import shutil

import pytest

from mseg_semantic.data.demo_world import DEMO_TEST_DATASETS, DEMO_TRAIN_DATASETS, generate

TRAIN = list(DEMO_TRAIN_DATASETS)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small synthetic world shared by the read-only tests (do not modify it)."""
    root = tmp_path_factory.mktemp("world")
    generate(root, seed=0, counts={"train": 8, "val": 3}, heldout_counts={"val": 3, "test": 2})
    return root


@pytest.fixture
def writable_world(small_world, tmp_path):
    """A private copy of the small world for tests that break files."""
    copy = tmp_path / "world"
    shutil.copytree(small_world, copy)
    return copy


@pytest.fixture(scope="session")
def universal_converter():
    from mseg_semantic.taxonomy import build_taxonomy_converter

    return build_taxonomy_converter("universal", TRAIN, list(DEMO_TEST_DATASETS))
