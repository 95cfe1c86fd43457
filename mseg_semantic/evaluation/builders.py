"""Where the config stops for mseg-test, mseg-demo and mseg-export: the TEST section -> plain objects.

Everything else in :mod:`mseg_semantic.evaluation` takes these objects (or plain arguments), not a Config.
"""

from __future__ import annotations

import torch

from mseg_semantic.config import Config, ConfigError
from mseg_semantic.evaluation.inference import InferenceSettings
from mseg_semantic.evaluation.model_space import LoadedModel, load_model_for_inference

__all__ = ["build_inference_settings", "load_model_from_config"]


def build_inference_settings(cfg: Config) -> InferenceSettings:
    """``TEST`` -> :class:`InferenceSettings` (the benchmark replaces ``base_size`` per run)."""
    t = cfg.TEST
    return InferenceSettings(
        crop_h=t.test_h,
        crop_w=t.test_w,
        base_size=t.base_size,
        scales=tuple(t.scales),
        flip=t.flip,
        mode=t.inference_mode,
        window_batch=t.window_batch,
        precision=t.test_precision,
    )


def load_model_from_config(cfg: Config, device: torch.device, oracle_dataset: str | None = None) -> LoadedModel:
    """The checkpoint at ``TEST.model_path`` on ``device``; ``TRAIN.model`` / ``TEST.model_taxonomy`` serve
    checkpoints without meta, ``oracle_dataset`` an oracle checkpoint without meta."""
    if not cfg.TEST.model_path:
        raise ConfigError("TEST.model_path is not set: pass model_path=PATH/TO/model_final.pth")
    return load_model_for_inference(
        cfg.TEST.model_path, device, model_name=cfg.TRAIN.model, taxonomy=cfg.TEST.model_taxonomy, oracle_dataset=oracle_dataset
    )
