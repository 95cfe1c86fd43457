import json

import cv2
import numpy as np
import pytest
import torch

from eval_helpers import eval_data, inference_settings, ColourOracleNet, colour_world, write_dataset
from mseg_semantic.evaluation.evaluate import OutputOptions, evaluate_dataset, select_indices

PREDICTIONS = OutputOptions(True, False, False, False, None, "drop")
from mseg_semantic.evaluation.model_space import LoadedModel, evaluation_space
from mseg_semantic.taxonomy import build_taxonomy_converter, load_class_colors

FAR = 10_000.0  # a colour no pixel has: that class is never predicted


def universal_colour_model(dataset_colors: np.ndarray, universal_ids: list[int]) -> ColourOracleNet:
    palette = np.full((194, 3), FAR, dtype=np.float32)
    for k, u in enumerate(universal_ids):
        palette[u] = dataset_colors[k]
    return ColourOracleNet(palette).eval()


def loaded(model, taxonomy="universal", train_datasets=None):
    return LoadedModel(model, "stand-in.pth", "colour_oracle", taxonomy, 194 if taxonomy == "universal" else 11, train_datasets)


def test_zero_shot_projection_scores_a_perfect_universal_model_at_one(tmp_path):
    colors = load_class_colors("camvid-11").astype(np.float32)
    projection = build_taxonomy_converter("universal", [], ["camvid-11"]).projection("camvid-11")
    first_uid = [group[0] for group in projection.members]
    write_dataset(tmp_path, "camvid-11", colour_world(11, 3, 40, 56, colors.astype(np.uint8)))
    model = universal_colour_model(colors, first_uid)
    settings = inference_settings(crop_h=32, crop_w=32, base_size=40, window_batch=16)
    result = evaluate_dataset(loaded(model), "camvid-11", settings, eval_data(str(tmp_path)), save_folder=tmp_path / "out", progress=False, outputs=PREDICTIONS)
    assert result.space.name == "camvid-11" and result.num_images == 3
    assert result.metrics.miou == pytest.approx(1.0)
    assert result.metrics.pixel_acc == pytest.approx(1.0)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["miou"] == pytest.approx(1.0) and summary["eval_taxonomy"] == "camvid-11"
    gray = cv2.imread(str(tmp_path / "out" / "predictions" / "gray" / "images" / "val" / "img_000.png"), cv2.IMREAD_UNCHANGED)
    color = cv2.imread(str(tmp_path / "out" / "predictions" / "color" / "images" / "val" / "img_000.png"))[:, :, ::-1]
    assert gray.dtype == np.uint8 and gray.shape == (40, 56)
    np.testing.assert_array_equal(color, load_class_colors("camvid-11")[gray])
    assert "| 0 |" in (tmp_path / "out" / "per_class.md").read_text()


def test_training_dataset_is_scored_in_universal_space_over_its_own_classes(tmp_path):
    conv = build_taxonomy_converter("universal", ["cityscapes-19"], [])
    uids = [conv.id_to_uid_maps["cityscapes-19"][k] for k in range(19)]
    colors = load_class_colors("cityscapes-19").astype(np.float32)
    write_dataset(tmp_path, "cityscapes-19", colour_world(19, 2, 32, 48, colors.astype(np.uint8), seed=1))
    model = universal_colour_model(colors, uids)
    settings = inference_settings(crop_h=32, crop_w=32, base_size=32)
    result = evaluate_dataset(loaded(model), "cityscapes-19", settings, eval_data(str(tmp_path)), progress=False)
    space = result.space
    assert space.name == "universal" and space.num_classes == 194
    assert sorted(space.valid_classes) == sorted(set(uids))
    assert int(result.metrics.valid.sum()) == len(set(uids))
    assert result.metrics.miou == pytest.approx(1.0)
    # MSeg's formula over the dataset's classes: a class of the dataset missing from these 2 images counts 0
    present = int((~np.isnan(result.metrics.iou[result.metrics.valid])).sum())
    assert result.metrics.miou_mseg == pytest.approx(present / len(set(uids)))


def test_oracle_model_is_scored_in_its_own_taxonomy(tmp_path):
    colors = load_class_colors("camvid-11").astype(np.float32)
    write_dataset(tmp_path, "camvid-11", colour_world(11, 2, 24, 24, colors.astype(np.uint8), seed=2))
    model = ColourOracleNet(colors).eval()
    result = evaluate_dataset(loaded(model, "oracle", ["camvid-11"]), "camvid-11", inference_settings(crop_h=24, crop_w=24), eval_data(str(tmp_path)), progress=False)
    assert result.space.projection is None and result.metrics.miou == pytest.approx(1.0)


def test_unknown_label_id_in_ground_truth_is_an_error(tmp_path):
    conv = build_taxonomy_converter("universal", ["cityscapes-19"], [])
    colors = load_class_colors("cityscapes-19").astype(np.float32)
    samples = colour_world(19, 1, 16, 16, colors.astype(np.uint8))
    samples[0][1][0, 5] = 77  # not a cityscapes-19 id
    write_dataset(tmp_path, "cityscapes-19", samples)
    model = universal_colour_model(colors, [conv.id_to_uid_maps["cityscapes-19"][k] for k in range(19)])
    with pytest.raises(ValueError, match="77"):
        evaluate_dataset(loaded(model), "cityscapes-19", inference_settings(crop_h=16, crop_w=16), eval_data(str(tmp_path)), progress=False)


def test_missing_list_names_the_path(tmp_path):
    model = ColourOracleNet(np.zeros((194, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="dataset_lists/voc2012/list/val.txt"):
        evaluate_dataset(loaded(model), "voc2012", inference_settings(), eval_data(str(tmp_path)), progress=False)


def test_save_predictions_without_a_folder_is_an_error(tmp_path):
    model = ColourOracleNet(np.zeros((194, 3), np.float32))
    with pytest.raises(ValueError, match="save_folder"):
        evaluate_dataset(loaded(model), "camvid-11", inference_settings(), eval_data(str(tmp_path)), outputs=PREDICTIONS, progress=False)


def test_select_indices_subset_and_rank_split():
    assert select_indices(10) == list(range(10))
    assert select_indices(10, 2, 5) == [2, 3, 4, 5, 6]
    shares = [select_indices(10, 0, 0, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(10))
    with pytest.raises(ValueError, match="index_start"):
        select_indices(5, 7)


def test_evaluation_space_rejects_non_dataset_taxonomy():
    model = ColourOracleNet(np.zeros((194, 3), np.float32))
    with pytest.raises(ValueError, match="universal"):
        evaluation_space(loaded(model), "universal")


def test_projection_equals_taxonomy_converter_transform_predictions_test():
    from mseg_semantic.evaluation.inference import predict_probabilities

    conv = build_taxonomy_converter("universal", [], ["kitti-19"])
    model = torch.nn.Conv2d(3, 194, 1)  # constant logits = the bias, whatever the window
    with torch.no_grad():
        model.weight.zero_()
        model.bias.normal_(0, 3)
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ours = predict_probabilities(model, [image], inference_settings(crop_h=16, crop_w=16, base_size=20), conv.projection("kitti-19"))[0]
    theirs = conv.transform_predictions_test(model.bias.detach().view(1, 194, 1, 1), "kitti-19")[0]
    torch.testing.assert_close(ours, theirs.expand_as(ours), atol=1e-5, rtol=1e-5)


def test_naive_model_is_projected_by_name_into_the_test_taxonomy():
    model = ColourOracleNet(np.zeros((316, 3), np.float32))
    space = evaluation_space(LoadedModel(model, "n.pth", "x", "naive", 316, None), "camvid-11")
    assert space.name == "camvid-11" and tuple(space.projection.matrix().shape) == (11, 316)
    assert space.converter is None and space.valid_classes is None


def _distributed_worker(rank, world_size, init_file, data_root, out_file):
    import torch.distributed as dist

    from eval_helpers import TinySegNet

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = TinySegNet(num_classes=11, seed=0).eval()
        result = evaluate_dataset(loaded(model, "oracle", ["camvid-11"]), "camvid-11", inference_settings(crop_h=16, crop_w=16), eval_data(data_root), progress=False)
        if rank == 0:
            torch.save({"iou": result.metrics.iou, "pixels": result.metrics.num_pixels, "n": result.num_images}, out_file)
        dist.barrier()  # as shutdown_distributed does: no rank leaves while a peer is still in a collective
    finally:
        dist.destroy_process_group()


def test_two_ranks_split_the_images_and_sum_the_counts(tmp_path):
    import torch.multiprocessing as mp

    from eval_helpers import TinySegNet

    colors = load_class_colors("camvid-11")
    write_dataset(tmp_path, "camvid-11", colour_world(11, 3, 16, 24, colors, seed=5))
    out = tmp_path / "rank0.pt"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path), str(out)), nprocs=2, join=True)
    single = evaluate_dataset(loaded(TinySegNet(num_classes=11, seed=0).eval(), "oracle", ["camvid-11"]), "camvid-11", inference_settings(crop_h=16, crop_w=16), eval_data(tmp_path), progress=False)
    got = torch.load(out, weights_only=False)
    assert got["n"] == 3 and got["pixels"] == single.metrics.num_pixels == 3 * 16 * 22
    np.testing.assert_allclose(got["iou"], single.metrics.iou, equal_nan=True)
