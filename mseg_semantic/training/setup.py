"""What a training config means, resolved once per stage with every refusal, and the parts a stage trains with.

:func:`resolve_run` says what a config means on ``world_size`` processes (its Catalog, datasets, label space and
converter, batch split, iterations, method and loss) without side effects, refusing a config that cannot run with
one line naming the key; :func:`plan_run` does it for every stage the command will train, before any process
group, directory or download. :func:`accept_resume` decides what a resume may change. :func:`build_stage` builds
the model, optimizer, schedule, loader and backward step of a resolved stage.

Resuming with a changed config: the keys in :data:`FIXED_ON_RESUME` define what the checkpoint is and a change
stops the run (exit 2, naming the key, the saved and the new value); the keys in :data:`UNUSED_ON_RESUME` only
matter for a fresh start and keep their saved values; every other change takes effect from the resumed
iteration on, and the log lists it.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mseg_semantic.config import SCHEMA, Config, ConfigError, apply_stage, stage_names, translate_saved_config
from mseg_semantic.data import build_train_loader, check_dataset_gpu_mapping
from mseg_semantic.distributed import DistInfo, per_rank_batch_size
from mseg_semantic.errors import UnknownNameError, did_you_mean
from mseg_semantic.model import DINOV2_SPECS, MODEL_NAMES, autocast_context, build_model, load_weights, set_backbone_mode
from mseg_semantic.model.weights import resolve_weights
from mseg_semantic.taxonomy import Catalog, build_taxonomy_converter
from mseg_semantic.training.checkpoint import TrainingParts
from mseg_semantic.training.gradients import LOSSES, METHODS, BackwardStep, StepContext, backward_step_for, check_capabilities, pixel_loss_for
from mseg_semantic.training.optim import PolyLR, build_optimizer, derive_max_iters, make_grad_scaler, parameter_groups
from mseg_semantic.training.speed import compile_loss_head, compile_regions, inductor_cache_dir

log = logging.getLogger("mseg_semantic.training")

__all__ = ["FIXED_ON_RESUME", "RunSetup", "StageRun", "accept_resume", "build_stage", "check_run", "plan_run", "resolve_run"]

# What a checkpoint is: changing these on resume would continue another run's state under this one's name.
FIXED_ON_RESUME = (
    "DATA.dataset", "DATA.universal", "DATA.sampling_weights", "DATA.taxonomy_files", "TRAIN.model", "TRAIN.use_naive_taxonomy",
    "TRAIN.seed", "TRAIN.batch_size", "TRAIN.dataset_gpu_mapping", "TRAIN.stage", "TRAIN.method",
    "TRAIN.backbone_mode", "TRAIN.lora_rank", "TRAIN.optimizer",  # the trained parameters and the optimizer state's layout
    # the data stream: batch b is a function of (seed, b) only under the sampling the run started with
    "DATA.rare_class_sampling", "DATA.rare_class_temperature", "DATA.rare_class_min_pixels",
)
# Used to initialise a fresh run only: a resumed run keeps the values it started with.
UNUSED_ON_RESUME = ("TRAIN.weights", "TRAIN.reinit_head")
# Where the run is, not what it does.
NOT_COMPARED = ("TRAIN.output_dir", "TRAIN.resume", "TRAIN.auto_resume")


@dataclass(frozen=True)
class RunSetup:
    """What a config means for one run on ``world_size`` processes (no side effects: testable alone)."""

    datasets: list[str]
    model_taxonomy: str  # universal | naive | oracle
    converter: Any  # the taxonomy converter of the model's label space
    precision: str
    batch_size: int  # global
    batch_per_rank: int
    max_iters: int
    workers_per_rank: int
    dataset_gpu_mapping: dict | None
    method: str  # a key of gradients.METHODS
    loss: str = "ce"  # a key of gradients.LOSSES (partial_label: the converter writes label-set codes)
    catalog: Catalog | None = None  # the run's taxonomies and datasets, and where its data is


def training_datasets(cfg: Config, catalog: Catalog) -> list[str]:
    value = cfg.DATA.dataset
    names = [value] if isinstance(value, str) else list(value or [])
    if not names:
        raise ConfigError("DATA.dataset is empty: name the training dataset(s), e.g. dataset=[ade20k-150,bdd] or dataset=ade20k-150")
    if "single" in names:
        raise ConfigError("DATA.dataset is MSeg's placeholder 'single': name the dataset on the command line, e.g. dataset=ade20k-150")
    known = catalog.taxonomy_names()
    trainable = catalog.taxonomy_names(role="train")
    for name in map(str, names):
        if name not in known:
            raise UnknownNameError(f"DATA.dataset: unknown dataset {name!r}{did_you_mean(name, trainable)}; training datasets: {', '.join(trainable)}")
    return [str(n) for n in names]


def model_taxonomy_of(cfg: Config, datasets: list[str]) -> str:
    if not cfg.DATA.universal:
        if cfg.TRAIN.use_naive_taxonomy:
            raise ConfigError("DATA.universal=False (oracle: the dataset's own classes) contradicts TRAIN.use_naive_taxonomy=True")
        if len(datasets) != 1:
            raise ConfigError(f"DATA.universal=False trains one dataset in its own taxonomy (an oracle); got {len(datasets)} datasets: {', '.join(datasets)}")
        return "oracle"
    return "naive" if cfg.TRAIN.use_naive_taxonomy else "universal"


def resolve_run(cfg: Config, world_size: int = 1, local_world_size: int | None = None) -> RunSetup:
    """Check the config against the datasets, the model names, the method table and the process count; raises
    ConfigError naming the key."""
    catalog = Catalog.from_config(cfg)
    datasets = training_datasets(cfg, catalog)
    train = cfg.TRAIN
    if train.model not in MODEL_NAMES:
        raise UnknownNameError(f"TRAIN.model={train.model!r} is not a model{did_you_mean(train.model, MODEL_NAMES)}; valid: {', '.join(MODEL_NAMES)}")
    check_backbone_options(cfg)
    # One dataset: every rank reads it, whatever a mapping says (as MSeg does).
    mapping = dict(train.dataset_gpu_mapping) if train.dataset_gpu_mapping and len(datasets) > 1 else None
    model_taxonomy = model_taxonomy_of(cfg, datasets)
    check_capabilities(train.method, train.loss, model_taxonomy=model_taxonomy, compile=train.compile, cuda_graphs=train.cuda_graphs,
                       precision=train.precision, world_size=world_size, one_dataset_per_process=mapping is not None,
                       label_set_weights=train.label_set_weights, set_prior_correction=train.set_prior_correction)
    if train.freeze_bn and train.precise_bn_iters > 0:
        raise ConfigError(f"TRAIN.freeze_bn=True with TRAIN.precise_bn_iters={train.precise_bn_iters}: precise BN would replace "
                          f"the frozen running statistics by estimates from training batches; set one of them off")
    # unknown or test-only dataset names fail here
    converter = build_taxonomy_converter(model_taxonomy, datasets, [], set_valued=LOSSES[train.loss].needs_label_sets, catalog=catalog)
    check_label_set_weights(train, converter)
    if mapping is not None:
        check_dataset_gpu_mapping(datasets, mapping, world_size)
    batch_per_rank = per_rank_batch_size(train.batch_size, world_size)
    check_memory(train, batch_per_rank, converter.num_classes)
    max_iters = train.max_iters or derive_max_iters(train.num_examples, train.batch_size, datasets, mapping, world_size)
    local = local_world_size or world_size
    workers = 0 if train.workers <= 0 else max(1, train.workers // local)
    return RunSetup(datasets, model_taxonomy, converter, train.precision, train.batch_size, batch_per_rank, max_iters, workers, mapping,
                    train.method, train.loss, catalog)


def nearest_multiple(size: int, multiple: int) -> int:
    """The positive multiple of ``multiple`` nearest ``size`` (a tie goes up: 713 -> 714 for 14)."""
    return max(multiple, (size + multiple // 2) // multiple * multiple)


def check_backbone_options(cfg: Config) -> None:
    """The options that only some architectures take, and the sizes a ViT can run at (one line naming the key)."""
    train = cfg.TRAIN
    spec = DINOV2_SPECS.get(train.model)
    if spec is None:
        if train.backbone_mode != "finetune":
            raise ConfigError(f"TRAIN.backbone_mode={train.backbone_mode!r}: {train.model} trains its whole network (finetune); frozen "
                              f"and adapters apply to the dinov2 models ({', '.join(DINOV2_SPECS)})")
        if train.layer_decay != 1.0:
            raise ConfigError(f"TRAIN.layer_decay={train.layer_decay}: layer-wise decay applies to the dinov2 models; {train.model} "
                              f"trains with one learning rate (layer_decay=1.0)")
        return
    patch = spec.patch_size
    sizes = [("TRAIN", "train_h"), ("TRAIN", "train_w")]
    if train.val_every and cfg.TEST.inference_mode == "sliding":  # validation runs windows of the TEST size
        sizes += [("TEST", "test_h"), ("TEST", "test_w")]
    for section, key in sizes:
        value = cfg[section][key]
        if value % patch:
            raise ConfigError(f"{section}.{key}={value}: {train.model} takes sizes that are multiples of its patch size {patch}; "
                              f"use {key}={nearest_multiple(value, patch)}")


def check_label_set_weights(train: Any, converter: Any) -> None:
    """``records`` needs the relabeling-record frequencies of every set (a user taxonomy's sets have none)."""
    if train.loss != "partial_label" or train.label_set_weights != "records":
        return
    for dataset, weights in converter.class_set_weights.items():
        missing = [converter.dataset_class_names[dataset][i] for i, w in enumerate(weights) if w is None]
        if missing:
            raise ConfigError(f"TRAIN.label_set_weights=records: {dataset}'s label set(s) of {', '.join(map(repr, missing[:5]))} have no "
                              f"relabeling-record counts to weigh their members with; use label_set_weights=uniform")


def _memory_bytes() -> tuple[int, str]:
    """What one process can use: the GPU's memory when there is one, else the machine's."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory), "the GPU's memory"
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "this machine's memory"


def check_memory(train: Any, batch_per_rank: int, num_classes: int) -> None:
    """Refuse a crop or batch that cannot fit, before anything starts. The estimate is a floor: the uint8 crop and
    label, the float image and the full-resolution fp32 logits of every crop (the network's activations come on
    top), so a refused run could never have run."""
    available, where = _memory_bytes()
    per_crop = train.train_h * train.train_w * (4 + 12 + 4 * num_classes)
    if per_crop > available:
        raise ConfigError(f"TRAIN.train_h x train_w = {train.train_h} x {train.train_w}: one crop needs at least "
                          f"{per_crop / 2**30:.1f} GiB (images, labels, {num_classes}-class logits), more than {where} "
                          f"({available / 2**30:.1f} GiB); use a smaller crop")
    if per_crop * batch_per_rank > available:
        raise ConfigError(f"TRAIN.batch_size: {batch_per_rank} crops of {train.train_h} x {train.train_w} per process need at "
                          f"least {per_crop * batch_per_rank / 2**30:.1f} GiB, more than {where} ({available / 2**30:.1f} GiB); "
                          f"use a smaller batch_size (global: over all processes) or more processes")


def plan_run(cfg: Config, world_size: int = 1, local_world_size: int | None = None) -> dict[str | None, RunSetup]:
    """:func:`resolve_run` of every stage the command will train (``{None: setup}`` for a run without stages): a bad
    config fails before any process group, directory or download, and a stage's own overrides are checked as that
    stage will see them."""
    names = stage_names(cfg)
    if not names:
        if cfg.TRAIN.stage is not None:
            raise ConfigError(f"TRAIN.stage={cfg.TRAIN.stage!r} but {cfg.source} defines no STAGES")
        return {None: resolve_run(cfg, world_size, local_world_size)}
    selected = [cfg.TRAIN.stage] if cfg.TRAIN.stage is not None else names
    return {name: resolve_run(apply_stage(cfg, name), world_size, local_world_size) for name in selected}  # unknown stage: raises


def check_run(cfg: Config, world_size: int = 1) -> None:
    """:func:`plan_run` for its refusals only."""
    plan_run(cfg, world_size)


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """``SECTION.key -> value``; a key that takes one name or a list of them (``dataset=ade20k-150``) as a list, so
    that the two spellings of one value compare equal."""
    flat = {}
    for section, keys in config.items():
        if section == "STAGES":
            continue
        for key, value in keys.items():
            option = SCHEMA.get(section, {}).get(key)
            one_or_list = option is not None and "list" in option.kinds and "str" in option.kinds
            flat[f"{section}.{key}"] = [value] if one_or_list and isinstance(value, str) else value
    return flat


def accept_resume(cfg: Config, saved: dict[str, Any] | None, checkpoint: Path, same_dir: bool = True) -> Config:
    """The config a resumed run uses: refuses a change of a fixed key, keeps the saved values of keys a resume does
    not use, logs every change that takes effect. ``same_dir``: the checkpoint is this output_dir's (else a
    ``resume=`` from another run)."""
    if not saved:
        log.warning(f"{checkpoint} records no config (written by an older version): the changes since it cannot be listed")
        return cfg
    now, then = _flat(cfg.to_dict()), _flat(translate_saved_config(saved))
    changed = [key for key in now if key in then and now[key] != then[key] and key not in NOT_COMPARED]
    whose = "the run in this output_dir" if same_dir else "the run that wrote it"
    for key in changed:
        if key in FIXED_ON_RESUME:
            raise ConfigError(
                f"{key} is {now[key]!r} but {whose} was started with {then[key]!r} ({checkpoint}); a resume "
                f"continues that run, so {key} cannot change. Use another output_dir for a new run, or set {key.split('.', 1)[1]}={then[key]!r}"
            )
    kept = {key: then[key] for key in changed if key in UNUSED_ON_RESUME}
    for key in kept:
        log.info(f"resume: {key}={now[key]!r} is not used when resuming (the run started with {then[key]!r}); keeping {then[key]!r}")
    for key in changed:
        if key not in kept:
            log.info(f"resume: {key} changed from {then[key]!r} to {now[key]!r}; takes effect from the resumed iteration on")
    return cfg.updated(kept, where="resume") if kept else cfg


def model_meta(cfg: Config, setup: RunSetup) -> dict[str, Any]:
    """What the final weights file says about the model (read by mseg-test, mseg-demo, mseg-export, fine-tuning)."""
    return {
        "model": cfg.TRAIN.model,
        "num_classes": int(setup.converter.num_classes),
        "model_taxonomy": setup.model_taxonomy,
        "universal_taxonomy": getattr(setup.converter, "universal", None),  # a user file's universal taxonomy, for the tools
        "train_datasets": list(setup.datasets),
        "iterations": setup.max_iters,
        "batch_size": setup.batch_size,
        "crop": [cfg.TRAIN.train_h, cfg.TRAIN.train_w],
        "short_size": cfg.TRAIN.short_size,
        "precision": setup.precision,
        "method": setup.method,
        "loss": setup.loss,
        "backbone_mode": cfg.TRAIN.backbone_mode,  # adapters: the final files hold them merged (the plain model)
        "exp_id": cfg.TRAIN.exp_id,
        "stage": cfg.TRAIN.stage,
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@dataclass
class StageRun:
    """Everything one stage trains with, built from its config (the benchmark builds one too)."""

    setup: RunSetup
    parts: TrainingParts
    step: BackwardStep
    step_context: StepContext
    meta: dict[str, Any]


def with_sync_batchnorm(model: torch.nn.Module, info: DistInfo, sync_bn: bool) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm for several ranks on GPUs with ``sync_bn`` (SyncBatchNorm is CUDA-only, so CPU runs
    keep per-process BatchNorm); parameter names do not change."""
    if info.distributed and sync_bn and info.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_distributed(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel when there are several ranks."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _build_model(cfg: Config, info: DistInfo, setup: RunSetup, initial_weights: str | None) -> torch.nn.Module:
    train = cfg.TRAIN
    seed_everything(train.seed)  # identical initial weights on every rank
    model = build_model(train.model, num_classes=setup.converter.num_classes)
    if train.model in DINOV2_SPECS:  # before the optimizer and DDP, which fix the set of parameters that train; before
        set_backbone_mode(model, train.backbone_mode, lora_rank=train.lora_rank)  # loading: a file may hold adapters
    if initial_weights:
        report = load_weights(model, resolve_weights(initial_weights), reinit_head=train.reinit_head, log=False)
        log.info(f"fine-tuning from {initial_weights}: {report}")
    model.to(info.device)
    if train.channels_last:
        model.to(memory_format=torch.channels_last)
    if train.cuda_graphs and info.device.type != "cuda":
        raise ConfigError("TRAIN.cuda_graphs=True needs a CUDA device; none is visible")
    model = with_sync_batchnorm(model, info, train.sync_bn)
    if train.compile:  # after SyncBatchNorm (the compiled regions trace the modules they will run), before DDP
        log.info(f"compiling {len(compile_regions(model))} model regions (cache: {inductor_cache_dir()})")
    return wrap_distributed(model, info)


def build_stage(cfg: Config, info: DistInfo, setup: RunSetup, initial_weights: str | None = None) -> StageRun:
    """The model (from ``initial_weights`` when given), optimizer, schedule, loader and backward step of a stage."""
    train = cfg.TRAIN
    model = _build_model(cfg, info, setup, initial_weights)
    groups = parameter_groups(model, train.base_lr, train.weight_decay, train.layer_decay)
    # a CUDA graph replays the update with the learning rates it reads from device tensors
    optimizer = build_optimizer(train.optimizer, groups, train.momentum, train.betas_adamw, fused=info.device.type == "cuda",
                                lr_on_device=info.device if train.cuda_graphs else None)
    scaler = make_grad_scaler(setup.precision, info.device.type)
    loader = build_train_loader(cfg, setup.datasets, setup.converter, catalog=setup.catalog, rank=info.rank, world_size=info.world_size,
                                workers=setup.workers_per_rank, dataset_gpu_mapping=setup.dataset_gpu_mapping,
                                pin_memory=info.device.type == "cuda")
    pixel_loss = pixel_loss_for(setup.loss, setup.converter.label_sets, train, info)
    parts = TrainingParts(model, optimizer, PolyLR(optimizer, setup.max_iters, train.power), scaler, loader, pixel_loss=pixel_loss)
    context = StepContext(
        num_datasets=len(setup.datasets),
        dataset_names=list(setup.datasets),
        autocast=functools.partial(autocast_context, setup.precision, info.device.type, cache_enabled=not train.cuda_graphs),
        scaler=scaler,
        info=info,
        diagnostics=(pixel_loss.raise_for_invalid_codes,) if hasattr(pixel_loss, "raise_for_invalid_codes") else (),
    )
    seed_everything(train.seed + info.rank)  # per-rank randomness after construction
    loss_head = compile_loss_head(pixel_loss) if train.compile and METHODS[setup.method].takes_loss_head else None
    step = backward_step_for(setup.method, cfg, pixel_loss, loss_head)
    return StageRun(setup, parts, step, context, model_meta(cfg, setup))
