"""Converter behaviour: dtypes, 255, unknown ids, projections, oracle, builder, data files."""

import numpy as np
import pytest
import torch

from mseg_semantic.taxonomy import (
    DEFAULT_TEST_DATASETS,
    DEFAULT_TRAIN_DATASETS,
    IGNORE_INDEX,
    NUM_UNIVERSAL_CLASSES,
    RELABELED_TRAIN_DATASETS,
    UNRELABELED_TRAIN_DATASETS,
    NaiveTaxonomyConverter,
    OracleTaxonomyConverter,
    TaxonomyConverter,
    UnknownLabelError,
    build_taxonomy_converter,
    get_taxonomy,
    load_class_colors,
    load_class_names,
    taxonomy_names,
)
from mseg_semantic.taxonomy.catalog import DATA_DIR, Catalog
from mseg_semantic.taxonomy.files import format_taxonomy, parse_taxonomy_text
from mseg_semantic.taxonomy.validation import validate_taxonomies

# taxonomy -> number of classes (MSeg's dataset_lists)
CLASS_COUNTS = {
    "ade20k-150": 150, "ade20k-150-relabeled": 141, "ade20k-151": 151, "bdd": 19, "bdd-relabeled": 21,
    "camvid-11": 11, "camvid-32": 32, "cityscapes-19": 19, "cityscapes-19-relabeled": 21, "cityscapes-34": 34,
    "cityscapes-34-relabeled": 26, "coco-panoptic-133": 133, "coco-panoptic-133-relabeled": 155,
    "coco-panoptic-201": 201, "coco-panoptic-inst-201": 201, "idd-39": 39, "idd-39-relabeled": 30, "idd-40": 40,
    "kitti-19": 19, "kitti-34": 34, "mapillary-public65": 65, "mapillary-public65-relabeled": 51,
    "mapillary-public66": 66, "pascal-context-460": 460, "pascal-context-60": 60, "scannet-20": 20,
    "scannet-41": 41, "sunrgbd-37": 37, "sunrgbd-37-relabeled": 48, "sunrgbd-38": 38, "voc2012": 21,
    "wilddash-19": 19, "wilddash-34": 34, "universal": 194,
}


@pytest.fixture(scope="module")
def conv():
    return TaxonomyConverter()


def test_constants():
    assert IGNORE_INDEX == 255 and NUM_UNIVERSAL_CLASSES == 194
    assert len(UNRELABELED_TRAIN_DATASETS) == 7 and len(RELABELED_TRAIN_DATASETS) == 8
    assert DEFAULT_TRAIN_DATASETS == UNRELABELED_TRAIN_DATASETS + RELABELED_TRAIN_DATASETS
    assert "cityscapes-34-relabeled" in RELABELED_TRAIN_DATASETS and "cityscapes-34" not in DEFAULT_TRAIN_DATASETS
    assert sorted(DEFAULT_TEST_DATASETS) == ["camvid-11", "kitti-19", "pascal-context-60", "scannet-20", "voc2012",
                                             "wilddash-19"]


def test_every_taxonomy_loads_with_names_and_colors():
    assert set(CLASS_COUNTS) <= set(taxonomy_names())
    for name, count in CLASS_COUNTS.items():
        names = load_class_names(name)
        colors = load_class_colors(name)
        assert len(names) == count, name
        assert colors.shape == (count, 3) and colors.dtype == np.uint8, name
    assert len(load_class_names("naive")) == 316


def test_reference_colors_are_used():
    cs = load_class_names("cityscapes-19")
    assert tuple(load_class_colors("cityscapes-19")[cs.index("road")]) == (128, 64, 128)
    # wilddash-19 borrows cityscapes colours by name; camvid-11 borrows camvid-32's
    assert tuple(load_class_colors("wilddash-19")[0]) == (128, 64, 128)
    assert tuple(load_class_colors("camvid-11")[load_class_names("camvid-11").index("Building")]) == (128, 0, 0)
    # voc2012 has no colour file: the VOC bit palette gives VOC's own colours
    assert tuple(load_class_colors("voc2012")[1]) == (128, 0, 0) and tuple(load_class_colors("voc2012")[15]) == \
        (192, 128, 128)
    # a returned array is a copy: editing it does not change the data
    load_class_colors("cityscapes-19")[0] = 0
    assert tuple(load_class_colors("cityscapes-19")[0]) == (128, 64, 128)


def test_builtin_data_passes_the_validator():
    report = validate_taxonomies(list(Catalog.builtin().all_taxonomies().values()))
    assert report.errors == []
    messages = [p.message for p in report.warnings]
    # the known gaps of MSeg's data: two pascal-context-60 classes fed by nothing, raw coco's many 'unlabeled'
    assert sum("'flower'" in m or "'wood'" in m for m in messages) == 2
    assert all(p.taxonomy in ("pascal-context-60", "coco-panoptic-201", "coco-panoptic-inst-201")
               for p in report.warnings)


def test_builtin_files_round_trip_through_the_writer():
    for path in sorted(DATA_DIR.glob("*.tsv")):
        text = path.read_text(encoding="utf-8")
        blocks, report = parse_taxonomy_text(text, str(path))
        assert report.ok and len(blocks) == 1
        body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
        assert format_taxonomy(blocks[0]) == body, path.name


@pytest.mark.parametrize("dataset", DEFAULT_TRAIN_DATASETS)
def test_transform_label_matches_mapping_for_every_id(conv, dataset):
    k = len(load_class_names(dataset))
    ids = np.array(list(range(k)) + [255], dtype=np.uint8)
    expected = np.array([conv.id_to_uid_maps[dataset][i] for i in ids.tolist()])
    out = conv.transform_label(ids, dataset)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    assert out[-1] == 255
    assert set(conv.dataset_universal_ids(dataset)) == set(expected.tolist()) - {255}


def test_output_kinds_and_dtypes(conv):
    naive = NaiveTaxonomyConverter(test_datasets=[])
    label = np.array([[0, 1, 255], [2, 18, 3]], dtype=np.uint8)
    expected = conv.transform_label(label, "cityscapes-19")
    for dtype, out_dtype in [(torch.uint8, torch.uint8), (torch.int64, torch.int64), (torch.int32, torch.int32),
                             (torch.int16, torch.int16), (torch.int8, torch.int64)]:
        tensor = torch.from_numpy(label.astype(np.int16)).to(dtype) if dtype != torch.int8 else \
            torch.from_numpy(np.where(label == 255, 0, label).astype(np.int8))
        out = conv.transform_label(tensor, "cityscapes-19")
        assert isinstance(out, torch.Tensor) and out.dtype == out_dtype
        ref = expected if dtype != torch.int8 else conv.transform_label(np.where(label == 255, 0, label)
                                                                        .astype(np.uint8), "cityscapes-19")
        np.testing.assert_array_equal(out.numpy(), ref)
    # numpy int64 input is accepted and gives uint8 out
    assert conv.transform_label(label.astype(np.int64), "cityscapes-19").dtype == np.uint8
    # naive ids exceed 255: numpy uint16, torch uint8 -> int64, torch int16 kept
    nlabel = np.array([[0, 149, 255]], dtype=np.uint8)
    nout = naive.transform_label(nlabel, "ade20k-150")
    assert nout.dtype == np.uint16 and nout.tolist() == [[0, 149, 255]]
    mapillary = np.arange(65, dtype=np.uint8)
    assert naive.transform_label(mapillary, "mapillary-public65").max() > 255
    assert naive.transform_label(torch.from_numpy(nlabel), "ade20k-150").dtype == torch.int64
    assert naive.transform_label(torch.from_numpy(nlabel).short(), "ade20k-150").dtype == torch.int16


def test_batched_and_non_contiguous_labels(conv):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 19, size=(3, 40, 600), dtype=np.uint8)
    table = np.array([conv.id_to_uid_maps["cityscapes-19"].get(i, 0) for i in range(256)])
    out = conv.transform_label(batch, "cityscapes-19")
    assert out.shape == batch.shape
    np.testing.assert_array_equal(out, table[batch])
    view = batch[:, ::2, ::3]
    np.testing.assert_array_equal(conv.transform_label(view, "cityscapes-19"), table[view])
    tview = torch.from_numpy(batch).transpose(1, 2)
    np.testing.assert_array_equal(conv.transform_label(tview, "cityscapes-19").numpy(), table[tview.numpy()])


def test_empty_and_scalar_labels(conv):
    assert conv.transform_label(np.zeros((0, 5), np.uint8), "bdd").shape == (0, 5)
    assert conv.transform_label(torch.zeros(0, 5, dtype=torch.int64), "bdd").shape == (0, 5)
    assert conv.transform_label(np.array(255, np.uint8), "bdd") == 255


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU int64 path is tested above)")
def test_cuda_tensors_stay_on_the_device(conv):
    label = torch.tensor([[0, 1, 255], [18, 2, 3]], device="cuda")
    out = conv.transform_label(label, "cityscapes-19")
    assert out.device.type == "cuda" and out.dtype == torch.int64
    assert out.cpu().tolist() == conv.transform_label(label.cpu(), "cityscapes-19").tolist()
    with pytest.raises(UnknownLabelError):
        conv.transform_label(torch.tensor([19], device="cuda"), "cityscapes-19")
    logits = torch.randn(1, 194, 4, 4, device="cuda")
    out = conv.transform_predictions_test(logits, "camvid-11")
    torch.testing.assert_close(out.cpu(), conv.transform_predictions_test(logits.cpu(), "camvid-11"))


def test_unknown_ids_raise_naming_dataset_and_ids(conv):
    label = np.array([[0, 19, 200, 255, 19]], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"'cityscapes-19'.*19, 200") as info:
        conv.transform_label(label, "cityscapes-19")
    assert isinstance(info.value, UnknownLabelError) and info.value.ids == [19, 200]
    with pytest.raises(UnknownLabelError, match=r"-3, 19, 300"):
        conv.transform_label(torch.tensor([[-3, 19, 300, 1]]), "cityscapes-19")
    with pytest.raises(UnknownLabelError, match=r"19\b"):
        conv.transform_label(torch.from_numpy(label), "cityscapes-19")
    with pytest.raises(UnknownLabelError, match=r"-1, 19"):
        conv.transform_label(np.array([-1, 19, 0]), "cityscapes-19")


def test_unknown_ignore_maps_to_255(conv):
    road = conv.uname2uid["road"]
    label = np.array([[0, 19, 200, 255]], dtype=np.uint8)
    assert conv.transform_label(label, "cityscapes-19", unknown="ignore").tolist() == [[road, 255, 255, 255]]
    out = conv.transform_label(torch.tensor([[-3, 19, 300, 0]]), "cityscapes-19", unknown="ignore")
    assert out.tolist() == [[255, 255, 255, road]]
    assert conv.transform_label(np.array([[-1, 0]]), "cityscapes-19", unknown="ignore").tolist() == [[255, road]]
    with pytest.raises(ValueError, match="unknown='drop'"):
        conv.transform_label(label, "cityscapes-19", unknown="drop")


def test_bad_inputs(conv):
    with pytest.raises(KeyError, match="camvid-11.*not a training dataset"):
        conv.transform_label(np.zeros((2, 2), np.uint8), "camvid-11")
    with pytest.raises(TypeError, match="integer"):
        conv.transform_label(torch.zeros(2, 2), "bdd")
    with pytest.raises(TypeError, match="integer"):
        conv.transform_label(np.zeros((2, 2), np.float32), "bdd")
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        conv.transform_label([[0, 1]], "bdd")
    with pytest.raises(ValueError, match=r"N x 194 x H x W"):
        conv.transform_predictions_test(torch.zeros(1, 19, 2, 2), "camvid-11")
    with pytest.raises(KeyError, match="did you mean 'camvid-11'"):
        conv.test_projection_matrix("camvid-12")


def test_transform_predictions_test_sums_universal_probabilities(conv):
    logits = torch.randn(2, 194, 5, 7, generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, dim=1)
    assert torch.equal(conv.transform_predictions_universal(logits, "camvid-11"), probs)
    for dataset in DEFAULT_TEST_DATASETS:
        out = conv.transform_predictions_test(logits, dataset)
        names = load_class_names(dataset)
        assert out.shape == (2, len(names), 5, 7)
        tax = get_taxonomy(dataset)
        for tid in range(len(names)):
            uids = [conv.uname2uid[u] for u in tax.universal[tid]]
            expected = probs[:, uids].sum(1) if uids else torch.zeros(2, 5, 7)
            torch.testing.assert_close(out[:, tid], expected, rtol=1e-5, atol=1e-6)
        # each universal class feeds at most one test class, so test probabilities sum to at most 1
        assert (out.sum(1) <= 1 + 1e-5).all()
        matrix = conv.test_projection_matrix(dataset)
        assert matrix.dtype == torch.float32 and ((matrix == 0) | (matrix == 1)).all()
        assert (matrix.sum(0) <= 1).all()


def test_oracle_is_identity_with_validation():
    oracle = build_taxonomy_converter("oracle", ["camvid-11"], ["camvid-11"])
    assert isinstance(oracle, OracleTaxonomyConverter) and oracle.num_uclasses == 11
    assert oracle.class_names == load_class_names("camvid-11")
    label = np.array([[0, 10, 255]], dtype=np.uint8)
    assert oracle.transform_label(label, "camvid-11").tolist() == [[0, 10, 255]]
    with pytest.raises(UnknownLabelError, match="11"):
        oracle.transform_label(np.array([[11]], dtype=np.uint8), "camvid-11")
    assert torch.equal(oracle.test_projection_matrix("camvid-11"), torch.eye(11))
    logits = torch.randn(1, 11, 2, 2)
    torch.testing.assert_close(oracle.transform_predictions_test(logits, "camvid-11"), torch.softmax(logits, 1))
    # cityscapes-19 and wilddash-19 share their class list, so an oracle can be tested on the other
    assert OracleTaxonomyConverter(["cityscapes-19"], ["wilddash-19"]).num_uclasses == 19
    with pytest.raises(ValueError, match="exactly one dataset"):
        OracleTaxonomyConverter(["bdd", "cityscapes-19"])
    with pytest.raises(ValueError, match="own taxonomy"):
        OracleTaxonomyConverter(["camvid-11"], ["kitti-19"])


def test_build_taxonomy_converter_kinds():
    uni = build_taxonomy_converter("universal", None, None)
    assert uni.num_uclasses == 194 and uni.train_datasets == DEFAULT_TRAIN_DATASETS
    naive = build_taxonomy_converter("naive", None, ["voc2012"])
    assert naive.num_uclasses == 316 and naive.test_datasets == ["voc2012"]
    assert build_taxonomy_converter("universal", ["bdd"], []).train_datasets == ["bdd"]
    with pytest.raises(ValueError, match="did you mean 'naive'"):
        build_taxonomy_converter("naiv", None, None)
    with pytest.raises(ValueError, match="'camvid-11' is a test taxonomy: .* label sets"):  # one-hot: refused; sets: trains
        TaxonomyConverter(["camvid-11"], [])
    with pytest.raises(ValueError, match="role 'raw'"):
        TaxonomyConverter(["camvid-32"], [])
    with pytest.raises(KeyError, match="did you mean 'cityscapes-19'"):
        TaxonomyConverter(["cityscapes-91"], [])
