"""Outputs in any taxonomy (projection rules, 'other'), confidence maps, probability files, user taxonomy files."""

import cv2
import numpy as np
import pytest
import torch

from eval_helpers import ColourOracleNet, colour_world, eval_data, inference_settings, write_dataset
from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.evaluate import OutputOptions, evaluate_dataset, format_per_class_table
from mseg_semantic.evaluation.model_space import LoadedModel, display_space, evaluation_space, output_projection
from mseg_semantic.evaluation.outputs import UINT16_SCALE, distribution, pixel_outputs, write_confidence, write_probabilities
from mseg_semantic.taxonomy import Catalog, TaxonomyFileError, build_taxonomy_converter, get_taxonomy, load_class_colors, load_class_names, taxonomy_names

FAR = 10_000.0


def universal(model=None):
    return LoadedModel(model or ColourOracleNet(np.zeros((194, 3), np.float32)), "u.pth", "x", "universal", 194, None)


def uid(name):
    return load_class_names("universal").index(name)


def test_training_taxonomy_output_gives_each_class_its_universal_class():
    projection, notes = output_projection(universal(), "cityscapes-19")
    maps = build_taxonomy_converter("universal", ["cityscapes-19"], []).label_maps["cityscapes-19"]
    assert projection.num_inputs == 194 and projection.num_outputs == 19
    assert [list(g) for g in projection.members] == [[maps[k]] for k in range(19)]
    assert notes == []


def test_shared_universal_class_goes_to_the_class_named_like_it():
    projection, notes = output_projection(universal(), "ade20k-150")
    names = load_class_names("ade20k-150")
    owner = {u: names[k] for k, group in enumerate(projection.members) for u in group}
    assert owner[uid("building")] == "building"  # booth, grandstand, house, ... share it: the exact name wins
    assert owner[uid("railing_banister")] == "railing"  # the first '_' part that names a class
    assert owner[uid("sidewalk_pavement")] == "sidewalk"  # not 'path', which has the lower id
    assert owner[uid("terrain")] == min(("dirt track", "earth", "field", "grass", "land", "sand"), key=names.index)  # no name: lowest id
    assert not projection.members[names.index("booth")]
    assert any("booth" in n and "building goes to building" in n for n in notes)
    mapillary, _ = output_projection(universal(), "mapillary-public65")
    m_names = load_class_names("mapillary-public65")
    assert uid("sidewalk_pavement") in mapillary.members[m_names.index("Sidewalk")]  # case-insensitive


def test_test_taxonomy_output_is_mseg_projection_and_own_space_has_none():
    projection, _ = output_projection(universal(), "camvid-11")
    assert projection.members == build_taxonomy_converter("universal", [], ["camvid-11"]).projection("camvid-11").members
    assert output_projection(universal(), "universal") == (None, [])
    raw = next(n for n in taxonomy_names() if get_taxonomy(n).role == "raw")
    with pytest.raises(UserError, match="role 'raw'"):
        output_projection(universal(), raw)


def test_naive_model_maps_training_classes_by_name_and_oracle_only_to_its_own():
    naive = LoadedModel(None, "n.pth", "x", "naive", 316, None)
    projection, _ = output_projection(naive, "cityscapes-19")
    naive_names = load_class_names("naive")
    assert [naive_names[g[0]] for g in projection.members] == [n.lower() for n in load_class_names("cityscapes-19")]
    oracle = LoadedModel(None, "o.pth", "x", "oracle", 19, ["cityscapes-19"])
    assert output_projection(oracle, "cityscapes-19") == (None, [])
    with pytest.raises(UserError, match="other classes"):
        output_projection(oracle, "ade20k-150")


def test_naive_model_of_other_datasets_reads_its_own_naive_classes(tmp_path):
    from mseg_semantic.evaluation.model_space import load_model_for_inference
    from mseg_semantic.model import build_model, save_weights
    from mseg_semantic.taxonomy import naive_class_names

    datasets = ["bdd", "ade20k-150"]
    names = naive_class_names(datasets)
    path = tmp_path / "naive.pth"
    save_weights(build_model("hrnet_tiny", num_classes=len(names)).state_dict(),
                 {"model": "hrnet_tiny", "num_classes": len(names), "model_taxonomy": "naive", "train_datasets": datasets}, path)
    loaded = load_model_for_inference(path, torch.device("cpu"))
    space = evaluation_space(loaded, "bdd")
    assert space.class_names == names and space.class_names[0] == "road" and len(space.colors) == len(names)
    projection, _ = output_projection(loaded, "cityscapes-19")
    assert projection.num_inputs == len(names)
    assert [names[g[0]] for g in projection.members] == [n.lower() for n in load_class_names("cityscapes-19")]


def test_uncovered_rule_ignore_labels_other_255_and_drop_keeps_the_best_output_class():
    space_drop = display_space(universal(), "cityscapes-19", "drop")
    space_ignore = display_space(universal(), "cityscapes-19", "ignore")
    assert not space_drop.has_other and space_ignore.has_other
    probs = torch.zeros(19, 1, 2)
    probs[0, 0, 0], probs[1, 0, 0] = 0.2, 0.1  # pixel 0: 70 % on classes cityscapes-19 does not have
    probs[0, 0, 1], probs[1, 0, 1] = 0.6, 0.3  # pixel 1: 10 % elsewhere
    assert pixel_outputs(probs, space_drop).label.tolist() == [[0, 0]]
    assert pixel_outputs(probs, space_ignore).label.tolist() == [[255, 0]]
    with pytest.raises(UserError, match="uncovered_classes"):
        display_space(universal(), "cityscapes-19", "keep")


def test_confidence_maps_and_probabilities_from_the_distribution():
    space = display_space(universal(), "cityscapes-19", "drop")
    probs = torch.zeros(19, 1, 2)
    probs[:, 0, 0] = 0.5 / 19  # uniform over the 19 classes, half the mass elsewhere (dropped)
    probs[3, 0, 1] = 0.4  # all the covered mass on one class
    out = pixel_outputs(probs, space, confidence=True, probabilities=True)
    torch.testing.assert_close(distribution(probs, space).sum(0), torch.ones(1, 2))
    assert out.max_probability[0].tolist() == pytest.approx([1 / 19, 1.0])
    assert out.entropy[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)  # uniform = 1, certain = 0 (normalised)
    assert out.probabilities[3, 0, 1] == pytest.approx(1.0) and out.label.tolist() == [[0, 3]]
    ignore = display_space(universal(), "cityscapes-19", "ignore")
    other = pixel_outputs(probs, ignore, confidence=True)
    assert other.label.tolist() == [[255, 255]]  # 'other' holds 0.5 / 0.6
    assert other.max_probability[0].tolist() == pytest.approx([0.5, 0.6])


def test_confidence_pngs_are_16_bit_and_probabilities_npz_round_trip(tmp_path):
    space = display_space(universal(), "camvid-11", "drop")
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.dirichlet(np.ones(11), size=(6, 7)).transpose(2, 0, 1).astype(np.float32))
    out = pixel_outputs(probs, space, confidence=True, probabilities=True)
    written = write_confidence(tmp_path / "sub" / "img", out)
    assert [p.name for p in written] == ["img_maxprob.png", "img_entropy.png"]
    maxprob = cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED)
    assert maxprob.dtype == np.uint16 and maxprob.shape == (6, 7)
    np.testing.assert_allclose(maxprob / UINT16_SCALE, probs.max(0).values.numpy(), atol=1 / UINT16_SCALE)
    npz = np.load(write_probabilities(tmp_path / "img", out, space.class_names))
    assert npz["probabilities"].dtype == np.uint16 and npz["probabilities"].shape == (11, 6, 7)
    np.testing.assert_allclose(npz["probabilities"] / npz["scale"], probs.numpy(), atol=1 / UINT16_SCALE)
    assert list(npz["class_names"]) == load_class_names("camvid-11")


USER_FILE = """taxonomy\tmy-roads-4
role\ttrain
id\tname\tuniversal\tcolor
0\tasphalt\troad\t128 64 128
1\tauto\tcar\t0 0 142
2\ttree\tvegetation\t107 142 35
3\tblur\tunlabeled\t0 0 0
"""


def test_user_taxonomy_file_loads_once_and_serves_as_output(tmp_path):
    path = tmp_path / "roads.tsv"
    path.write_text(USER_FILE)
    catalog = Catalog([str(path)])
    catalog = catalog.with_taxonomy_files(str(path))  # the same file again (every tool loads the key): nothing to do, no 'already exists'
    assert "my-roads-4" in catalog.taxonomy_names()
    model = universal()
    model.catalog = catalog
    projection, notes = output_projection(model, "my-roads-4")
    assert [list(g) for g in projection.members] == [[uid("road")], [uid("car")], [uid("vegetation")], []]
    assert any("blur" in n for n in notes)
    with pytest.raises(TaxonomyFileError, match="nowhere.tsv: error: cannot read taxonomy file"):
        Catalog([str(tmp_path / "nowhere.tsv")])


def perfect_universal_model(dataset):
    conv = build_taxonomy_converter("universal", [dataset], [])
    palette = np.full((194, 3), FAR, dtype=np.float32)
    colors = load_class_colors(dataset)
    for k in range(len(colors)):
        palette[conv.label_maps[dataset][k]] = colors[k]
    return ColourOracleNet(palette).eval()


def test_training_dataset_scored_in_its_own_ids_with_output_taxonomy(tmp_path):
    colors = load_class_colors("cityscapes-19")
    write_dataset(tmp_path, "cityscapes-19", colour_world(19, 2, 32, 48, colors, seed=1))
    loaded = universal(perfect_universal_model("cityscapes-19"))
    options = OutputOptions(True, True, True, True, "cityscapes-19", "drop")
    result = evaluate_dataset(loaded, "cityscapes-19", inference_settings(crop_h=32, crop_w=32, base_size=32), eval_data(tmp_path),
                              save_folder=tmp_path / "out", outputs=options, progress=False)
    assert result.space.name == "cityscapes-19" and result.space.num_classes == 19 and result.space.valid_classes is None
    assert result.metrics.pixel_acc == pytest.approx(1.0)
    gray = cv2.imread(str(tmp_path / "out" / "predictions" / "gray" / "images" / "val" / "img_000.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(str(Catalog(data_root=tmp_path).locate("cityscapes-19", "val").root / "labels" / "val" / "img_000.png"), cv2.IMREAD_UNCHANGED)
    keep = label != 255
    np.testing.assert_array_equal(gray[keep], label[keep])  # cityscapes-19 ids, not universal ones
    for name in ("img_000_maxprob.png", "img_000_entropy.png"):
        assert (tmp_path / "out" / "predictions" / "confidence" / "images" / "val" / name).is_file()
    assert (tmp_path / "out" / "predictions" / "probabilities" / "images" / "val" / "img_000_probs.npz").is_file()
    assert (tmp_path / "out" / "per_class_iou.png").is_file() and (tmp_path / "out" / "confusion.png").is_file()
    with pytest.raises(UserError, match="output_taxonomy='camvid-11' but the dataset is 'cityscapes-19'"):
        evaluation_space(loaded, "cityscapes-19", "camvid-11")


def test_uncovered_ignore_predictions_are_scored_as_misses(tmp_path):
    colors = load_class_colors("camvid-11")
    samples = colour_world(11, 1, 24, 32, colors, seed=2)
    write_dataset(tmp_path, "camvid-11", samples)
    target = int(np.bincount(samples[0][1][samples[0][1] != 255]).argmax())  # the most frequent class
    projection = build_taxonomy_converter("universal", [], ["camvid-11"]).projection("camvid-11")
    palette = np.full((194, 3), FAR, dtype=np.float32)
    for k, group in enumerate(projection.members):
        palette[group[0]] = colors[k]
    uncovered = [u for u in range(194) if u not in projection.used_inputs][:2]
    palette[uncovered] = colors[target]  # two classes camvid-11 lacks tie with the target class: 'other' holds 2/3
    model = ColourOracleNet(palette).eval()
    settings = inference_settings(crop_h=24, crop_w=32, base_size=24)
    drop = evaluate_dataset(universal(model), "camvid-11", settings, eval_data(tmp_path), progress=False)
    ignore = evaluate_dataset(universal(model), "camvid-11", settings, eval_data(tmp_path), progress=False,
                              outputs=OutputOptions(False, False, False, False, None, "ignore"))
    assert drop.metrics.pixel_acc == pytest.approx(1.0) and int(drop.metrics.unlabeled_pixels.sum()) == 0
    lost = int(ignore.metrics.gt_pixels[target])
    expected = [0] * 11
    expected[target] = lost
    assert lost > 0 and ignore.metrics.unlabeled_pixels.tolist() == expected
    assert ignore.metrics.pixel_acc == pytest.approx(1 - lost / ignore.metrics.num_pixels)
    assert ignore.metrics.iou[target] == 0.0 and ignore.metrics.pred_pixels[target] == 0
    assert "predicted 'unlabeled'" in format_per_class_table(ignore, "m")


def test_labels_from_unresized_probabilities_equal_those_of_the_full_resize():
    from mseg_semantic.evaluation.inference import ImageProbabilities

    torch.manual_seed(3)
    logits = torch.nn.functional.interpolate(torch.randn(1, 20, 5, 6) * 5, size=(12, 16), mode="bilinear", align_corners=False)[0]
    values = torch.softmax(logits, 0)[:19] * 0.9  # 19 output classes, some mass elsewhere
    image = ImageProbabilities(values, (47, 61))
    for rule in ("drop", "ignore"):
        space = display_space(universal(), "cityscapes-19", rule)
        quick = pixel_outputs(image, space).label
        full = pixel_outputs(image, space, confidence=True).label  # every class resized
        assert torch.equal(quick, full), rule
    assert (pixel_outputs(image, display_space(universal(), "cityscapes-19", "ignore")).label == 255).any()
