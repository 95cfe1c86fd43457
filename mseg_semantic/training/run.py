"""One training run from a config: resolve it, hold its directory, train each stage, write the final model.

:func:`resolve_run` says what a config means on ``world_size`` processes (datasets, label space, batch split,
iterations, method) without side effects. :func:`run_training` holds ``output_dir`` (one run per directory),
runs the stages in order (each into ``<output_dir>/<stage>/``, from the previous stage's weights) or the single
run, and :func:`run_stage` trains one of them: resume or start, the loop, precise BN, ``model_final.pth``.
The command line is ``mseg_semantic/tool/train.py``.

Resuming with a changed config: the keys in :data:`FIXED_ON_RESUME` define what the checkpoint is and a change
stops the run (exit 2, naming the key, the saved and the new value); the keys in :data:`UNUSED_ON_RESUME` only
matter for a fresh start and keep their saved values; every other change takes effect from the resumed
iteration on, and the log lists it. ``config.yaml`` is written once the run is accepted, with what it uses.
"""

from __future__ import annotations

import datetime
import functools
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mseg_semantic.atomic import link_or_copy_atomic, remove_stale_temporaries
from mseg_semantic.config import SCHEMA, Config, ConfigError, apply_stage, canonical_key, parse_override, stage_names
from mseg_semantic.data import build_train_loader, check_dataset_gpu_mapping
from mseg_semantic.data import demo_world
from mseg_semantic.errors import UnknownNameError, did_you_mean
from mseg_semantic.evaluation.validation import build_validator
from mseg_semantic.model import MODEL_NAMES, autocast_context, build_model, load_weights, save_weights, unwrap_model
from mseg_semantic.model.weights import resolve_weights
from mseg_semantic.taxonomy import TaxonomyFileError, add_taxonomy_files, build_taxonomy_converter, taxonomy_names
from mseg_semantic.training.checkpoint import CHECKPOINT_DIR, FINAL_NAME, Checkpointer, TrainingParts, load_checkpoint
from mseg_semantic.training.distributed import DistInfo, barrier, broadcast_object, per_rank_batch_size, with_sync_batchnorm, wrap_distributed
from mseg_semantic.training.gradients import BackwardStep, StepContext, backward_step_for, pixel_loss_for
from mseg_semantic.training.lock import OutputDirLock
from mseg_semantic.training.loop import LoopSettings, recalibrate_batchnorm, train_loop
from mseg_semantic.training.optim import PolyLR, build_sgd, derive_max_iters, make_grad_scaler
from mseg_semantic.training.preemption import PreemptionSignal
from mseg_semantic.training.report import TrainingReporter, setup_logging
from mseg_semantic.training.speed import compile_loss_head, compile_regions, inductor_cache_dir

log = logging.getLogger("mseg_semantic.training")

__all__ = ["FIXED_ON_RESUME", "RunSetup", "StageRun", "build_stage", "check_run", "resolve_run", "run_stage", "run_training"]

# What a checkpoint is: changing these on resume would continue another run's state under this one's name.
FIXED_ON_RESUME = (
    "DATA.dataset", "DATA.universal", "DATA.use_mgda", "DATA.sampling_weights", "DATA.taxonomy_files", "TRAIN.model", "TRAIN.use_naive_taxonomy",
    "TRAIN.seed", "TRAIN.batch_size", "TRAIN.dataset_gpu_mapping", "TRAIN.stage", "CCSA.use_ccsa",
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
    method: str  # ce | mgda | ccsa
    loss: str = "ce"  # ce | partial_label (the converter then writes label-set codes)


def training_datasets(cfg: Config) -> list[str]:
    value = cfg.DATA.dataset
    names = [value] if isinstance(value, str) else list(value or [])
    if not names:
        raise ConfigError("DATA.dataset is empty: name the training dataset(s), e.g. dataset=[ade20k-150,bdd] or dataset=ade20k-150")
    if "single" in names:
        raise ConfigError("DATA.dataset is MSeg's placeholder 'single': name the dataset on the command line, e.g. dataset=ade20k-150")
    known = taxonomy_names()
    trainable = taxonomy_names(role="train")
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


def method_of(cfg: Config) -> str:
    if cfg.DATA.use_mgda and cfg.CCSA.use_ccsa:
        raise ConfigError("DATA.use_mgda and CCSA.use_ccsa are both True; pick one baseline")
    return "mgda" if cfg.DATA.use_mgda else "ccsa" if cfg.CCSA.use_ccsa else "ce"


def resolve_run(cfg: Config, world_size: int = 1, local_world_size: int | None = None) -> RunSetup:
    """Check the config against the datasets, the model names and the process count; raises ConfigError naming the key."""
    try:
        add_taxonomy_files(cfg.DATA.taxonomy_files)  # once per process; the user files' dataset names resolve after this
    except TaxonomyFileError as exc:
        raise ConfigError(f"DATA.taxonomy_files: {exc}") from None
    datasets = training_datasets(cfg)
    train = cfg.TRAIN
    if train.model not in MODEL_NAMES:
        raise UnknownNameError(f"TRAIN.model={train.model!r} is not a model{did_you_mean(train.model, MODEL_NAMES)}; valid: {', '.join(MODEL_NAMES)}")
    # One dataset: every rank reads it, whatever a mapping says (as MSeg does).
    mapping = dict(train.dataset_gpu_mapping) if train.dataset_gpu_mapping and len(datasets) > 1 else None
    method = method_of(cfg)
    if method == "ccsa" and mapping is not None:
        raise ConfigError(
            "CCSA.use_ccsa=True with TRAIN.dataset_gpu_mapping: with one dataset per GPU no process sees two domains, so the "
            "contrastive term would always be zero; set dataset_gpu_mapping=null to mix datasets in every batch"
        )
    if train.compile and method == "mgda":
        raise ConfigError("TRAIN.compile=True with DATA.use_mgda=True: MGDA differentiates each task through the same graph "
                          "(retain_graph), which compiled regions do not support; set compile=False")
    if train.cuda_graphs:
        refusal = ("one process (use TRAIN.compile under torchrun)" if world_size > 1 else
                   "precision fp32 or bf16 (fp16's loss scaler decides on the host)" if train.precision == "fp16" else
                   "the cross-entropy step (MGDA and CCSA decide on the host)" if method != "ce" else None)
        if refusal:
            raise ConfigError(f"TRAIN.cuda_graphs=True needs {refusal}; set cuda_graphs=False")
    if train.freeze_bn and train.precise_bn_iters > 0:
        raise ConfigError(f"TRAIN.freeze_bn=True with TRAIN.precise_bn_iters={train.precise_bn_iters}: precise BN would replace "
                          f"the frozen running statistics by estimates from training batches; set one of them off")
    model_taxonomy = model_taxonomy_of(cfg, datasets)
    check_loss(cfg, method, model_taxonomy)
    # unknown or test-only dataset names fail here
    converter = build_taxonomy_converter(model_taxonomy, datasets, [], set_valued=train.loss == "partial_label")
    if mapping is not None:
        check_dataset_gpu_mapping(datasets, mapping, world_size)
    batch_per_rank = per_rank_batch_size(train.batch_size, world_size)
    max_iters = train.max_iters or derive_max_iters(train.num_examples, train.batch_size, datasets, mapping, world_size)
    local = local_world_size or world_size
    workers = 0 if train.workers <= 0 else max(1, train.workers // local)
    return RunSetup(datasets, model_taxonomy, converter, train.precision, train.batch_size, batch_per_rank, max_iters, workers, mapping, method,
                    train.loss)


def check_run(cfg: Config, world_size: int = 1) -> None:
    """:func:`resolve_run` of every stage the command will train (or of the single run): a bad config fails before
    any process group, directory or download, and a stage's own overrides are checked as that stage will see them."""
    names = stage_names(cfg)
    if not names:
        resolve_run(cfg, world_size)
        return
    for name in [cfg.TRAIN.stage] if cfg.TRAIN.stage is not None else names:
        resolve_run(apply_stage(cfg, name), world_size)  # an unknown stage name raises here, with a suggestion


def check_loss(cfg: Config, method: str, model_taxonomy: str) -> None:
    """TRAIN.loss=partial_label needs label sets (the universal taxonomy) and a method that averages a pixel loss."""
    if cfg.TRAIN.loss != "partial_label":
        return
    if model_taxonomy != "universal":
        key = "TRAIN.use_naive_taxonomy=True" if model_taxonomy == "naive" else "DATA.universal=False"
        raise ConfigError(f"TRAIN.loss=partial_label with {key}: label sets exist in the universal taxonomy only (the "
                          f"{model_taxonomy} taxonomy maps every class to one model class); use loss=ce, or train universal")
    if method == "ccsa":
        raise ConfigError("TRAIN.loss=partial_label with CCSA.use_ccsa=True: CCSA pairs pixels by class id, and a "
                          "set-valued label names several; use loss=ce with CCSA, or use_ccsa=False (MGDA and the plain "
                          "step take partial_label)")


def default_output_dir(exp_id: str) -> Path:
    """``output/<YYYY-MM-DD>_<exp_id>``: re-running the same command on the same day resumes."""
    return Path("output") / f"{datetime.date.today().isoformat()}_{exp_id}"


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
        "exp_id": cfg.TRAIN.exp_id,
        "stage": cfg.TRAIN.stage,
    }


def write_demo_world_if_asked(cfg: Config, info: DistInfo) -> None:
    """``DATA.generate_demo_world``: rank 0 writes the synthetic world, the other ranks wait for it."""
    if info.is_main:
        demo_world.write_if_asked(cfg.DATA)
    barrier(info)


@dataclass
class StageRun:
    """Everything one stage trains with, built from its config (the benchmark builds one too)."""

    setup: RunSetup
    parts: TrainingParts
    step: BackwardStep
    step_context: StepContext
    meta: dict[str, Any]


def build_stage(cfg: Config, info: DistInfo, setup: RunSetup, initial_weights: str | None = None) -> StageRun:
    """The model (from ``initial_weights`` when given), optimizer, schedule, loader and backward step of a stage."""
    train = cfg.TRAIN
    seed_everything(train.seed)  # identical initial weights on every rank
    model = build_model(train.model, num_classes=setup.converter.num_classes)
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
    model = wrap_distributed(model, info)
    # a CUDA graph replays the update with the learning rate it reads from a device tensor
    base_lr = torch.tensor(train.base_lr, device=info.device) if train.cuda_graphs else train.base_lr
    optimizer = build_sgd(model.parameters(), base_lr, train.momentum, train.weight_decay, fused=info.device.type == "cuda")
    if optimizer.defaults.get("fused"):
        # a skipped first update must not leave the momentum buffers uninitialised (zeros: the same first step)
        for group in optimizer.param_groups:
            for param in group["params"]:
                optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    scaler = make_grad_scaler(setup.precision, info.device.type)
    loader = build_train_loader(cfg, setup.datasets, setup.converter, rank=info.rank, world_size=info.world_size,
                                workers=setup.workers_per_rank, dataset_gpu_mapping=setup.dataset_gpu_mapping,
                                pin_memory=info.device.type == "cuda")
    parts = TrainingParts(model, optimizer, PolyLR(optimizer, setup.max_iters, train.power), scaler, loader)
    context = StepContext(
        num_datasets=len(setup.datasets),
        dataset_names=list(setup.datasets),
        autocast=functools.partial(autocast_context, setup.precision, info.device.type, cache_enabled=not train.cuda_graphs),
        scaler=scaler,
        distributed=info.distributed,
    )
    seed_everything(train.seed + info.rank)  # per-rank randomness after construction
    pixel_loss = pixel_loss_for(setup.loss, setup.converter.label_sets)
    loss_head = compile_loss_head(pixel_loss) if train.compile and setup.method == "ce" else None
    step = backward_step_for(setup.method, cfg, pixel_loss, loss_head)
    return StageRun(setup, parts, step, context, model_meta(cfg, setup))


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """``SECTION.key -> value``; a key that takes one name or a list of them (``dataset=ade20k-150``) as a list, so
    that the two spellings of one value compare equal."""
    flat = {}
    for section, keys in config.items():
        if section == "STAGES":
            continue
        for key, value in keys.items():
            one_or_list = "list" in SCHEMA[section][key].kinds and "str" in SCHEMA[section][key].kinds
            flat[f"{section}.{key}"] = [value] if one_or_list and isinstance(value, str) else value
    return flat


def accept_resume(cfg: Config, saved: dict[str, Any] | None, checkpoint: Path) -> Config:
    """The config a resumed run uses: refuses a change of a fixed key, keeps the saved values of keys a resume does
    not use, logs every change that takes effect."""
    if not saved:
        log.warning(f"{checkpoint} records no config (written by an older version): the changes since it cannot be listed")
        return cfg
    now, then = _flat(cfg.to_dict()), _flat(saved)
    changed = [key for key in now if key in then and now[key] != then[key] and key not in NOT_COMPARED]
    for key in changed:
        if key in FIXED_ON_RESUME:
            raise ConfigError(
                f"{key} is {now[key]!r} but the run in this output_dir was started with {then[key]!r} ({checkpoint}); a resume "
                f"continues that run, so {key} cannot change. Use another output_dir for a new run, or set {key.split('.', 1)[1]}={then[key]!r}"
            )
    kept = {key: then[key] for key in changed if key in UNUSED_ON_RESUME}
    for key in kept:
        log.info(f"resume: {key}={now[key]!r} is not used when resuming (the run started with {then[key]!r}); keeping {then[key]!r}")
    for key in changed:
        if key not in kept:
            log.info(f"resume: {key} changed from {then[key]!r} to {now[key]!r}; takes effect from the resumed iteration on")
    return cfg.updated(kept, where="resume") if kept else cfg


def find_checkpoint(cfg: Config, checkpointer: Checkpointer, info: DistInfo) -> tuple[Path | None, dict[str, Any] | None]:
    """An explicit ``resume=PATH``, else the newest complete checkpoint of this stage (rank 0 decides)."""
    path: Path | None = None
    state: dict[str, Any] | None = None
    if cfg.TRAIN.resume:
        path = Path(cfg.TRAIN.resume)
        if not path.is_file():
            raise ConfigError(f"TRAIN.resume={cfg.TRAIN.resume}: no such checkpoint")
    elif cfg.TRAIN.auto_resume and info.is_main:
        path, state = checkpointer.newest() or (None, None)
    path = broadcast_object(str(path) if path else None, info)
    if path is None:
        return None, None
    if state is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"rank {info.rank}: checkpoint {path} (chosen by rank 0) is not visible here; output_dir must be on a file system every node shares")
        state = load_checkpoint(path)
    if state.get("stage") != cfg.TRAIN.stage:
        raise ConfigError(f"checkpoint {path} belongs to stage {state.get('stage')!r}, this run is stage {cfg.TRAIN.stage!r}; pass stage={state.get('stage')}")
    return Path(path), state


def run_stage(cfg: Config, output_dir: Path, info: DistInfo, weights_hint: str = "") -> Path:
    """Train one stage (or the single run) into ``output_dir``; returns the path of its ``model_final.pth``.

    ``weights_hint``: what to say when ``TRAIN.weights`` does not exist (a later stage names the earlier one).
    """
    final_path = output_dir / FINAL_NAME
    if final_path.is_file() and not cfg.TRAIN.resume:
        log.info(f"{final_path} exists: this {'stage' if cfg.TRAIN.stage else 'run'} is finished (to train longer: resume={output_dir / CHECKPOINT_DIR / 'last.pth'} max_iters=N)")
        return final_path
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)  # a final model a killed run was writing
    barrier(info)
    setup_logging(output_dir / "train.log", info.is_main)
    setup = resolve_run(cfg, info.world_size, info.local_world_size)
    configure_kernels(info.device, cfg.TRAIN.cpu_threads)
    write_demo_world_if_asked(cfg, info)
    checkpointer = Checkpointer(output_dir / CHECKPOINT_DIR, info, cfg.TRAIN.keep_checkpoints)
    checkpoint_path, checkpoint = find_checkpoint(cfg, checkpointer, info)
    if checkpoint is not None:
        cfg = accept_resume(cfg, checkpoint.get("config"), checkpoint_path)
    weights = cfg.TRAIN.weights if checkpoint is None else None
    if weights and not Path(weights).expanduser().is_file() and weights_hint:
        raise ConfigError(weights_hint)
    run = build_stage(cfg, info, setup, weights)
    # TRAIN.val_every: the validation hook, checked before the run is accepted; it logs through the reporter made below,
    # and its best score so far lives in run.parts.extra (checkpointed, restored on resume)
    validator = build_validator(cfg, run.parts.model, run.meta, run.parts.extra, output_dir, setup.max_iters, info.is_main,
                                lambda iteration, scalars: reporter.write_scalars(iteration, scalars))
    if info.is_main:
        cfg.save(output_dir / "config.yaml")
    checkpointer.run_record = {"stage": cfg.TRAIN.stage, "config": cfg.to_dict(), "meta": run.meta}
    start = 0
    if checkpoint is not None:
        start = checkpointer.restore(run.parts, checkpoint, setup.max_iters, {k: cfg.TRAIN[k] for k in ("base_lr", "power", "momentum", "weight_decay")})
        checkpointer.set_aside_newer(start)
    del checkpoint
    log.info(
        f"{'resuming from ' + str(checkpoint_path) + ' at iteration ' + str(start) if checkpoint_path else 'starting'}: "
        f"{setup.max_iters} iterations, global batch {setup.batch_size} ({setup.batch_per_rank} per process x {info.world_size}), "
        f"{setup.precision}, {setup.model_taxonomy} taxonomy ({run.meta['num_classes']} classes), datasets {', '.join(setup.datasets)}, "
        f"method {setup.method}, loss {setup.loss}, device {info.device}, output {output_dir}"
    )
    settings = LoopSettings(max_iters=setup.max_iters, checkpoint_every=cfg.TRAIN.checkpoint_every, grad_clip=cfg.TRAIN.grad_clip,
                            channels_last=cfg.TRAIN.channels_last, freeze_bn=cfg.TRAIN.freeze_bn, cuda_graphs=cfg.TRAIN.cuda_graphs,
                            resume_hint=f"run the command again without resume={cfg.TRAIN.resume} to resume (with it, the run would "
                                        f"start from that checkpoint again)" if cfg.TRAIN.resume else LoopSettings.resume_hint)
    reporter = TrainingReporter(output_dir, info.is_main, start, setup.max_iters, setup.batch_size, info.device,
                                cfg.TRAIN.print_freq, cfg.TRAIN.tensorboard, show_progress=sys.stderr.isatty())
    try:
        with PreemptionSignal() as preemption:
            stats = train_loop(run.parts, run.step, run.step_context, checkpointer, settings, info, reporter, start,
                               hooks=[validator] if validator else [], preemption=preemption)
        if cfg.TRAIN.precise_bn_iters > 0:
            count = recalibrate_batchnorm(run.parts.model, run.parts.loader, cfg.TRAIN.precise_bn_iters, info, cfg.TRAIN.channels_last)
            log.info(f"re-estimated the running statistics of {count} BatchNorm layers over {cfg.TRAIN.precise_bn_iters} batches")
        if validator is not None:
            validator.finish()  # the last iteration's validation, when it waited for precise BN
    finally:
        reporter.close()
    if info.is_main:
        save_weights(unwrap_model(run.parts.model).state_dict(), run.meta, final_path)
        skipped = run.parts.loader.skipped_counts()
        log.info(
            f"finished: {final_path} ({stats.iterations} iterations in {stats.wall_seconds:.1f} s, "
            f"{stats.data_wait_seconds:.1f} s waiting for data; skipped bad samples on rank 0: {sum(skipped.values())})"
        )
    barrier(info)
    return final_path


def _acquire(output_dir: Path, info: DistInfo) -> OutputDirLock | None:
    """Rank 0 takes the directory; every rank learns whether it could."""
    lock, refused = None, None
    if info.is_main:
        try:
            lock = OutputDirLock(output_dir).acquire()
        except Exception as exc:  # noqa: BLE001 - re-raised below on every rank
            refused = exc
    message = broadcast_object(None if refused is None else str(refused), info)
    if refused is not None:
        raise refused
    if message is not None:
        raise ConfigError(message)
    return lock


def _sets_weights(overrides: dict[str, Any] | list[str]) -> bool:
    names = [parse_override(o)[0] for o in overrides] if isinstance(overrides, list) else list(overrides)
    return any(canonical_key(str(name)) == ("TRAIN", "weights") for name in names)


def run_training(cfg: Config, info: DistInfo) -> Path:
    """All stages (or ``TRAIN.stage``), each from the previous stage's weights; returns the final model."""
    output_dir = Path(cfg.TRAIN.output_dir) if cfg.TRAIN.output_dir else default_output_dir(cfg.TRAIN.exp_id)
    output_dir = Path(broadcast_object(str(output_dir), info))  # one date for every rank, even at midnight
    setup_logging(None, info.is_main)
    if cfg.dropped_mseg_keys:
        log.info(f"MSeg compatibility: ignored {len(cfg.dropped_mseg_keys)} keys that mean nothing here: {', '.join(cfg.dropped_mseg_keys)}")
    names = stage_names(cfg)
    if cfg.TRAIN.stage is not None and cfg.TRAIN.stage not in names:
        if not names:
            raise ConfigError(f"TRAIN.stage={cfg.TRAIN.stage!r} but {cfg.source} defines no STAGES")
        apply_stage(cfg, cfg.TRAIN.stage)  # raises the unknown-stage error with a suggestion
    lock = _acquire(output_dir, info)
    try:
        if not names:
            return run_stage(cfg.updated({"TRAIN.output_dir": str(output_dir)}), output_dir, info)
        if info.is_main:
            cfg.updated({"TRAIN.output_dir": str(output_dir)}).save(output_dir / "config.yaml")
        selected = names if cfg.TRAIN.stage is None else [cfg.TRAIN.stage]
        final = None
        for position, name in enumerate(selected):
            index = names.index(name)
            stage_cfg = apply_stage(cfg, name).updated({"TRAIN.output_dir": str(output_dir / name)})
            if position > 0:  # an explicit resume= names a checkpoint of the first stage run
                stage_cfg = stage_cfg.updated({"TRAIN.resume": None})
            hint = ""
            own_weights = _sets_weights(cfg.stages[index]["overrides"]) or (position == 0 and _sets_weights(cfg.overrides))
            if index > 0 and not own_weights:
                previous = output_dir / names[index - 1] / FINAL_NAME
                stage_cfg = stage_cfg.updated({"TRAIN.weights": str(previous)}, where=f"stage {name}")
                hint = (f"stage {name!r} starts from stage {names[index - 1]!r}'s weights {previous}, which do not exist: "
                        f"run stage={names[index - 1]} first (or all stages), or pass weights=PATH")
            final = run_stage(stage_cfg, output_dir / name, info, hint)
        if cfg.TRAIN.stage is None and final is not None and info.is_main:
            link_or_copy_atomic(final, output_dir / FINAL_NAME)  # the whole run's product where single runs put it
        barrier(info)
        return output_dir / FINAL_NAME if cfg.TRAIN.stage is None else final
    finally:
        if lock is not None:
            lock.release()
