"""YAML configs with typed ``key=value`` overrides.

A config is a set of sections (``DATA``, ``TRAIN``, ``Distributed``, ``TEST``, ...) laid out as in MSeg's
release files, so MSeg's YAML files load unchanged. Every key is declared in ``SCHEMA`` with its default
and type; an unknown key or a value of the wrong type is a :class:`ConfigError` that names the key and
suggests the nearest valid one.

Overrides are ``SECTION.key=value`` or a bare ``key=value`` when the key exists in exactly one section.
Values are parsed as YAML (``max_iters=100``, ``dataset=[a,b]``, ``resume=null``).

Optional ``STAGES`` list named stages, each with overrides of its own (see :func:`apply_stage`).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from mseg_semantic.atomic import atomic_write_text
from mseg_semantic.errors import UserError

__all__ = [
    "SCHEMA",
    "ALIASES",
    "Config",
    "ConfigError",
    "Option",
    "apply_stage",
    "canonical_key",
    "load_config",
    "parse_override",
    "stage_names",
]


class ConfigError(UserError):
    """A config file or override is invalid; the message names the key and what would be valid."""


@dataclass(frozen=True)
class Option:
    default: Any
    kinds: tuple[str, ...]  # any of: int float bool str list dict
    optional: bool
    help: str = ""


def _opt(default: Any, kind: str | tuple[str, ...] | None = None, optional: bool | None = None, help: str = "") -> Option:
    if kind is None:
        if default is None:
            raise AssertionError("an option with default None needs an explicit kind")
        kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}[type(default)]
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    return Option(default, kinds, default is None if optional is None else optional, help)


# The schema follows MSeg's section layout. Keys marked "MSeg compatibility" are accepted so MSeg's
# files load, and documented in the README as unused where they are.
SCHEMA: dict[str, dict[str, Option]] = {
    "DATA": {
        "dataset": _opt(None, ("list", "str"), help="training datasets (taxonomy names), or one name"),
        "universal": _opt(True, help="train in the universal taxonomy (False: the dataset's own = oracle)"),
        "use_mgda": _opt(False, help="train with the MGDA multi-task baseline"),
        "finetune": _opt(False, help="MSeg compatibility"),
        "version": _opt(None, ("float", "str"), help="MSeg compatibility (MSeg's test configs carry a format version)"),
        "data_root": _opt("${MSEG_DATA_ROOT:-}", help="common root of all datasets"),
        "dataset_roots": _opt({}, help="per-dataset root overrides: name -> dir (relative to data_root or absolute)"),
        "dataset_lists": _opt({}, help="per-dataset list overrides: name -> {split: list file}"),
        "sampling_weights": _opt(None, "dict", help="name -> relative sampling weight (default: uniform)"),
        "on_bad_sample": _opt("error", help="error | skip: what to do with a missing or corrupt file"),
        "unknown_label": _opt("error", help="error | ignore: label ids outside a dataset's taxonomy"),
        "generate_demo_world": _opt(False, help="write the synthetic demo world to data_root first when missing"),
    },
    "TRAIN": {
        "exp_id": _opt("default", help="experiment name, part of the default output_dir"),
        "output_dir": _opt(None, "str", help="default output/<date>_<exp_id>"),
        "model": _opt("hrnet_w48", help="hrnet_w48 (MSeg), hrnet_w32, hrnet_w18, hrnet_w18_small, hrnet_tiny (tests and CPU demos)"),
        "use_naive_taxonomy": _opt(False, help="train in the naive 316-logit taxonomy"),
        "arch": _opt("hrnet", help="MSeg compatibility"),
        "network_name": _opt(None, "str", help="MSeg compatibility"),
        "layers": _opt(None, "int", help="MSeg compatibility"),
        "sync_bn": _opt(True, help="SyncBatchNorm when distributed on GPUs"),
        "freeze_bn": _opt(False, help="keep BatchNorm layers in eval mode (frozen running statistics), e.g. for fine-tuning with small batches"),
        "train_h": _opt(713, help="crop height"),
        "train_w": _opt(713, help="crop width"),
        "scale_min": _opt(0.5, help="random scale range (after the short-side resize)"),
        "scale_max": _opt(2.0, help="random scale range"),
        "short_size": _opt(1080, help="short side images are resized to before augmentation"),
        "rotate_min": _opt(-10.0, "float", help="random rotation range, degrees"),
        "rotate_max": _opt(10.0, "float", help="random rotation range, degrees"),
        "blur_prob": _opt(0.5, help="probability of the Gaussian blur"),
        "flip_prob": _opt(0.5, help="probability of the horizontal flip"),
        "rotate_prob": _opt(0.5, help="probability of the rotation"),
        "zoom_factor": _opt(8, help="MSeg compatibility"),
        "ignore_label": _opt(255, help="label id the loss ignores"),
        "aux_weight": _opt(0.4, help="MSeg compatibility (HRNet has no auxiliary head)"),
        "num_examples": _opt(1000000, help="crops per dataset; sets max_iters"),
        "max_iters": _opt(None, "int", help="overrides the count derived from num_examples"),
        "train_gpu": _opt([0], help="MSeg compatibility; choose GPUs with CUDA_VISIBLE_DEVICES and torchrun --nproc_per_node"),
        "dataset_gpu_mapping": _opt(None, "dict", help="MSeg's mode: dataset -> ranks, one process per listed rank; null (default): every batch mixes all datasets, on any number of processes"),
        "workers": _opt(4, help="data loader worker processes per node, split over its ranks (MSeg's meaning); 0: load in the training process"),
        "batch_size": _opt(14, help="global batch size over all ranks"),
        "batch_size_val": _opt(1, help="MSeg compatibility (TEST.batch_size_val is used)"),
        "base_lr": _opt(0.01, help="SGD learning rate at iteration 0 (poly schedule)"),
        "epochs": _opt(10, help="MSeg compatibility"),
        "start_epoch": _opt(0, help="MSeg compatibility"),
        "power": _opt(0.9, help="poly schedule: lr = base_lr (1 - it / max_iters) ** power"),
        "momentum": _opt(0.9, help="SGD momentum"),
        "weight_decay": _opt(0.0001, help="SGD weight decay"),
        "grad_clip": _opt(None, "float", help="max gradient norm (default: no clipping)"),
        "seed": _opt(0, help="initial weights and the data stream (batch b depends on seed and b only)"),
        "precision": _opt(None, "str", help="fp32 | bf16 | fp16 (default: from opt_level)"),
        "channels_last": _opt(False, help="NHWC memory format for model and images"),
        "print_freq": _opt(10, help="iterations between log lines"),
        "save_freq": _opt(1, help="MSeg compatibility"),
        "checkpoint_every": _opt(1000, help="iterations between training checkpoints (and one after the last)"),
        "keep_checkpoints": _opt(3, help="iter_*.pth checkpoints kept"),
        "weights": _opt(None, "str", help="fine-tune: model weights only, from a file or a released name (mseg-weights list)"),
        "reinit_head": _opt(False, help="with weights: re-initialise the classifier on a class-count mismatch"),
        "resume": _opt(None, "str", help="checkpoint to resume from (default: newest in output_dir)"),
        "auto_resume": _opt(True, help="resume from output_dir/checkpoints when present"),
        "evaluate": _opt(False, help="MSeg compatibility"),
        "stage": _opt(None, "str", help="stage to run (default: all, in order)"),
        "tensorboard": _opt(True, help="tensorboard scalars under output_dir/tensorboard"),
        "precise_bn_iters": _opt(0, help="after training, re-estimate BatchNorm running statistics as the plain mean over this many training batches (0: off, as MSeg); for short runs, where BN momentum 0.01 leaves them stale"),
        "cpu_threads": _opt(None, "int", help="PyTorch intra-op threads on CPU (default: PyTorch's choice); 1 avoids thread contention on a busy machine"),
    },
    "Distributed": {
        "dist_url": _opt("env://", help="MSeg compatibility; torchrun sets the rendezvous"),
        "dist_backend": _opt(None, "str", help="default nccl on GPUs, gloo on CPUs"),
        "multiprocessing_distributed": _opt(True, help="MSeg compatibility"),
        "world_size": _opt(1, help="MSeg compatibility; torchrun sets it"),
        "rank": _opt(0, help="MSeg compatibility; torchrun sets it"),
        "use_apex": _opt(False, help="MSeg compatibility; native AMP is used"),
        "opt_level": _opt("O0", help="MSeg's apex level, mapped onto precision: O0 fp32, O1/O2 fp16 autocast, O3 fp16"),
        "keep_batchnorm_fp32": _opt(None, ("bool", "str"), help="MSeg compatibility"),
        "loss_scale": _opt(None, ("float", "str"), help="MSeg compatibility"),
    },
    "TEST": {
        "split": _opt("val", help="list evaluated (MSeg evaluates val, the test datasets too)"),
        "base_size": _opt(None, "int", help="short side the image is resized to before inference"),
        "test_h": _opt(713, help="sliding-window height"),
        "test_w": _opt(713, help="sliding-window width"),
        "scales": _opt([1.0], help="[1.0], or MSeg's multi-scale [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]"),
        "batch_size_val": _opt(1, help="images per inference call (their windows share batches)"),
        "model_path": _opt(None, "str", help="checkpoint: model_final.pth or an MSeg release"),
        "save_folder": _opt(None, "str", help="results folder (default: <model dir>/<model stem>_eval)"),
        "vis_freq": _opt(20, help="MSeg compatibility"),
        "img_name_unique": _opt(False, help="MSeg compatibility"),
        "small": _opt(True, help="MSeg compatibility"),
        "native_img_h": _opt(-1, help="MSeg compatibility"),
        "native_img_w": _opt(-1, help="MSeg compatibility"),
        "has_prediction": _opt(False, help="MSeg compatibility"),
        "index_start": _opt(0, help="first list entry evaluated"),
        "index_step": _opt(0, help="entries evaluated from index_start (0: to the end)"),
        "test_gpu": _opt([0], help="MSeg compatibility"),
        "model_name": _opt(None, "str", help="name shown in result tables (default: model_path's file stem)"),
        "input_file": _opt(None, "str", help="MSeg's name for TEST.input"),
        # evaluation / demo / export (this project)
        "input": _opt(None, "str", help="mseg-demo input: an image, a folder of images, or a video"),
        "benchmark": _opt(None, "str", help="zero_shot: evaluate benchmark_datasets at benchmark_base_sizes, print MSeg's table"),
        "benchmark_datasets": _opt(["voc2012", "pascal-context-60", "camvid-11", "wilddash-19", "kitti-19", "scannet-20"], help="datasets of the zero-shot benchmark, in table order"),
        "benchmark_base_sizes": _opt([360, 720, 1080], help="the best of these base sizes counts per dataset, as MSeg reports"),
        "flip": _opt(True, help="average with the horizontally flipped pass"),
        "inference_mode": _opt("sliding", help="sliding (windows of test_h x test_w) | whole (one pass per image)"),
        "window_batch": _opt(8, help="windows (and flipped windows) per forward pass"),
        "test_precision": _opt("fp32", help="fp32 | bf16 (autocast; for CUDA)"),
        "test_device": _opt("auto", help="auto (cuda when available) | cpu | cuda | cuda:N"),
        "model_taxonomy": _opt(None, "str", help="universal | naive | oracle (default: the checkpoint's meta, else universal)"),
        "output_taxonomy": _opt(None, "str", help="mseg-demo: a dataset taxonomy to project into (default: the model's classes)"),
        "save_predictions": _opt(False, help="write predicted label PNGs and colour PNGs"),
        "export_format": _opt("onnx", help="mseg-export: onnx | torchscript | both"),
        "export_dynamic": _opt(False, help="mseg-export: dynamic batch/height/width instead of 1 x test_h x test_w"),
        "export_opset": _opt(None, "int", help="mseg-export: ONNX opset (default: the exporter's own)"),
        "export_dynamo": _opt(True, help="mseg-export: ONNX through torch.export (false: the older TorchScript-based exporter)"),
    },
    # Baselines (this project; switched on by DATA.use_mgda / CCSA.use_ccsa). See mseg_semantic/baselines/.
    "MGDA": {
        "normalization": _opt("none", help="none | l2 | loss | loss+: task-gradient normalisation before the min-norm solve (MSeg: none)"),
        "solver_iters": _opt(1000, help="Frank-Wolfe iterations of the min-norm solver"),
        "tolerance": _opt(1e-8, help="solver stops when the Frank-Wolfe gap < tolerance x the largest squared task-gradient norm"),
        "away_steps": _opt(True, help="Frank-Wolfe with away steps (converges faster); False: the paper's Algorithm 2 exactly"),
    },
    "CCSA": {
        "use_ccsa": _opt(False, help="train with the CCSA domain-generalization baseline"),
        "alpha": _opt(0.25, help="loss = (1 - alpha) x cross-entropy + alpha x contrastive (MSeg: 0.25)"),
        "margin": _opt(1.0, help="different-class pairs closer than this are pushed apart"),
        "num_pairs": _opt(4000, help="pixel pairs per batch (per process)"),
        "positive_ratio": _opt(0.25, help="fraction of the pairs that are same-class (MSeg: 1 positive to 3 negatives)"),
        "label_downsample": _opt("nearest", help="nearest (MSeg) | mode: labels at the embedding resolution"),
        "normalize_embeddings": _opt(True, help="L2-normalise pixel embeddings before the distance (MSeg: no)"),
    },
}

# MSeg's key -> this project's key. The alias is accepted in files and overrides and written back
# under the canonical name.
ALIASES: dict[tuple[str, str], tuple[str, str]] = {
    ("TRAIN", "weight"): ("TRAIN", "weights"),
    ("TRAIN", "manual_seed"): ("TRAIN", "seed"),
    ("TRAIN", "save_path"): ("TRAIN", "output_dir"),
}

# Values MSeg writes for "unset"; only meaningful for optional keys.
_NONE_STRINGS = {"None", "none", "default", ""}

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _nearest(word: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def _all_keys(schema: Mapping[str, Mapping[str, Option]]) -> list[str]:
    return [f"{s}.{k}" for s, keys in schema.items() for k in keys] + [f"{s}.{k}" for s, k in ALIASES]


def _resolve_key(name: str, schema: Mapping[str, Mapping[str, Option]], where: str) -> tuple[str, str]:
    """``SECTION.key`` or a unique bare ``key`` -> (section, canonical key)."""
    if "." in name:
        section, key = name.split(".", 1)
        if section not in schema:
            raise ConfigError(f"{where}: unknown section {section!r} in {name!r}; valid sections: {', '.join(schema)}.{_nearest(section, schema)}")
        if (section, key) in ALIASES:
            return ALIASES[(section, key)]
        if key not in schema[section]:
            raise ConfigError(f"{where}: unknown key {name!r}.{_nearest(name, _all_keys(schema))}")
        return section, key
    owners = [(s, name) for s, keys in schema.items() if name in keys]
    owners += [canonical for (_, alias), canonical in ALIASES.items() if alias == name]
    if not owners:
        bare = {k for keys in schema.values() for k in keys} | {k for _, k in ALIASES}
        raise ConfigError(f"{where}: unknown key {name!r}.{_nearest(name, bare)}")
    if len(set(owners)) > 1:
        raise ConfigError(f"{where}: key {name!r} exists in several sections; write one of {', '.join(f'{s}.{name}' for s, _ in owners)}")
    return owners[0]


def canonical_key(name: str) -> tuple[str, str]:
    """``'weight'``, ``'TRAIN.weight'`` or ``'weights'`` -> ``('TRAIN', 'weights')``: where a name lands, aliases resolved."""
    return _resolve_key(name, SCHEMA, "config")


def _assign(values: dict[str, dict[str, Any]], pairs: Iterable[tuple[str, Any]], where: str) -> None:
    """Set each ``(name, value)`` in ``values``, validated. Two names for one key in one place (an MSeg alias and
    its canonical name, ``key`` and ``SECTION.key``, or a repeated override) are an error, not "the last wins"."""
    given: dict[tuple[str, str], str] = {}
    for name, value in pairs:
        section, key = _resolve_key(name, SCHEMA, where)
        if (section, key) in given:
            raise ConfigError(f"{where}: {given[(section, key)]!r} and {name!r} both set {section}.{key}; keep one")
        given[(section, key)] = name
        label = f"{where}: {section}.{key}"
        values[section][key] = _coerce(_expand_env(value, label), SCHEMA[section][key], label)


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
    means_unset = isinstance(value, str) and value in _NONE_STRINGS and (option.optional or "str" not in option.kinds)
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

    def __init__(self, values: dict[str, dict[str, Any]], stages: list[dict[str, Any]], overrides: Sequence[str], source: str | None):
        self._values = values
        self.stages = stages
        self.overrides = list(overrides)
        self.source = source

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
        section, key = _resolve_key(dotted, SCHEMA, "config")
        return self._values[section].get(key, default)

    def updated(self, assignments: Mapping[str, Any] | Iterable[tuple[str, Any]], where: str = "update") -> "Config":
        """Copy with ``{'SECTION.key' or 'key': value}`` (or ``(name, value)`` pairs) applied and validated."""
        values = {s: dict(v) for s, v in self._values.items()}
        _assign(values, assignments.items() if isinstance(assignments, Mapping) else assignments, where)
        return Config(values, self.stages, self.overrides, self.source)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {s: dict(v) for s, v in self._values.items()}
        if self.stages:
            out["STAGES"] = [dict(s) for s in self.stages]
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved config as YAML, atomically."""
        text = f"# resolved config; source: {self.source}; overrides: {' '.join(self.overrides) or '(none)'}\n"
        text += yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        return atomic_write_text(path, text)

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
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = _load_yaml(path.read_text()) or {}
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
    _assign(values, from_file, where)
    cfg = Config(values, stages, list(overrides), where)
    for stage in stages:  # fail now, not when the stage starts
        cfg.updated(stage["overrides"], where=f"{where}: stage {stage['name']}")
    return cfg.updated([parse_override(o) for o in overrides], where="command line")


def stage_names(cfg: Config) -> list[str]:
    return [s["name"] for s in cfg.stages]


def apply_stage(cfg: Config, name: str) -> Config:
    """The config of one stage: file values <- the stage's overrides <- the command-line overrides."""
    for stage in cfg.stages:
        if stage["name"] == name:
            staged = cfg.updated(stage["overrides"], where=f"stage {name}")
            staged = staged.updated([parse_override(o) for o in cfg.overrides], where="command line")
            return staged.updated({"TRAIN.stage": name})
    raise ConfigError(f"unknown stage {name!r}; this config defines: {', '.join(stage_names(cfg)) or '(no stages)'}.{_nearest(name, stage_names(cfg))}")


def schema_markdown() -> str:
    """Every config key as Markdown tables, one per section (the README's key reference is generated from it)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines += [f"**{section}**", "", "| key | default | meaning |", "| --- | --- | --- |"]
        for key, option in keys.items():
            aliases = [a for (s, a), (cs, ck) in ALIASES.items() if cs == section and ck == key]
            name = f"`{key}`" + (f" (MSeg: `{'`, `'.join(aliases)}`)" if aliases else "")
            default = "null" if option.default is None else yaml.safe_dump(option.default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"| {name} | `{default}` | {option.help.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(schema_markdown(), end="")
