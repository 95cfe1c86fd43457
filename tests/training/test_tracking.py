"""Tracking sinks (TRAIN.loggers): jsonl, tensorboard, wandb, mlflow.

wandb and mlflow are optional packages that pull many dependencies; the suite does not install them. Their sinks are
tested through fake modules put in ``sys.modules`` that record every call with the signatures of the real APIs
(``wandb.init(...).log(data, step=)`` / ``.finish()``; ``mlflow.tracking.MlflowClient`` with ``create_run``,
``log_batch`` and ``set_terminated``, ``mlflow.entities.Metric`` / ``Param``). The logged scalars are compared with
``metrics.jsonl`` of the same run.
"""

from __future__ import annotations

import json
import sys
import types
from collections import namedtuple

import pytest
import torch
import yaml

from mseg_semantic.tool import train as mseg_train
from mseg_semantic.training.report import TrainingReporter, active_loggers
from train_helpers import make_world, write_config


class FakeWandbRun:
    def __init__(self, kwargs):
        self.kwargs = kwargs
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    def log(self, data, step=None):
        self.logged.append((step, dict(data)))

    def finish(self):
        self.finished = True


def fake_wandb() -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        run = FakeWandbRun(kwargs)
        module.runs.append(run)
        return run

    module.init = init
    return module


def fake_mlflow() -> dict[str, types.ModuleType]:
    mlflow = types.ModuleType("mlflow")
    entities = types.ModuleType("mlflow.entities")
    tracking = types.ModuleType("mlflow.tracking")
    entities.Metric = namedtuple("Metric", "key value timestamp step")
    entities.Param = namedtuple("Param", "key value")
    state = {"experiments": {}, "runs": {}, "clients": []}

    class MlflowClient:
        def __init__(self, tracking_uri=None):
            self.tracking_uri = tracking_uri
            state["clients"].append(self)

        def get_experiment_by_name(self, name):
            found = state["experiments"].get(name)
            return None if found is None else types.SimpleNamespace(experiment_id=found)

        def create_experiment(self, name):
            state["experiments"][name] = str(len(state["experiments"]))
            return state["experiments"][name]

        def create_run(self, experiment_id, run_name=None):
            run_id = f"run{len(state['runs'])}"
            state["runs"][run_id] = {"experiment": experiment_id, "name": run_name, "metrics": [], "params": [], "status": "RUNNING"}
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id))

        def log_batch(self, run_id, metrics=(), params=(), tags=()):
            assert len(params) <= 100
            state["runs"][run_id]["metrics"] += list(metrics)
            state["runs"][run_id]["params"] += list(params)

        def set_terminated(self, run_id, status=None):
            state["runs"][run_id]["status"] = status or "FINISHED"

    tracking.MlflowClient = MlflowClient
    mlflow.tracking, mlflow.entities, mlflow.state = tracking, entities, state
    return {"mlflow": mlflow, "mlflow.tracking": tracking, "mlflow.entities": entities}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("tracking_world"))


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    wandb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    modules = fake_mlflow()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return wandb, modules["mlflow"]


def _jsonl(path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record.pop("iteration"), {}).update(record)
    return out


def _train(config, out, *overrides) -> int:
    return mseg_train.main(["--config", str(config), f"output_dir={out}", *overrides])


def test_wandb_and_mlflow_receive_exactly_the_scalars_of_metrics_jsonl(world, fakes, tmp_path):
    wandb, mlflow = fakes
    config = write_config(tmp_path / "c.yaml", world, train={"max_iters": 4, "checkpoint_every": 2, "exp_id": "tracked",
                                                              "loggers": ["jsonl", "wandb", "mlflow"]})
    out = tmp_path / "run"
    assert _train(config, out) == 0
    expected = _jsonl(out / "metrics.jsonl")
    assert sorted(expected) == [1, 2, 3, 4] and "loss/total" in expected[4] and "lr" in expected[1]

    [run] = wandb.runs
    assert run.kwargs["project"] == "mseg_semantic" and run.kwargs["name"] == "tracked" and run.kwargs["dir"] == str(out)
    assert run.kwargs["config"]["TRAIN"]["max_iters"] == 4 and run.finished
    logged: dict[int, dict] = {}
    for step, data in run.logged:
        logged.setdefault(step, {}).update(data)
    assert logged == expected

    [(run_id, record)] = mlflow.state["runs"].items()
    assert record["name"] == "tracked" and record["status"] == "FINISHED"
    metrics: dict[int, dict] = {}
    for metric in record["metrics"]:
        metrics.setdefault(metric.step, {})[metric.key] = metric.value
    assert metrics == expected
    params = {p.key: p.value for p in record["params"]}
    assert params["TRAIN.max_iters"] == "4" and params["DATA.dataset"] == str(["cityscapes-19", "ade20k-150", "mapillary-public65"])
    assert mlflow.state["clients"][0].tracking_uri == f"sqlite:///{(out / 'mlflow.db').resolve()}"  # a local store by default
    assert not (out / "tensorboard").exists()  # not listed


def test_a_resumed_run_continues_the_same_tracking_runs(world, fakes, tmp_path):
    wandb, mlflow = fakes
    config = write_config(tmp_path / "c.yaml", world, train={"max_iters": 2, "checkpoint_every": 2, "loggers": ["jsonl", "wandb", "mlflow"]})
    out = tmp_path / "run"
    assert _train(config, out) == 0
    assert _train(config, out, "max_iters=4", f"resume={out / 'checkpoints' / 'last.pth'}") == 0  # trains on from iteration 2
    first, second = wandb.runs
    assert second.kwargs["id"] == first.kwargs["id"] and second.kwargs["resume"] == "allow"
    assert [step for step, _ in second.logged if "loss/total" in _] == [3, 4]
    assert list(mlflow.state["runs"]) == ["run0"]  # the second process logged into the first run
    steps = sorted({m.step for m in mlflow.state["runs"]["run0"]["metrics"]})
    assert steps == [1, 2, 3, 4]


def test_a_missing_tracking_package_is_one_line_before_the_run_starts(world, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    config = write_config(tmp_path / "c.yaml", world, train={"loggers": ["jsonl", "wandb"]})
    assert _train(config, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("mseg-train: error: TRAIN.loggers lists wandb but it cannot be imported")
    assert "pip install 'mseg_semantic[tracking]'" in err
    assert not (tmp_path / "run").exists()
    assert mseg_train.main(["--config", str(config), "--print-config"]) == 2  # --print-config refuses it too


def test_a_tracking_backend_that_cannot_start_is_one_line(world, fakes, monkeypatch, tmp_path, capsys):
    wandb, _ = fakes

    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\nrun wandb login")

    monkeypatch.setattr(wandb, "init", refuse)
    config = write_config(tmp_path / "c.yaml", world, train={"loggers": ["jsonl", "wandb"]})
    assert _train(config, tmp_path / "run") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert lines == ["mseg-train: error: TRAIN.loggers: wandb could not start (RuntimeError: api_key not configured (no-tty))"]


def test_an_unknown_logger_is_named_with_a_suggestion(world, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", world)
    assert _train(config, tmp_path / "run", "loggers=[jsonl,tensorbord]") == 2
    assert "TRAIN.loggers: unknown logger 'tensorbord' (did you mean 'tensorboard'?)" in capsys.readouterr().err


@pytest.mark.parametrize("train, active", [
    ({}, ["tensorboard", "jsonl"]),
    ({"tensorboard": False}, ["jsonl"]),  # the older switch still turns tensorboard off
    ({"loggers": ["jsonl", "jsonl", "mlflow"]}, ["jsonl", "mlflow"]),
    ({"loggers": []}, []),
])
def test_active_loggers(world, tmp_path, train, active):
    from mseg_semantic.config import load_config

    cfg = load_config(write_config(tmp_path / "c.yaml", world, train={k: v for k, v in train.items()}))
    if "tensorboard" not in train:
        cfg = cfg.updated({"TRAIN.tensorboard": True})
    assert active_loggers(cfg.TRAIN) == active


def test_the_reporter_writes_only_the_listed_sinks(tmp_path):
    for loggers in (["tensorboard"], ["jsonl"], []):
        out = tmp_path / "_".join(loggers or ["none"])
        out.mkdir()
        reporter = TrainingReporter(out, True, 0, 2, 2, torch.device("cpu"), print_freq=1, show_progress=False, loggers=loggers)
        reporter.write_scalars(1, {"val/miou": 0.5, "nan": float("nan")})
        reporter.close()
        assert (out / "tensorboard").is_dir() == ("tensorboard" in loggers)
        assert (out / "metrics.jsonl").is_file() == ("jsonl" in loggers)
        if "jsonl" in loggers:
            assert json.loads((out / "metrics.jsonl").read_text()) == {"iteration": 1, "val/miou": 0.5}  # non-finite left out


def test_print_config_of_train_names_the_loggers(world, tmp_path, capsys, fakes):
    config = write_config(tmp_path / "c.yaml", world, train={"loggers": ["jsonl", "mlflow"]})
    assert mseg_train.main(["--config", str(config), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "loggers jsonl, mlflow" in out and yaml.safe_load(out)["TRAIN"]["loggers"] == ["jsonl", "mlflow"]
