"""The validation hook in isolation: scalars, model_best.pth, the best-so-far state a checkpoint carries."""

import numpy as np
import pytest
import torch

from eval_helpers import ColourOracleNet, colour_world, write_dataset
from mseg_semantic.config import ConfigError, load_config
from mseg_semantic.distributed import DistInfo
from mseg_semantic.evaluation.validation import BEST_NAME, STATE_KEY, build_validator
from mseg_semantic.taxonomy import build_taxonomy_converter, load_class_colors

META = {"model": "colour_oracle", "num_classes": 194, "model_taxonomy": "universal", "train_datasets": ["cityscapes-19"]}


@pytest.fixture()
def world(tmp_path):
    write_dataset(tmp_path / "data", "camvid-11", colour_world(11, 3, 24, 32, load_class_colors("camvid-11"), seed=7))
    return tmp_path


def camvid_model():
    """Right on camvid-11 while its scale is positive, wrong everywhere when negated."""
    projection = build_taxonomy_converter("universal", [], ["camvid-11"]).projection("camvid-11")
    palette = np.full((194, 3), 10_000.0, dtype=np.float32)
    for k, group in enumerate(projection.members):
        palette[group[0]] = load_class_colors("camvid-11")[k]
    return ColourOracleNet(palette)


def config(world, *overrides):
    """Validation of camvid-11 every 2 iterations; ``overrides`` (key=value) replace any of these."""
    values = {"data_root": world / "data", "val_every": 2, "val_datasets": "[camvid-11]", "test_h": 24, "test_w": 32, "base_size": 24, "window_batch": 4}
    values.update(o.split("=", 1) for o in overrides)
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def test_best_model_is_kept_by_the_chosen_metric_and_the_state_survives_a_resume(world):
    model = camvid_model()
    logged, state = [], {}
    validator = build_validator(config(world), model, META, state, world, max_iters=8, info=DistInfo(),
                                write_scalars=lambda it, s: logged.append((it, dict(s))))
    with torch.no_grad():
        model.scale.fill_(-4.0)  # a bad model first
    validator(1)  # not due
    assert logged == []
    validator(2)
    bad = logged[-1][1]["val/miou"]
    with torch.no_grad():
        model.scale.fill_(4.0)
    validator(4)
    assert logged[-1][1]["val/miou"] == pytest.approx(1.0) and bad < 0.5
    assert state[STATE_KEY] == {"metric": "val/miou", "value": pytest.approx(1.0), "iteration": 4}
    with torch.no_grad():
        model.scale.fill_(-4.0)
    validator(6)
    assert logged[-1][1]["val/best_miou"] == pytest.approx(1.0)
    best = torch.load(world / BEST_NAME, weights_only=True)
    assert best["meta"]["iteration"] == 4 and best["meta"]["val_metric"] == "val/miou"
    assert best["state_dict"]["scale"].item() == 4.0  # the weights of iteration 4, not those being trained now
    assert model.scale.item() == -4.0 and model.training  # validation left the trained model as it was
    assert set(logged[-1][1]) >= {"val/camvid-11/miou", "val/camvid-11/miou_mseg", "val/camvid-11/pixel_acc", "val/camvid-11/mean_acc",
                                  "val/miou_mseg", "val/pixel_acc", "val/seconds"}

    # a resumed run gets the checkpoint's extra state back: a worse score does not replace model_best.pth
    resumed = build_validator(config(world), model, META, dict(state), world, max_iters=8, info=DistInfo(), write_scalars=lambda it, s: None)
    resumed(8)
    assert torch.load(world / BEST_NAME, weights_only=True)["meta"]["iteration"] == 4
    # without that state (a fresh start) the first validation writes it
    fresh = build_validator(config(world), model, META, {}, world, max_iters=8, info=DistInfo(), write_scalars=lambda it, s: None)
    fresh(8)
    assert torch.load(world / BEST_NAME, weights_only=True)["meta"]["iteration"] == 8


def test_changed_metric_starts_a_new_best_and_rank_other_than_0_writes_nothing(world):
    model = camvid_model()
    state = {STATE_KEY: {"metric": "val/miou", "value": 2.0, "iteration": 2}}  # unbeatable by mIoU
    validator = build_validator(config(world, "val_metric=pixel_acc"), model, META, state, world, max_iters=4, info=DistInfo(rank=1),
                                write_scalars=lambda it, s: None)
    validator(4)
    assert state[STATE_KEY]["metric"] == "val/pixel_acc" and state[STATE_KEY]["iteration"] == 4
    assert not (world / BEST_NAME).exists()  # only rank 0 writes


def test_validation_problems_are_found_before_training(world):
    model = camvid_model()
    with pytest.raises(ConfigError, match="TRAIN.val_datasets: kitti-19 val list not found at .*kitti-19/list/val.txt"):
        build_validator(config(world, "val_datasets=[camvid-11,kitti-19]"), model, META, {}, world, 4, DistInfo(), lambda it, s: None)
    assert build_validator(config(world, "val_every=0"), model, META, {}, world, 4, DistInfo(), lambda it, s: None) is None
    with pytest.raises(ConfigError, match="val_metric"):
        config(world, "val_metric=loss")


def test_last_validation_waits_for_precise_bn(world):
    logged = []
    validator = build_validator(config(world, "val_every=3", "precise_bn_iters=5"), camvid_model(), META, {}, world, max_iters=4,
                                info=DistInfo(), write_scalars=lambda it, s: logged.append(it))
    validator(3)
    validator(4)  # the last iteration: deferred
    assert logged == [3]
    validator.finish()
    assert logged == [3, 4]


def test_a_bad_validation_sample_is_reported_and_left_out_without_stopping_training(world, caplog):
    """A label with ids its taxonomy does not have (or a file that does not decode) would otherwise end a run at its
    first validation, hours in, and every resume would fail again."""
    import cv2

    from mseg_semantic.taxonomy import Catalog

    location = Catalog(data_root=world / "data").locate("camvid-11", "val")
    label_path = location.root / location.list_file.read_text().split()[1]
    bad = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    bad[0, 0] = 77  # not a camvid-11 id
    cv2.imwrite(str(label_path), bad)
    logged = []
    validator = build_validator(config(world), camvid_model(), META, {}, world, max_iters=8, info=DistInfo(),
                                write_scalars=lambda it, s: logged.append(s))
    with caplog.at_level("WARNING"):
        scalars = validator.validate(2)
    assert scalars["val/camvid-11/bad_samples"] == 1.0 and scalars["val/camvid-11/miou"] > 0.9  # the two good images
    assert any(str(label_path) in r.getMessage() and "77" in r.getMessage() for r in caplog.records)


def test_a_missing_validation_file_stops_the_run_before_iteration_1(world):
    from mseg_semantic.taxonomy import Catalog

    location = Catalog(data_root=world / "data").locate("camvid-11", "val")
    image = location.root / location.list_file.read_text().split()[2]
    image.unlink()
    with pytest.raises(ConfigError, match=rf"1 file\(s\) of .*val.txt do not exist \(first: {image}\)"):
        build_validator(config(world), camvid_model(), META, {}, world, 4, DistInfo(), lambda it, s: None)
