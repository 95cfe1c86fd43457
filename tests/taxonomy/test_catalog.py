"""The Catalog: one record per dataset (taxonomy + one table row), built once from the config, no module state."""

import cv2
import numpy as np
import pytest

from mseg_semantic.config import load_config
from mseg_semantic.data import ValDataset, build_train_loader
from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import RELABELED_TRAIN_DATASETS, UNRELABELED_TRAIN_DATASETS, ZERO_SHOT_DATASETS, Catalog, build_taxonomy_converter
from mseg_semantic.taxonomy.catalog import DatasetTableError

USER_TAXONOMY = "taxonomy\tmy-roads-4\nrole\ttrain\nid\tname\tuniversal\n0\tasphalt\troad\n1\tauto\tcar\n2\ttree\tvegetation\n3\tblur\tunlabeled\n"
USER_TABLE = "name\tdirectory\tlists\ttitle\nmy-roads-4\tMyRoads/data\tMyRoads/{split}.lst\tMy roads\n"


def write_user_dataset(root, images=3, size=(20, 24)):
    """The files of a dataset laid out as the user table says: images and labels under MyRoads/data, lists elsewhere."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(images):
        label = rng.integers(0, 4, size=size, dtype=np.uint8)
        for rel, array in ((f"img/{i}.png", rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)), (f"lbl/{i}.png", label)):
            path = root / "MyRoads" / "data" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), array)
        lines.append(f"img/{i}.png lbl/{i}.png\n")
    for split in ("train", "val"):
        (root / "MyRoads" / f"{split}.lst").write_text("".join(lines))


def test_a_dataset_is_its_taxonomy_file_plus_one_table_row(tmp_path):
    (tmp_path / "roads.tsv").write_text(USER_TAXONOMY)
    (tmp_path / "roads_table.tsv").write_text(USER_TABLE)
    write_user_dataset(tmp_path)
    cfg = load_config(None, [f"data_root={tmp_path}", f"taxonomy_files=[{tmp_path / 'roads.tsv'}]",
                             f"dataset_tables=[{tmp_path / 'roads_table.tsv'}]", "dataset=[my-roads-4,bdd]",
                             "batch_size=2", "train_h=16", "train_w=16", "short_size=20"])
    catalog = Catalog.from_config(cfg)
    record = catalog.dataset("my-roads-4")
    assert (record.directory, record.title) == ("MyRoads/data", "My roads")
    location = catalog.locate("my-roads-4", "val")
    assert location.root == tmp_path / "MyRoads" / "data" and location.list_file == tmp_path / "MyRoads" / "val.lst"
    # training: the converter and the loader find it through the catalog alone
    converter = build_taxonomy_converter("universal", ["my-roads-4"], [], catalog=catalog)
    loader = build_train_loader(cfg, ["my-roads-4"], converter, catalog=catalog)
    batch = next(iter(loader))
    assert batch["label"].shape == (2, 16, 16)
    road, car = converter.name_to_id["road"], converter.name_to_id["car"]
    assert set(np.unique(batch["label"].numpy())) <= {road, car, converter.name_to_id["vegetation"], 255}
    # evaluation reads its val split the same way
    assert len(ValDataset(catalog, "my-roads-4", "val")) == 3
    # and the training run resolves it (the same catalog the config describes)
    from mseg_semantic.training.setup import resolve_run

    setup = resolve_run(cfg.updated({"DATA.dataset": ["my-roads-4"]}))
    assert setup.catalog.dataset("my-roads-4").directory == "MyRoads/data"


def test_the_builtin_table_gives_msegs_groups_in_msegs_order():
    assert UNRELABELED_TRAIN_DATASETS[:3] == ["ade20k-150", "bdd", "cityscapes-19"] and len(UNRELABELED_TRAIN_DATASETS) == 7
    assert len(RELABELED_TRAIN_DATASETS) == 8 and ZERO_SHOT_DATASETS[0] == "voc2012" and ZERO_SHOT_DATASETS[-1] == "scannet-20"
    catalog = Catalog.builtin()
    assert catalog.dataset("kitti-19").raw_taxonomy == "kitti-34" and catalog.dataset("kitti-19").prepare_key == "kitti"
    assert catalog.dataset("bdd-relabeled").relabeled_from == "bdd"
    # every dataset the table names has a taxonomy, and every raw / relabeled name is a dataset
    for name in catalog.dataset_names():
        record = catalog.dataset(name)
        catalog.taxonomy(name)
        for other in (record.raw_taxonomy, record.relabeled_from):
            assert not other or other in catalog.dataset_names()


def test_a_user_taxonomy_without_a_row_lives_under_its_name_or_its_dataset_roots_entry(tmp_path):
    (tmp_path / "roads.tsv").write_text(USER_TAXONOMY)
    plain = Catalog([tmp_path / "roads.tsv"], data_root=tmp_path)
    assert plain.locate("my-roads-4", "train").root == tmp_path / "my-roads-4"
    moved = Catalog([tmp_path / "roads.tsv"], data_root=tmp_path, dataset_roots={"my-roads-4": "/data/roads"})
    assert str(moved.locate("my-roads-4", "train").root) == "/data/roads"
    assert moved.locate("my-roads-4", "val").list_file == tmp_path / "dataset_lists" / "my-roads-4" / "list" / "val.txt"


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset_roots": {"cityscape-19": "x"}}, r"DATA.dataset_roots: unknown dataset 'cityscape-19' \(did you mean 'cityscapes-19'\?\)"),
    ({"dataset_lists": {"cityscapes-19": {"trian": "x.txt"}}}, r"unknown split 'trian' \(did you mean 'train'\?\)"),
    ({"dataset_roots": {"cityscapes-19": 3}}, r"DATA.dataset_roots\['cityscapes-19'\]=3: expected a directory path"),
    ({"dataset_roots": {"cityscapes-19": ["a", "b"]}}, r"expected a directory path"),
    ({"dataset_lists": {"cityscapes-19": "x.txt"}}, r"expected a mapping of split -> list file"),
    ({"dataset_lists": {"cityscapes-19": {"train": 7}}}, r"\['train'\]=7: expected a list file path"),
])
def test_typos_and_wrong_types_in_the_data_overrides_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        Catalog(**kwargs)


def test_a_custom_split_name_is_accepted():
    assert Catalog(dataset_lists={"cityscapes-19": {"holdout": "h.txt"}}, data_root="/d").locate("cityscapes-19", "holdout").list_file.name == "h.txt"


def test_a_broken_dataset_table_names_the_file_and_line(tmp_path):
    bad_header = tmp_path / "a.tsv"
    bad_header.write_text("name\tdir\n")
    with pytest.raises(DatasetTableError, match=r"a.tsv:1: expected the header"):
        Catalog(dataset_tables=[bad_header])
    bad_group = tmp_path / "b.tsv"
    bad_group.write_text("name\tdirectory\tlists\ttitle\traw\trelabeled_from\tprepare\tgroups\nx\tX\tmseg\tX\t-\t-\t-\tzero_shoot\n")
    with pytest.raises(DatasetTableError, match=r"b.tsv:2: unknown group 'zero_shoot' \(did you mean 'zero_shot'\?\)"):
        Catalog(dataset_tables=[bad_group])
    bad_lists = tmp_path / "c.tsv"
    bad_lists.write_text("name\tdirectory\tlists\nx\tX\tlists/all.txt\n")
    with pytest.raises(DatasetTableError, match=r"c.tsv:2: lists='lists/all.txt': expected 'mseg' or a path with \{split\}"):
        Catalog(dataset_tables=[bad_lists])
