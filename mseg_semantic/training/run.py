"""One training run from a config: plan it, build its parts, train each stage, write the final model.

:func:`run_training` turns the config into plain objects (taxonomy converter, model, data loader, optimizer)
and hands them to :func:`mseg_semantic.training.loop.train_loop`. It also owns the run's directory layout:
output_dir/{config.yaml, train.log, tensorboard/, checkpoints/, model_final.pth}, one such directory per
stage when the config lists STAGES. The command line is ``mseg_semantic/tool/train.py``.
"""

from __future__ import annotations

import datetime
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from mseg_semantic.baselines.ccsa import ccsa_backward_step
from mseg_semantic.baselines.mgda import mgda_backward_step
from mseg_semantic.config import Config, ConfigError, apply_stage, canonical_key, parse_override, stage_names
from mseg_semantic.data import build_train_loader, check_dataset_gpu_mapping, normalize_images, train_loader_arguments
from mseg_semantic.data.demo_world import generate as generate_demo_world
from mseg_semantic.model import build_model, load_weights
from mseg_semantic.model.weights import resolve_weights
from mseg_semantic.taxonomy import build_taxonomy_converter
from mseg_semantic.training.checkpoint import (
    CHECKPOINT_DIR,
    FINAL_NAME,
    link_or_copy_atomic,
    list_checkpoints,
    load_checkpoint,
    load_newest_checkpoint,
    remove_temporaries,
    restore_rng_state,
    save_final_weights,
)
from mseg_semantic.training.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    per_rank_batch_size,
    prepare_model,
    unwrap,
)
from mseg_semantic.training.logging import TrainingReporter, setup_logging
from mseg_semantic.training.loop import LoopSettings, ce_backward_step, recalibrate_batchnorm, train_loop
from mseg_semantic.training.optim import PolyLR, build_sgd, derive_max_iters
from mseg_semantic.training.precision import autocast_factory, make_grad_scaler, resolve_precision
from mseg_semantic.training.step import BackwardStep, StepContext

log = logging.getLogger("mseg_semantic.training")

@dataclass
class RunPlan:
    """What a config means for one run on ``world_size`` processes (no side effects: testable alone)."""

    datasets: list[str]
    taxonomy: str  # universal | naive | oracle
    precision: str
    batch_size: int  # global
    batch_per_rank: int
    max_iters: int
    workers_per_rank: int
    dataset_gpu_mapping: dict | None
    method: str  # ce | mgda | ccsa


def training_datasets(cfg: Config) -> list[str]:
    value = cfg.DATA.dataset
    names = [value] if isinstance(value, str) else list(value or [])
    if not names:
        raise ConfigError("DATA.dataset is empty: name the training dataset(s), e.g. dataset=[ade20k-150,bdd] or dataset=ade20k-150")
    if "single" in names:
        raise ConfigError("DATA.dataset is MSeg's placeholder 'single': name the dataset on the command line, e.g. dataset=ade20k-150")
    return [str(n) for n in names]


def taxonomy_kind(cfg: Config, datasets: Sequence[str]) -> str:
    if not cfg.DATA.universal:
        if cfg.TRAIN.use_naive_taxonomy:
            raise ConfigError("DATA.universal=False (oracle: the dataset's own classes) contradicts TRAIN.use_naive_taxonomy=True")
        if len(datasets) != 1:
            raise ConfigError(f"DATA.universal=False trains one dataset in its own taxonomy (an oracle); got {len(datasets)} datasets: {', '.join(datasets)}")
        return "oracle"
    return "naive" if cfg.TRAIN.use_naive_taxonomy else "universal"


def method_name(cfg: Config) -> str:
    use_ccsa = bool(cfg["CCSA"].get("use_ccsa", False)) if "CCSA" in cfg else False
    if cfg.DATA.use_mgda and use_ccsa:
        raise ConfigError("DATA.use_mgda and CCSA.use_ccsa are both True; pick one baseline")
    return "mgda" if cfg.DATA.use_mgda else "ccsa" if use_ccsa else "ce"


def plan_run(cfg: Config, world_size: int = 1, local_world_size: int | None = None) -> RunPlan:
    datasets = training_datasets(cfg)
    train = cfg.TRAIN
    # One dataset: every rank reads it, whatever MSeg's {'single': [gpus]} mapping says (as MSeg does).
    mapping = dict(train.dataset_gpu_mapping) if train.dataset_gpu_mapping and len(datasets) > 1 else None
    method = method_name(cfg)
    if method == "ccsa" and mapping is not None:
        raise ConfigError(
            "CCSA.use_ccsa=True with TRAIN.dataset_gpu_mapping: with one dataset per GPU no process sees two domains, so the "
            "contrastive term would always be zero; set dataset_gpu_mapping=null to mix datasets in every batch"
        )
    if train.max_iters is not None and train.max_iters <= 0:
        raise ConfigError(f"TRAIN.max_iters must be positive, got {train.max_iters}")
    try:  # these take plain arguments and raise ValueError naming the key
        if mapping is not None:
            check_dataset_gpu_mapping(datasets, mapping, world_size)
        batch_per_rank = per_rank_batch_size(train.batch_size, world_size)
        precision = resolve_precision(train.precision, cfg.Distributed.opt_level)
        max_iters = train.max_iters or derive_max_iters(train.num_examples, train.batch_size, datasets, mapping, world_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    local = local_world_size or world_size
    workers = 0 if train.workers <= 0 else max(1, train.workers // local)
    if train.precise_bn_iters < 0:
        raise ConfigError(f"TRAIN.precise_bn_iters must be >= 0, got {train.precise_bn_iters}")
    for key in ("checkpoint_every", "keep_checkpoints", "print_freq", "cpu_threads"):
        if train[key] is not None and train[key] <= 0:
            raise ConfigError(f"TRAIN.{key} must be positive, got {train[key]}")
    return RunPlan(datasets, taxonomy_kind(cfg, datasets), precision, train.batch_size, batch_per_rank, max_iters, workers, mapping, method)


def default_output_dir(exp_id: str) -> Path:
    """``output/<YYYY-MM-DD>_<exp_id>``: re-running the same command on the same day resumes."""
    return Path("output") / f"{datetime.date.today().isoformat()}_{exp_id}"


def backward_step_for(method: str) -> BackwardStep:
    if method == "mgda":
        return mgda_backward_step
    if method == "ccsa":
        return ccsa_backward_step
    return ce_backward_step


def method_options(cfg: Config, method: str) -> dict[str, Any]:
    section = {"mgda": "MGDA", "ccsa": "CCSA"}.get(method)
    return dict(cfg[section]) if section and section in cfg else {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def configure_kernels(device: torch.device, cpu_threads: int | None = None) -> None:
    """CPU: deterministic kernels (exact resume). GPU: cuDNN autotuning for the fixed crop size, which
    trades bit-exact repeatability for speed (atomics in upsampling backward are not deterministic anyway)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cpu_threads is not None and device.type == "cpu":
        torch.set_num_threads(cpu_threads)


def model_meta(cfg: Config, plan: RunPlan, num_classes: int) -> dict[str, Any]:
    return {
        "model": cfg.TRAIN.model,
        "num_classes": int(num_classes),
        "taxonomy": plan.taxonomy,
        "train_datasets": list(plan.datasets),
        "iterations": plan.max_iters,
        "batch_size": plan.batch_size,
        "crop": [cfg.TRAIN.train_h, cfg.TRAIN.train_w],
        "short_size": cfg.TRAIN.short_size,
        "precision": plan.precision,
        "method": plan.method,
        "exp_id": cfg.TRAIN.exp_id,
        "stage": cfg.TRAIN.stage,
    }


def prepare_data_root(cfg: Config, info: DistInfo) -> None:
    """Write the synthetic demo world first when the config asks for it (rank 0; the others wait)."""
    if not cfg.DATA.generate_demo_world:
        return
    if not cfg.DATA.data_root:
        raise ConfigError("DATA.generate_demo_world=True needs DATA.data_root (where to write the demo world)")
    if info.is_main:
        generate_demo_world(cfg.DATA.data_root)
    barrier(info)


def build_loader(cfg: Config, plan: RunPlan, converter: Any, info: DistInfo):
    arguments = train_loader_arguments(cfg)
    arguments.update(  # what depends on this process, not only on the config
        workers=plan.workers_per_rank,
        dataset_gpu_mapping=plan.dataset_gpu_mapping,
        rank=info.rank,
        world_size=info.world_size,
        pin_memory=info.device.type == "cuda",
    )
    return build_train_loader(plan.datasets, converter, **arguments)


@dataclass
class StageRun:
    """Everything one stage trains with, built from its config (the benchmark reuses it)."""

    plan: RunPlan
    model: torch.nn.Module  # DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: PolyLR
    scaler: torch.amp.GradScaler | None
    loader: Any
    step: BackwardStep
    step_context: StepContext
    meta: dict[str, Any]
    start_iteration: int
    resumed_from: Path | None


def _restore(run: StageRun, state: dict[str, Any], info: DistInfo) -> int:
    unwrap(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scheduler.max_iters != run.plan.max_iters:  # a run lengthened (or shortened) at resume keeps the poly form
        run.scheduler.max_iters = run.plan.max_iters
        for group, lr in zip(run.optimizer.param_groups, run.scheduler.get_lr()):
            group["lr"] = lr
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    saved_world = int(state.get("world_size", 1))
    if saved_world == info.world_size:
        run.loader.load_state_dict(state["sampler"][info.rank])
        restore_rng_state(state["rng"][info.rank], info.device)
    else:
        # The data stream depends on the global batch index only, so rank 0's cursor serves every rank; the
        # per-process RNG (unused by HRNet's forward pass) restarts from the seed.
        log.warning(f"checkpoint was written by {saved_world} process(es), this run has {info.world_size}: data resumes exactly, per-process RNG states are re-seeded")
        run.loader.load_state_dict(state["sampler"][0])
    return int(state["iteration"])


def build_stage(cfg: Config, info: DistInfo, checkpoint: dict[str, Any] | None, checkpoint_path: Path | None) -> StageRun:
    plan = plan_run(cfg, info.world_size, info.local_world_size)
    train = cfg.TRAIN
    seed_everything(train.seed)  # identical initial weights on every rank
    converter = build_taxonomy_converter(plan.taxonomy, plan.datasets, [])
    model = build_model(train.model, num_classes=converter.num_uclasses)
    if checkpoint is None and train.weights:
        weights = resolve_weights(train.weights)  # a file, or a released name such as hrnet_w48_imagenet
        report = load_weights(model, weights, reinit_head=train.reinit_head, log=False)
        log.info(f"fine-tuning from {weights}: {report}")
    model.to(info.device)
    if train.channels_last:
        model.to(memory_format=torch.channels_last)
    model = prepare_model(model, info, train.sync_bn)
    optimizer = build_sgd(model.parameters(), train.base_lr, train.momentum, train.weight_decay)
    scheduler = PolyLR(optimizer, plan.max_iters, train.power)
    scaler = make_grad_scaler(plan.precision, info.device.type)
    loader = build_loader(cfg, plan, converter, info)
    context = StepContext(
        num_datasets=len(plan.datasets),
        ignore_index=train.ignore_label,
        autocast=autocast_factory(plan.precision, info.device.type),
        scaler=scaler,
        distributed=info.distributed,
        options=method_options(cfg, plan.method),
        dataset_names=list(plan.datasets),
    )
    seed_everything(train.seed + info.rank)  # per-rank randomness after construction
    run = StageRun(plan, model, optimizer, scheduler, scaler, loader, backward_step_for(plan.method), context,
                   model_meta(cfg, plan, converter.num_uclasses), 0, None)
    if checkpoint is not None:
        run.start_iteration = _restore(run, checkpoint, info)
        run.resumed_from = checkpoint_path
    return run


def _find_checkpoint(cfg: Config, output_dir: Path, info: DistInfo) -> tuple[Path | None, dict[str, Any] | None]:
    """Explicit ``resume=PATH``, else the newest complete checkpoint in output_dir (rank 0 decides)."""
    path: Path | None = None
    state: dict[str, Any] | None = None
    if cfg.TRAIN.resume:
        path = Path(cfg.TRAIN.resume)
        if not path.is_file():
            raise FileNotFoundError(f"TRAIN.resume={cfg.TRAIN.resume}: no such checkpoint")
    elif cfg.TRAIN.auto_resume and info.is_main:
        remove_temporaries(output_dir / CHECKPOINT_DIR)
        path, state = load_newest_checkpoint(output_dir / CHECKPOINT_DIR) or (None, None)
    path = broadcast_object(str(path) if path else None, info)
    if path is None:
        return None, None
    if state is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"rank {info.rank}: checkpoint {path} (chosen by rank 0) is not visible here; output_dir must be on a file system every node shares")
        try:
            state = load_checkpoint(path)
        except ValueError as exc:  # e.g. resume= names a model_final.pth
            raise ConfigError(f"TRAIN.resume: {exc}") from None
    return Path(path), state


def run_stage(cfg: Config, output_dir: Path, info: DistInfo) -> Path:
    """Train one stage into ``output_dir``; returns the path of its ``model_final.pth``."""
    final_path = output_dir / FINAL_NAME
    if final_path.is_file() and not cfg.TRAIN.resume:
        log.info(f"{final_path} exists: this {'stage' if cfg.TRAIN.stage else 'run'} is finished (to train longer: resume={output_dir / CHECKPOINT_DIR / 'last.pth'} max_iters=N)")
        return final_path
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)
    setup_logging(output_dir / "train.log", info.is_main)
    plan = plan_run(cfg, info.world_size, info.local_world_size)
    configure_kernels(info.device, cfg.TRAIN.cpu_threads)
    prepare_data_root(cfg, info)
    checkpoint_path, checkpoint = _find_checkpoint(cfg, output_dir, info)
    if checkpoint is not None and checkpoint.get("stage") != cfg.TRAIN.stage:
        raise ConfigError(f"checkpoint {checkpoint_path} belongs to stage {checkpoint.get('stage')!r}, this run is stage {cfg.TRAIN.stage!r}; pass stage={checkpoint.get('stage')}")
    if info.is_main:
        cfg.save(output_dir / "config.yaml")
    run = build_stage(cfg, info, checkpoint, checkpoint_path)
    log.info(
        f"{'resuming from ' + str(run.resumed_from) + ' at iteration ' + str(run.start_iteration) if run.resumed_from else 'starting'}: "
        f"{plan.max_iters} iterations, global batch {plan.batch_size} ({plan.batch_per_rank} per process x {info.world_size}), "
        f"{plan.precision}, {plan.taxonomy} taxonomy ({run.meta['num_classes']} classes), datasets {', '.join(plan.datasets)}, "
        f"method {plan.method}, device {info.device}, output {output_dir}"
    )
    del checkpoint
    settings = LoopSettings(
        max_iters=plan.max_iters,
        checkpoint_dir=output_dir / CHECKPOINT_DIR,
        checkpoint_every=cfg.TRAIN.checkpoint_every,
        keep_checkpoints=cfg.TRAIN.keep_checkpoints,
        grad_clip=cfg.TRAIN.grad_clip,
        channels_last=cfg.TRAIN.channels_last,
        freeze_bn=cfg.TRAIN.freeze_bn,
    )
    reporter = TrainingReporter(output_dir, info.is_main, run.start_iteration, plan.max_iters, plan.batch_size,
                                info.device, cfg.TRAIN.print_freq, cfg.TRAIN.tensorboard, show_progress=sys.stderr.isatty())
    try:
        stats = train_loop(run.model, run.optimizer, run.scheduler, run.scaler, run.loader, run.step, run.step_context,
                           normalize_images, settings, info, reporter, run.start_iteration,
                           {"stage": cfg.TRAIN.stage, "config": cfg.to_dict(), "meta": run.meta})
    finally:
        reporter.close()
    if cfg.TRAIN.precise_bn_iters > 0:
        count = recalibrate_batchnorm(unwrap(run.model), run.loader, cfg.TRAIN.precise_bn_iters, normalize_images, info, cfg.TRAIN.channels_last)
        log.info(f"re-estimated the running statistics of {count} BatchNorm layers over {cfg.TRAIN.precise_bn_iters} batches")
    if info.is_main:
        save_final_weights(unwrap(run.model).state_dict(), run.meta, final_path)
        skipped = run.loader.skipped_counts() if hasattr(run.loader, "skipped_counts") else {}
        log.info(
            f"finished: {final_path} ({stats.iterations} iterations in {stats.wall_seconds:.1f} s, "
            f"{stats.data_wait_seconds:.1f} s waiting for data; skipped bad samples on rank 0: {sum(skipped.values())})"
        )
    barrier(info)
    return final_path


def _names_weights(keys: Iterable[str]) -> bool:
    """Whether any of these (already validated) names sets TRAIN.weights, MSeg's ``weight`` alias included."""
    return any(canonical_key(str(key)) == ("TRAIN", "weights") for key in keys)


def run_training(cfg: Config, info: DistInfo) -> Path:
    """All stages (or ``TRAIN.stage``), each from the previous stage's weights; returns the last final model."""
    output_dir = Path(cfg.TRAIN.output_dir) if cfg.TRAIN.output_dir else default_output_dir(cfg.TRAIN.exp_id)
    output_dir = Path(broadcast_object(str(output_dir), info))  # one date for every rank, even at midnight
    setup_logging(None, info.is_main)
    names = stage_names(cfg)
    if not names:
        if cfg.TRAIN.stage is not None:
            raise ConfigError(f"TRAIN.stage={cfg.TRAIN.stage!r} but {cfg.source} defines no STAGES")
        return run_stage(cfg.updated({"TRAIN.output_dir": str(output_dir)}), output_dir, info)
    if cfg.TRAIN.stage is not None and cfg.TRAIN.stage not in names:
        apply_stage(cfg, cfg.TRAIN.stage)  # raises the unknown-stage error with a suggestion
    selected = names if cfg.TRAIN.stage is None else [cfg.TRAIN.stage]
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        cfg.updated({"TRAIN.output_dir": str(output_dir)}).save(output_dir / "config.yaml")
    final = None
    for position, name in enumerate(selected):
        index = names.index(name)
        stage_cfg = apply_stage(cfg, name)
        stage_dir = output_dir / name
        assignments: dict[str, Any] = {"TRAIN.output_dir": str(stage_dir)}
        first = position == 0
        if not first:
            assignments["TRAIN.resume"] = None  # an explicit resume= names a checkpoint of the first stage run
        stage_sets_weights = _names_weights(cfg.stages[index]["overrides"])
        command_sets_weights = first and _names_weights(parse_override(o)[0] for o in cfg.overrides)
        if index > 0 and not (stage_sets_weights or command_sets_weights):
            previous = output_dir / names[index - 1] / FINAL_NAME
            has_checkpoint = bool(list_checkpoints(stage_dir / CHECKPOINT_DIR))
            if not previous.is_file() and not has_checkpoint and not stage_cfg.TRAIN.resume and not (stage_dir / FINAL_NAME).is_file():
                raise FileNotFoundError(
                    f"stage {name!r} starts from stage {names[index - 1]!r}'s weights {previous}, which do not exist: "
                    f"run stage={names[index - 1]} first (or all stages), or pass weights=PATH"
                )
            assignments["TRAIN.weights"] = str(previous)
        final = run_stage(stage_cfg.updated(assignments, where=f"stage {name}"), stage_dir, info)
    if cfg.TRAIN.stage is None and final is not None and info.is_main:
        # The whole run's product sits where single-stage runs put it.
        link_or_copy_atomic(final, output_dir / FINAL_NAME)
    barrier(info)
    return output_dir / FINAL_NAME if cfg.TRAIN.stage is None else final
