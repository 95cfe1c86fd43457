"""YAML configs with typed ``key=value`` overrides; the schema below is the one place every default lives.

A config is a set of sections (``DATA``, ``TRAIN``, ``TEST``, ...) laid out as in MSeg's release files. Every key
is declared in :data:`SCHEMA` with its default, its type and the values it accepts; an unknown key, a value of
the wrong type or out of range is a :class:`ConfigError` that names the key (and the file or override) and
what would be valid. MSeg's own spellings (renamed keys, keys that mean nothing here, apex's ``opt_level``,
"None" strings) are translated by :mod:`mseg_semantic.compat` before anything here sees them.

Overrides are ``SECTION.key=value`` or a bare ``key=value`` when the key exists in exactly one section.
Values are parsed as YAML (``max_iters=100``, ``dataset=[a,b]``, ``resume=null``).

Optional ``STAGES`` list named stages, each with overrides of its own (see :func:`apply_stage`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from mseg_semantic import compat
from mseg_semantic.atomic import atomic_write_text
from mseg_semantic.errors import UserError, did_you_mean, not_utf8_error

__all__ = [
    "SCHEMA",
    "Config",
    "ConfigError",
    "Option",
    "apply_stage",
    "canonical_key",
    "DEFAULT_INFERENCE_CONFIG",
    "find_config",
    "load_config",
    "packaged_configs",
    "parse_override",
    "stage_names",
    "translate_saved_config",
]


class ConfigError(UserError):
    """A config file or override is invalid; the message names the key and what would be valid."""


@dataclass(frozen=True)
class Option:
    default: Any
    kinds: tuple[str, ...]  # any of: int float bool str list dict
    optional: bool
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive
    positive: bool = False  # > 0

    def check(self, value: Any, where: str) -> None:
        """Range and choice checks of a value of the right type (None passes: "not set")."""
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}={value!r} is not one of {', '.join(map(str, self.choices))}{did_you_mean(str(value), map(str, self.choices))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value!r}: expected a finite number")
        if self.positive and value <= 0:
            raise ConfigError(f"{where}={value!r}: must be > 0")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{where}={value!r}: must be >= {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{where}={value!r}: must be <= {self.maximum:g}")


def _opt(default: Any, kind: str | tuple[str, ...] | None = None, optional: bool | None = None, help: str = "", **checks: Any) -> Option:
    if kind is None:
        if default is None:
            raise AssertionError("an option with default None needs an explicit kind")
        kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}[type(default)]
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if "choices" in checks:
        checks["choices"] = tuple(checks["choices"])
    return Option(default, kinds, default is None if optional is None else optional, help, **checks)


TRACKING_SINKS = ("tensorboard", "jsonl", "wandb", "mlflow")  # TRAIN.loggers (mseg_semantic/training/report.py)
IGNORE_LABEL = 255  # the label id of "unlabeled" in every label PNG (taxonomy files: the same 255)

SCHEMA: dict[str, dict[str, Option]] = {
    "DATA": {
        "dataset": _opt(None, ("list", "str"), help="training datasets (taxonomy names), or one name"),
        "universal": _opt(True, help="train in the universal taxonomy (False: the dataset's own = oracle)"),
        "data_root": _opt("${MSEG_DATA_ROOT:-}", help="common root of all datasets"),
        "dataset_roots": _opt({}, help="per-dataset root overrides: name -> dir (relative to data_root or absolute)"),
        "dataset_lists": _opt({}, help="per-dataset list overrides: name -> {split: list file}"),
        "sampling_weights": _opt(None, "dict", help="name -> relative sampling weight (default: uniform)"),
        "on_bad_sample": _opt("error", help="error | skip: what to do with a missing or corrupt file", choices=("error", "skip")),
        "unknown_label": _opt("error", help="error | ignore: label ids outside a dataset's taxonomy", choices=("error", "ignore")),
        "rare_class_sampling": _opt(False, help="DAFormer's rare-class sampling: each row shows a class c drawn with P(c) ~ exp((1 - f_c) / rare_class_temperature) (f_c: c's pixel share in the model's classes, a label set counting for its one-hot target) and an image of its dataset holding it, the crop drawn to hold a pixel of c; statistics cached beside each split list (mseg_semantic/data/rare_class.py)"),
        "rare_class_temperature": _opt(0.01, help="rare-class sampling: T (DAFormer: 0.01; larger: closer to uniform over the classes)", positive=True),
        "rare_class_min_pixels": _opt(3000, help="rare-class sampling: an image counts as holding a class with at least this many pixels of it (DAFormer: 3000 at 1024 x 2048)", minimum=1),
        "generate_demo_world": _opt(False, help="write the synthetic demo world to data_root first when missing"),
        "taxonomy_files": _opt([], ("list", "str"), help="user taxonomy files (the mseg-taxonomy validate format) to load first: their names then work as datasets, output taxonomies and validation datasets in every tool"),
        "dataset_tables": _opt([], ("list", "str"), help="user dataset tables (the format of mseg_semantic/taxonomy/data/datasets/datasets.tsv): a dataset's directory, list layout and title, one row each"),
    },
    "TRAIN": {
        "exp_id": _opt("default", help="experiment name, part of the default output_dir"),
        "output_dir": _opt(None, "str", help="default output/<date>_<exp_id>"),
        "model": _opt("hrnet_w48", help="hrnet_w48 (MSeg), hrnet_w32, hrnet_w18, hrnet_w18_small, hrnet_tiny (tests and CPU demos); DINOv2 ViTs with a pyramid head: dinov2_vits14, dinov2_vitb14, dinov2_vitl14 and the register variants dinov2_vits14_reg, dinov2_vitb14_reg, dinov2_vitl14_reg (crops and windows multiples of 14; weights=dinov2_vitb14 starts from Meta's backbone)"),
        "backbone_mode": _opt("finetune", help="dinov2 models: finetune (everything trains) | frozen (the head only; no backbone activations kept) | adapters (LoRA of rank lora_rank on every block's qkv, and the head; model_final.pth holds them merged); HRNet: finetune only", choices=("finetune", "frozen", "adapters")),
        "lora_rank": _opt(8, help="backbone_mode=adapters: rank of the LoRA adapters (update scale 1)", positive=True),
        "layer_decay": _opt(1.0, help="dinov2 models: layer-wise learning-rate decay, block i of L gets base_lr x layer_decay ** (L + 1 - i) (head: base_lr); 1.0 = off (the only value for HRNet)", positive=True, maximum=1),
        "use_naive_taxonomy": _opt(False, help="train in the naive 316-logit taxonomy"),
        "method": _opt("ce", help="how gradients are made (mseg_semantic/training/gradients: METHODS): ce (MSeg's objective) | mgda (the MGDA multi-task baseline, MGDA section) | ccsa (the CCSA domain-generalization baseline, CCSA section)"),
        "loss": _opt("ce", help="the pixel loss (LOSSES): ce (one-hot: each class's first universal class) | partial_label (-log of the probability summed over the class's label set; universal taxonomy)"),
        "label_set_weights": _opt("uniform", help="partial_label: uniform (-log sum_c p_c over the set) | records (forward correction -log sum_c T[k|c] p_c with T from the relabeling records' frequencies; docs/training.md)", choices=("uniform", "records")),
        "set_prior_correction": _opt(False, help="partial_label: the target inside a set is the posterior divided by a running estimate of the class marginal (RECORDS / SoLar), so that a majority member does not swallow its set's minorities"),
        "sync_bn": _opt(True, help="SyncBatchNorm when distributed on GPUs"),
        "freeze_bn": _opt(False, help="keep BatchNorm layers in eval mode (frozen running statistics), e.g. for fine-tuning with small batches"),
        "train_h": _opt(713, help="crop height (dinov2 models: a multiple of 14, e.g. 714)", positive=True),
        "train_w": _opt(713, help="crop width", positive=True),
        "scale_min": _opt(0.5, help="random scale range (after the short-side resize)", positive=True),
        "scale_max": _opt(2.0, help="random scale range", positive=True),
        "short_size": _opt(1080, help="short side images are resized to before augmentation", positive=True),
        "rotate_min": _opt(-10.0, "float", help="random rotation range, degrees", minimum=-180, maximum=180),
        "rotate_max": _opt(10.0, "float", help="random rotation range, degrees", minimum=-180, maximum=180),
        "blur_prob": _opt(0.5, help="probability of the Gaussian blur", minimum=0, maximum=1),
        "flip_prob": _opt(0.5, help="probability of the horizontal flip", minimum=0, maximum=1),
        "rotate_prob": _opt(0.5, help="probability of the rotation", minimum=0, maximum=1),
        "ignore_label": _opt(IGNORE_LABEL, help="label id the loss ignores", choices=(IGNORE_LABEL,)),
        "num_examples": _opt(1000000, help="crops per dataset; sets max_iters", positive=True),
        "max_iters": _opt(None, "int", help="overrides the count derived from num_examples", positive=True),
        "dataset_gpu_mapping": _opt(None, "dict", help="MSeg's mode: dataset -> ranks, one process per listed rank; null (default): every batch mixes all datasets, on any number of processes"),
        "workers": _opt(4, help="data loader worker processes per node, split over its ranks (MSeg's meaning); 0: load in the training process", minimum=0),
        "batch_size": _opt(14, help="global batch size over all ranks", positive=True),
        "optimizer": _opt("sgd", help="sgd (MSeg's: momentum, L2 weight decay) | adamw (decoupled weight decay, betas); fused on CUDA; the poly schedule drives both", choices=("sgd", "adamw")),
        "base_lr": _opt(0.01, help="learning rate at iteration 0 (poly schedule; with layer_decay: the head's)", positive=True),
        "power": _opt(0.9, help="poly schedule: lr = base_lr (1 - it / max_iters) ** power", minimum=0),
        "momentum": _opt(0.9, help="SGD momentum", minimum=0, maximum=1),
        "betas_adamw": _opt([0.9, 0.999], help="AdamW's (beta1, beta2)"),
        "weight_decay": _opt(0.0001, help="weight decay (SGD: L2 in the gradient; AdamW: decoupled); dinov2 models: not on norms, biases, LayerScale and tokens", minimum=0),
        "grad_clip": _opt(None, "float", help="max gradient norm (default: no clipping)", positive=True),
        "seed": _opt(0, help="initial weights and the data stream (batch b depends on seed and b only)", minimum=0),
        "precision": _opt("fp32", help="fp32 | bf16 | fp16 (autocast; fp16 with loss scaling); MSeg's opt_level O0..O3 is translated to this", choices=("fp32", "bf16", "fp16")),
        "channels_last": _opt(False, help="NHWC memory format for model and images"),
        "compile": _opt(False, help="torch.compile the repeated HRNet modules (dinov2: the transformer blocks and the head) and the upsample-and-loss head (compiled code cached on disk: only the first run on a machine waits); not with MGDA"),
        "cuda_graphs": _opt(False, help="capture the whole step as one CUDA graph and replay it (one GPU process, fp32/bf16, cross-entropy): removes the host's launch cost"),
        "print_freq": _opt(10, help="iterations between log lines", positive=True),
        "checkpoint_every": _opt(1000, help="iterations between training checkpoints (and one after the last)", positive=True),
        "keep_checkpoints": _opt(3, help="iter_*.pth checkpoints kept", positive=True),
        "weights": _opt(None, "str", help="fine-tune: model weights only, from a file or a released name (mseg-weights list)"),
        "reinit_head": _opt(False, help="with weights: re-initialise the classifier on a class-count mismatch"),
        "resume": _opt(None, "str", help="checkpoint to resume from (default: newest in output_dir)"),
        "auto_resume": _opt(True, help="resume from output_dir/checkpoints when present"),
        "stage": _opt(None, "str", help="stage to run (default: all, in order)"),
        "tensorboard": _opt(True, help="tensorboard scalars under output_dir/tensorboard (the older switch: false drops tensorboard from TRAIN.loggers)"),
        "loggers": _opt(["tensorboard", "jsonl"], "list", help="tracking sinks, any of: tensorboard, jsonl (output_dir/metrics.jsonl), wandb, mlflow (pip install 'mseg_semantic[tracking]'; mseg_semantic/training/report.py)"),
        "precise_bn_iters": _opt(0, help="after training, re-estimate BatchNorm running statistics as the plain mean over this many training batches (0: off, as MSeg); for short runs, where BN momentum 0.01 leaves them stale", minimum=0),
        "cpu_threads": _opt(None, "int", help="PyTorch intra-op threads on CPU (default: PyTorch's choice); 1 avoids thread contention on a busy machine", positive=True),
        # validation during training (mseg_semantic/evaluation/validation.py): inference as the TEST keys say
        "val_every": _opt(0, help="validate every N iterations and after the last (0: never)", minimum=0),
        "val_datasets": _opt(None, ("list", "str"), help="datasets whose TEST.split list is validated (default: the training datasets); a training dataset is scored in the model's taxonomy over its own classes, a test dataset projected into its taxonomy"),
        "val_images": _opt(0, help="images per validation dataset, the first N of its list (0: all)", minimum=0),
        "val_metric": _opt("miou", help="miou / miou_mseg / pixel_acc: the mean over val_datasets that picks model_best.pth", choices=("miou", "miou_mseg", "pixel_acc")),
    },
    "Distributed": {
        "dist_backend": _opt(None, "str", help="default nccl on GPUs, gloo on CPUs", choices=("nccl", "gloo")),
    },
    "TEST": {
        "split": _opt("val", help="list evaluated (MSeg evaluates val, the test datasets too)"),
        "base_size": _opt(None, "int", help="short side the image is resized to before inference", positive=True),
        "test_h": _opt(713, help="sliding-window height (dinov2 models: a multiple of 14, e.g. 714)", positive=True),
        "test_w": _opt(713, help="sliding-window width (dinov2 models: a multiple of 14)", positive=True),
        "scales": _opt([1.0], help="[1.0], or MSeg's multi-scale [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]"),
        "batch_size_val": _opt(1, help="images per inference call (their windows share batches)", positive=True),
        "model_path": _opt(None, "str", help="checkpoint: model_final.pth or an MSeg release"),
        "save_folder": _opt(None, "str", help="results folder (default: <model dir>/<model stem>_eval)"),
        "index_start": _opt(0, help="first list entry evaluated", minimum=0),
        "index_step": _opt(0, help="entries evaluated from index_start (0: to the end)", minimum=0),
        "model_name": _opt(None, "str", help="name shown in result tables (default: model_path's file stem)"),
        "input": _opt(None, "str", help="mseg-demo input: an image, a folder of images, or a video (MSeg: input_file)"),
        "benchmark": _opt(None, "str", help="zero_shot: evaluate benchmark_datasets at benchmark_base_sizes, print MSeg's table", choices=("zero_shot",)),
        "benchmark_datasets": _opt(None, "list", help="datasets of the zero-shot benchmark (default: MSeg's six, in its table order)"),
        "benchmark_base_sizes": _opt([360, 720, 1080], help="the best of these base sizes counts per dataset, as MSeg reports"),
        "flip": _opt(True, help="average with the horizontally flipped pass"),
        "inference_mode": _opt("sliding", help="sliding (windows of test_h x test_w) | whole (one pass per image)", choices=("sliding", "whole")),
        "window_batch": _opt(None, "int", help="forward items per pass: windows and their flips (a window and its flip are two; whole windows per pass); default 16 on CUDA, 8 on CPU", positive=True),
        "fused_postprocess": _opt(False, help="torch.compile the window post-processing (upsample, softmax, flip average, projection): fewer kernels on a GPU; the same labels"),
        "test_precision": _opt(None, "str", help="fp32 | bf16 (autocast, convolution weights cast once); default bf16 on CUDA, fp32 on CPU", choices=("fp32", "bf16")),
        "test_channels_last": _opt(None, "bool", help="NHWC model and windows; default on CUDA, off on CPU"),
        "fold_bn": _opt(True, help="fold BatchNorm into the preceding convolutions for inference (equal up to float rounding)"),
        "test_cuda_graphs": _opt(False, help="replay the forward pass of the fixed-shape window batch as a CUDA graph (sliding mode, CUDA)"),
        "subset_inference": _opt("full", help="when the output taxonomy reads only some model classes: full (every class at full resolution, as MSeg) | exact (those classes only, the softmax normaliser accumulated in chunks: equal up to float rounding, less memory) | fast (normaliser from the 1/4-resolution logits: full-resolution work for those classes only, probabilities lower at class boundaries)", choices=("full", "exact", "fast")),
        "test_device": _opt("auto", help="auto (cuda when available) | cpu | cuda | cuda:N"),
        "model_taxonomy": _opt(None, "str", help="universal | naive | oracle (default: the checkpoint's meta, else universal)", choices=("universal", "naive", "oracle")),
        "output_taxonomy": _opt(None, "str", help="taxonomy predictions are given in: a test or training taxonomy or a user one (default: mseg-demo the model's classes, mseg-test the dataset's evaluation taxonomy)"),
        "uncovered_classes": _opt("drop", help="model classes no output class receives: drop (MSeg: the output classes compete among themselves) | ignore (their summed probability is an 'other' class; where it wins the label is 255)", choices=("drop", "ignore")),
        "save_predictions": _opt(False, help="write predicted label PNGs and colour PNGs"),
        "save_confidence": _opt(False, help="write per-pixel max probability and normalised entropy as 16-bit PNGs (value / 65535)"),
        "save_probabilities": _opt(False, help="write every output class's probability as a compressed .npz (uint16, value / 65535)"),
        "save_figures": _opt(True, help="draw per-class IoU bars, the row-normalised confusion matrix and the zero-shot table as PNGs"),
        "export_format": _opt("onnx", help="mseg-export: onnx | torchscript | both", choices=("onnx", "torchscript", "both")),
        "export_dynamic": _opt(False, help="mseg-export: dynamic batch/height/width instead of 1 x test_h x test_w (not for dinov2 models: their exported graph holds the positional embedding resampled to one size)"),
        "export_opset": _opt(None, "int", help="mseg-export: ONNX opset (default: the exporter's own; 17 or newer)", minimum=17),
        "export_dynamo": _opt(True, help="mseg-export: ONNX through torch.export (false: the older TorchScript-based exporter)"),
    },
    # Options of the baselines (TRAIN.method=mgda / ccsa): mseg_semantic/training/gradients/.
    "MGDA": {
        "normalization": _opt("none", help="none | l2 | loss | loss+: task-gradient normalisation before the min-norm solve (MSeg: none)", choices=("none", "l2", "loss", "loss+")),
        "solver_iters": _opt(1000, help="Frank-Wolfe iterations of the min-norm solver", positive=True),
        "tolerance": _opt(1e-8, help="solver stops when the Frank-Wolfe gap < tolerance x the largest squared task-gradient norm", minimum=0),
        "away_steps": _opt(True, help="Frank-Wolfe with away steps (converges faster); False: the paper's Algorithm 2 exactly"),
    },
    "CCSA": {
        "alpha": _opt(0.25, help="loss = (1 - alpha) x cross-entropy + alpha x contrastive (MSeg: 0.25)", minimum=0, maximum=1),
        "margin": _opt(1.0, help="different-class pairs closer than this are pushed apart", positive=True),
        "num_pairs": _opt(4000, help="pixel pairs per batch (per process)", minimum=0),
        "positive_ratio": _opt(0.25, help="fraction of the pairs that are same-class (MSeg: 1 positive to 3 negatives)", minimum=0, maximum=1),
        "label_downsample": _opt("nearest", help="nearest (MSeg) | mode: labels at the embedding resolution", choices=("nearest", "mode")),
        "normalize_embeddings": _opt(True, help="L2-normalise pixel embeddings before the distance (MSeg: no)"),
    },
}

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _nearest(word: str, candidates: Iterable[str]) -> str:
    hint = did_you_mean(word, candidates, n=3)
    return f" Did you mean {hint[len(' (did you mean '):-2]}?" if hint else ""


def _live_keys() -> list[str]:
    return [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys]


def _resolve_key(name: str, where: str) -> tuple[str, str]:
    """``SECTION.key`` or a unique bare ``key`` -> (section, key) as written: a live key or one of MSeg's spellings."""
    mseg = compat.mseg_key_names()
    if "." in name:
        section, key = name.split(".", 1)
        if section not in SCHEMA:
            raise ConfigError(f"{where}: unknown section {section!r} in {name!r}; valid sections: {', '.join(SCHEMA)}.{_nearest(section, SCHEMA)}")
        if key not in SCHEMA[section] and name not in mseg:
            raise ConfigError(f"{where}: unknown key {name!r}.{_nearest(name, _live_keys())}")
        return section, key
    live = [(s, name) for s, keys in SCHEMA.items() if name in keys]
    owners = live or [tuple(full.split(".", 1)) for full in mseg if full.split(".", 1)[1] == name]
    if not owners:
        bare = {k for keys in SCHEMA.values() for k in keys}
        raise ConfigError(f"{where}: unknown key {name!r}.{_nearest(name, bare)}")
    if len(set(owners)) > 1:
        raise ConfigError(f"{where}: key {name!r} exists in several sections; write one of {', '.join(f'{s}.{name}' for s, _ in owners)}")
    return owners[0]


def canonical_key(name: str) -> tuple[str, str]:
    """``'weight'``, ``'TRAIN.weight'`` or ``'weights'`` -> ``('TRAIN', 'weights')``: where a name lands."""
    section, key = _resolve_key(name, "config")
    translated, _ = compat.translate_config_pairs([((section, key), name, None)], "config")
    return translated[0][0] if translated else (section, key)


def _assign(values: dict[str, dict[str, Any]], pairs: Iterable[tuple[str, Any]], where: str) -> list[str]:
    """Set each ``(name, value)`` in ``values``, validated; returns MSeg's keys that were dropped. Two names for one
    key in one place (an MSeg alias and its name, ``key`` and ``SECTION.key``, a repeated override) are an error."""
    resolved = [(_resolve_key(name, where), name, value) for name, value in pairs]
    try:
        translated, dropped = compat.translate_config_pairs(resolved, where)
    except UserError as exc:
        raise ConfigError(str(exc)) from None
    given: dict[tuple[str, str], str] = {}
    for (section, key), name, value in translated:
        if isinstance(value, compat.MethodOff):
            if values[section][key] in value.methods:
                values[section][key] = "ce"
            continue
        if (section, key) in given:
            raise ConfigError(f"{where}: {given[(section, key)]!r} and {name!r} both set {section}.{key}; keep one")
        given[(section, key)] = name
        label = f"{where}: {section}.{key}"
        option = SCHEMA[section][key]
        value = _coerce(_expand_env(value, label), option, label)
        option.check(value, label)
        values[section][key] = value
    return dropped


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word (a second ``TRAIN:`` would replace the first)."""

    def construct_mapping(self, node, deep=False):
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then an explicit key is an override
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in lines:
                    problem = f"key {key!r} is given twice (lines {lines[key]} and {line})"
                    raise yaml.constructor.ConstructorError(problem=problem)
                lines[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _expand_env(value: Any, where: str) -> Any:
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match) -> str:
        var, fallback = match.group(1), match.group(2)
        if var in os.environ:
            return os.environ[var]
        if fallback is not None:
            return fallback
        raise ConfigError(f"{where}: environment variable {var} is not set (write ${{{var}:-default}} for a fallback)")

    return _ENV_PATTERN.sub(substitute, value)


def _coerce(value: Any, option: Option, where: str) -> Any:
    """Check ``value`` against ``option`` and convert the harmless cases (int for float, '1e6' for int)."""
    means_unset = compat.is_mseg_unset(value) and (option.optional or "str" not in option.kinds)
    if value is None or means_unset:
        # MSeg writes an empty value for "not set": an unset required key keeps its default.
        return None if option.optional else option.default
    for kind in option.kinds:
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "bool" and isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        if kind == "int" and not isinstance(value, bool):
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    pass
                else:
                    if number.is_integer():
                        return int(number)
        if kind == "float" and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        if kind == "str" and isinstance(value, str):
            return value
        if kind == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if kind == "list" and isinstance(value, (list, tuple)):
            return list(value)
        if kind == "dict" and isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{where}: expected {' or '.join(option.kinds)}, got {type(value).__name__} {value!r}")


class Section(Mapping[str, Any]):
    """Read-only view of one section with attribute access."""

    def __init__(self, name: str, values: dict[str, Any]):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config section {self._name} has no key {key!r}.{_nearest(key, self._values)}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("configs are read-only; use Config.updated(...)")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name}, {self._values!r})"


class Config(Mapping[str, Section]):
    """A validated config: ``cfg.TRAIN.batch_size``. Immutable; :meth:`updated` returns a changed copy."""

    def __init__(self, values: dict[str, dict[str, Any]], stages: list[dict[str, Any]], overrides: Sequence[str], source: str | None,
                 dropped_mseg_keys: Sequence[str] = ()):
        self._values = values
        self.stages = stages
        self.overrides = list(overrides)
        self.source = source
        self.dropped_mseg_keys = list(dict.fromkeys(dropped_mseg_keys))  # MSeg's keys that mean nothing here

    def __getattr__(self, name: str) -> Section:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return Section(name, self._values[name])
        except KeyError:
            raise AttributeError(f"config has no section {name!r}; sections: {', '.join(self._values)}") from None

    def __getitem__(self, name: str) -> Section:
        return Section(name, self._values[name])

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def get(self, dotted: str, default: Any = None) -> Any:  # type: ignore[override]
        section, key = canonical_key(dotted)
        return self._values[section].get(key, default)

    def updated(self, assignments: Mapping[str, Any] | Iterable[tuple[str, Any]], where: str = "update") -> "Config":
        """Copy with ``{'SECTION.key' or 'key': value}`` (or ``(name, value)`` pairs) applied and validated."""
        values = {s: dict(v) for s, v in self._values.items()}
        dropped = _assign(values, assignments.items() if isinstance(assignments, Mapping) else assignments, where)
        return Config(values, self.stages, self.overrides, self.source, self.dropped_mseg_keys + dropped)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {s: dict(v) for s, v in self._values.items()}
        if self.stages:
            out["STAGES"] = [dict(s) for s in self.stages]
        return out

    def to_yaml(self) -> str:
        """The resolved config as YAML, headed by a comment naming its source and overrides."""
        text = f"# resolved config; source: {self.source}; overrides: {' '.join(self.overrides) or '(none)'}\n"
        return text + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved config as YAML, atomically."""
        return atomic_write_text(path, self.to_yaml())

    def __repr__(self) -> str:
        return f"Config(source={self.source!r}, overrides={self.overrides!r})"


def parse_override(text: str) -> tuple[str, Any]:
    """``'TRAIN.max_iters=10'`` -> ``('TRAIN.max_iters', 10)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. max_iters=100 or TRAIN.batch_size=8)")
    name, raw = text.split("=", 1)
    name = name.strip().lstrip("-")
    if not name:
        raise ConfigError(f"override {text!r}: the key is empty")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return name, value


STAGE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")  # one plain folder under output_dir


def _validate_stages(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: STAGES must be a list of {{name: ..., overrides: {{...}}}}")
    stages, seen = [], set()
    for i, stage in enumerate(raw):
        if not isinstance(stage, dict) or "name" not in stage:
            raise ConfigError(f"{where}: STAGES[{i}] needs a 'name' (and optional 'overrides' mapping)")
        extra = set(stage) - {"name", "overrides"}
        if extra:
            raise ConfigError(f"{where}: STAGES[{i}] has unknown fields {sorted(extra)}; valid: name, overrides")
        name = str(stage["name"])
        if not STAGE_NAME.fullmatch(name) or ".." in name:
            raise ConfigError(f"{where}: STAGES[{i}] name {name!r} is not a folder name: each stage writes into "
                              f"<output_dir>/<name>/, so use letters, digits, '_', '-' and '.' (not first), "
                              f"without '/' or '..', e.g. 'pretrain'")
        if name in seen:
            raise ConfigError(f"{where}: stage name {name!r} appears twice")
        seen.add(name)
        overrides = stage.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: STAGES[{i}] ({name}) overrides must be a mapping of key: value")
        stages.append({"name": name, "overrides": {str(k): v for k, v in overrides.items()}})
    return stages


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides, validated against :data:`SCHEMA`."""
    values: dict[str, dict[str, Any]] = {s: {k: o.default for k, o in keys.items()} for s, keys in SCHEMA.items()}
    for section, keys in values.items():  # defaults may read the environment (data_root: $MSEG_DATA_ROOT)
        for key, value in keys.items():
            label = f"defaults: {section}.{key}"
            keys[key] = _coerce(_expand_env(value, label), SCHEMA[section][key], label)
    stages: list[dict[str, Any]] = []
    from_file: list[tuple[str, Any]] = []
    where = str(path) if path is not None else "defaults"
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory; give a YAML file, e.g. config/train/demo.yaml")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = _load_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(str(not_utf8_error(path, exc, "a YAML config"))) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(SCHEMA)})")
        for section, keys in data.items():
            if section == "STAGES":
                stages = _validate_stages(keys, where)
                continue
            if section not in SCHEMA:
                raise ConfigError(f"{path}: unknown section {section!r}; valid: {', '.join(SCHEMA)}, STAGES.{_nearest(str(section), list(SCHEMA) + ['STAGES'])}")
            if keys is None:
                continue
            if not isinstance(keys, dict):
                raise ConfigError(f"{path}: section {section} must be a mapping of key: value")
            from_file += [(f"{section}.{key}", value) for key, value in keys.items()]
    dropped = _assign(values, from_file, where)
    cfg = Config(values, stages, list(overrides), where, dropped)
    for stage in stages:  # fail now, not when the stage starts
        _check_together(cfg.updated(stage["overrides"], where=f"{where}: stage {stage['name']}"), f"{where}: stage {stage['name']}")
    cfg = cfg.updated([parse_override(o) for o in overrides], where="command line")
    _check_together(cfg, where if not overrides else f"{where} + command line")
    return cfg


# The release, test and demo configs ship inside the package (in a checkout: a link to the repository's config/).
PACKAGED_CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_INFERENCE_CONFIG = "test/default_config_360_ss"  # mseg-test, mseg-demo, mseg-export and Segmenter without one


def packaged_configs() -> dict[str, Path]:
    """Every shipped YAML config by name: its path under the config folder without ``.yaml``, e.g.
    ``test/default_config_360_ss`` or ``train/480_release/mseg-3m``."""
    if not PACKAGED_CONFIG_DIR.is_dir():
        return {}
    return {p.relative_to(PACKAGED_CONFIG_DIR).with_suffix("").as_posix(): p for p in sorted(PACKAGED_CONFIG_DIR.rglob("*.yaml"))}


def config_summary(path: Path, width: int = 100) -> str:
    """A packaged config's first comment line (what it is for), at most ``width`` characters."""
    first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "")
    text = first.lstrip("#").strip().rstrip(",:;") if first.startswith("#") else ""
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def find_config(name: str | os.PathLike, kind: str | None = None) -> Path:
    """The config file ``name`` names: a file as given, else a packaged config. A packaged name is the path under
    the config folder without ``.yaml`` (``test/default_config_360_ss``), or its end when that is unique
    (``default_config_360_ss``, ``480_release/mseg-3m``); ``kind`` (``test`` | ``train``) picks the tool's folder first
    (``demo`` is ``train/demo`` for mseg-train, ``test/demo`` for the others). The repository's paths
    (``config/test/...``) name the packaged files from any directory."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = packaged_configs()
    key = str(name).replace("\\", "/").removeprefix("./").removeprefix("config/")
    key = key[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else key
    for candidate in ([f"{kind}/{key}"] if kind else []) + [key]:
        if candidate in shipped:
            return shipped[candidate]
    ends = [n for n in shipped if n.endswith("/" + key)]
    preferred = [n for n in ends if kind and n.startswith(kind + "/")] or ends
    if len(preferred) == 1:
        return shipped[preferred[0]]
    if path.exists():
        return path  # a directory: load_config says so
    if len(preferred) > 1:
        raise ConfigError(f"config {str(name)!r} names several packaged configs ({', '.join(preferred)}); give one of them")
    raise ConfigError(f"config file {name} does not exist, and no packaged config is named {key!r}"
                      f"{did_you_mean(key, [*shipped, *(n.split('/', 1)[1] for n in shipped)])}; --list-configs lists them")


def _check_together(cfg: Config, where: str) -> None:
    """Checks that involve several keys (each key alone was checked when it was set)."""
    train = cfg.TRAIN
    if train.scale_min > train.scale_max:
        raise ConfigError(f"{where}: TRAIN.scale_min={train.scale_min} > TRAIN.scale_max={train.scale_max}; the random scale is drawn from [scale_min, scale_max]")
    if train.rotate_min > train.rotate_max:
        raise ConfigError(f"{where}: TRAIN.rotate_min={train.rotate_min} > TRAIN.rotate_max={train.rotate_max}")
    weights = cfg.DATA.sampling_weights
    if weights is not None:
        bad = {k: v for k, v in weights.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0}
        if bad or not any(v > 0 for v in weights.values()):
            raise ConfigError(f"{where}: DATA.sampling_weights={weights!r}: every weight must be a finite number >= 0 and one must be > 0")
    unknown = [name for name in train.loggers if name not in TRACKING_SINKS]
    if unknown:
        raise ConfigError(f"{where}: TRAIN.loggers: unknown logger {unknown[0]!r}{did_you_mean(str(unknown[0]), TRACKING_SINKS)}; valid: {', '.join(TRACKING_SINKS)}")
    betas = train.betas_adamw
    if len(betas) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1 for b in betas):
        raise ConfigError(f"{where}: TRAIN.betas_adamw={betas!r}: expected two numbers in [0, 1), e.g. [0.9, 0.999]")
    for key in ("scales", "benchmark_base_sizes"):
        values = cfg.TEST[key]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in values):
            raise ConfigError(f"{where}: TEST.{key}={values!r}: expected a non-empty list of positive numbers")


def translate_saved_config(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config a checkpoint recorded, possibly by an older version, in today's keys (what
    :mod:`mseg_semantic.compat` translates for files, e.g. the old method switches -> ``TRAIN.method``)."""
    pairs = [((section, key), f"{section}.{key}", value) for section, keys in saved.items() if section != "STAGES"
             and isinstance(keys, Mapping) for key, value in keys.items()]
    translated, _ = compat.translate_config_pairs(pairs, "checkpoint config")
    out: dict[str, Any] = {section: {} for section, keys in saved.items() if section != "STAGES"}
    for (section, key), _, value in translated:
        out.setdefault(section, {})[key] = "ce" if isinstance(value, compat.MethodOff) else value
    if "STAGES" in saved:
        out["STAGES"] = saved["STAGES"]
    return out


def stage_names(cfg: Config) -> list[str]:
    return [s["name"] for s in cfg.stages]


def apply_stage(cfg: Config, name: str) -> Config:
    """The config of one stage: file values <- the stage's overrides <- the command-line overrides."""
    for stage in cfg.stages:
        if stage["name"] == name:
            staged = cfg.updated(stage["overrides"], where=f"stage {name}")
            staged = staged.updated([parse_override(o) for o in cfg.overrides], where="command line")
            staged = staged.updated({"TRAIN.stage": name})
            _check_together(staged, f"stage {name}")
            return staged
    raise ConfigError(f"unknown stage {name!r}; this config defines: {', '.join(stage_names(cfg)) or '(no stages)'}.{_nearest(name, stage_names(cfg))}")


def schema_markdown() -> str:
    """Every config key as Markdown tables, one per section (docs/config.md's key reference is generated from it)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines += [f"**{section}**", "", "| key | default | meaning |", "| --- | --- | --- |"]
        for key, option in keys.items():
            aliases = [a for (s, a), (cs, ck) in compat.RENAMED_KEYS.items() if cs == section and ck == key]
            if (section, key) == compat.PRECISION_KEY:
                aliases.append("Distributed.opt_level (O0..O3)")
            if (section, key) == compat.METHOD_KEY:
                aliases += [f"{s}.{k}: True" for s, k in compat.METHOD_SWITCHES]
            name = f"`{key}`" + (f" (MSeg: `{'`, `'.join(aliases)}`)" if aliases else "")
            default = "null" if option.default is None else yaml.safe_dump(option.default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"| {name} | `{default}` | {option.help.replace('|', '/')} |")
        lines.append("")
    lines += ["**MSeg's keys that mean nothing here** (accepted in MSeg's files and dropped; the run logs them)", "",
              "| key | why |", "| --- | --- |"]
    lines += [f"| `{section}.{key}` | {why} |" for section, keys in compat.DROPPED_KEYS.items() for key, why in keys.items()]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(schema_markdown(), end="")
