"""One training run from a config: hold its directory, train each stage, write the final model.

:func:`run_training` holds ``output_dir`` (one run per directory) and runs the stages in order (each into
``<output_dir>/<stage>/``, from the previous stage's weights) or the single run; :func:`run_stage` trains one of
them: resume or start, the loop, precise BN, ``model_final.pth``. What a stage's config means is resolved once, with
every refusal, by :mod:`mseg_semantic.training.setup`; the command line is ``mseg_semantic/tool/train.py``.
``config.yaml`` is written once the run is accepted, with what it uses.
"""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from mseg_semantic.atomic import link_or_copy_atomic, remove_stale_temporaries
from mseg_semantic.config import Config, ConfigError, apply_stage, canonical_key, parse_override, stage_names
from mseg_semantic.data import demo_world
from mseg_semantic.distributed import DistInfo, barrier, broadcast_object
from mseg_semantic.evaluation.validation import build_validator
from mseg_semantic.model import save_weights, unwrap_model
from mseg_semantic.model.vit_seg import deployable_state_dict
from mseg_semantic.model.weights import WEIGHTS, ManualDownloadError, WeightsError, resolve_weights, weights_path
from mseg_semantic.training.checkpoint import CHECKPOINT_DIR, FINAL_NAME, Checkpointer, load_checkpoint
from mseg_semantic.training.lock import OutputDirLock
from mseg_semantic.training.loop import LoopSettings, recalibrate_batchnorm, train_loop
from mseg_semantic.training.preemption import PreemptionSignal
from mseg_semantic.training.report import TrainingReporter, active_loggers, check_loggers, setup_logging
from mseg_semantic.training.setup import (  # noqa: F401 - resolve_run, check_run and build_stage are this module's API too
    FIXED_ON_RESUME,
    RunSetup,
    StageRun,
    accept_resume,
    build_stage,
    check_run,
    plan_run,
    resolve_run,
    seed_everything,
)

log = logging.getLogger("mseg_semantic.training")

__all__ = ["FIXED_ON_RESUME", "RunSetup", "StageRun", "build_stage", "check_run", "resolve_run", "run_stage", "run_training"]


def default_output_dir(exp_id: str) -> Path:
    """``output/<YYYY-MM-DD>_<exp_id>``: re-running the same command on the same day resumes."""
    return Path("output") / f"{datetime.date.today().isoformat()}_{exp_id}"


def configure_kernels(device: torch.device, cpu_threads: int | None = None) -> None:
    """CPU: deterministic kernels (exact resume). GPU: cuDNN autotuning for the fixed crop size, which
    trades bit-exact repeatability for speed (atomics in upsampling backward are not deterministic anyway)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cpu_threads is not None and device.type == "cpu":
        torch.set_num_threads(cpu_threads)


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


def _downloaded(weights: str, info: DistInfo) -> str:
    """``TRAIN.weights`` as a file: a released name is downloaded on first use and verified by rank 0 while the others
    wait (one download into the shared cache); every rank raises rank 0's error."""
    if Path(weights).expanduser().is_file() or weights not in WEIGHTS:
        return weights
    failure = None
    if info.is_main:
        try:
            resolve_weights(weights, download=True)
        except ManualDownloadError as exc:  # a step for the user to take first: bad input for this run
            failure = ConfigError(f"TRAIN.weights={weights}: {exc} Or start from random weights: weights=null.")
        except Exception as exc:  # noqa: BLE001 - re-raised below on every rank
            failure = exc
    message = broadcast_object(None if failure is None else (str(failure), isinstance(failure, ConfigError)), info)
    if failure is not None:
        raise failure
    if message is not None:
        raise ConfigError(message[0]) if message[1] else WeightsError(message[0])
    return str(weights_path(weights))  # verified by rank 0 just now


def _start(cfg: Config, output_dir: Path, info: DistInfo, setup: RunSetup, weights_hint: str):
    """Resume or start: the config the stage uses, its parts, the checkpointer and the iteration it starts at."""
    checkpointer = Checkpointer(output_dir / CHECKPOINT_DIR, info, cfg.TRAIN.keep_checkpoints)
    checkpoint_path, checkpoint = find_checkpoint(cfg, checkpointer, info)
    if checkpoint is not None:
        own = checkpoint_path.resolve().parent == checkpointer.directory.resolve()
        cfg = accept_resume(cfg, checkpoint.get("config"), checkpoint_path, same_dir=own)
    weights = cfg.TRAIN.weights if checkpoint is None else None
    if weights and not Path(weights).expanduser().is_file() and weights_hint:
        raise ConfigError(weights_hint)
    run = build_stage(cfg, info, setup, _downloaded(weights, info) if weights else None)
    checkpointer.run_record = {"stage": cfg.TRAIN.stage, "config": cfg.to_dict(), "meta": run.meta}
    start = 0
    if checkpoint is not None:
        start = checkpointer.restore(run.parts, checkpoint, setup.max_iters, {k: cfg.TRAIN[k] for k in ("base_lr", "power", "momentum", "weight_decay")})
        checkpointer.set_aside_newer(start)
    log.info(
        f"{'resuming from ' + str(checkpoint_path) + ' at iteration ' + str(start) if checkpoint_path else 'starting'}: "
        f"{setup.max_iters} iterations, global batch {setup.batch_size} ({setup.batch_per_rank} per process x {info.world_size}), "
        f"{setup.precision}, {setup.model_taxonomy} taxonomy ({run.meta['num_classes']} classes), datasets {', '.join(setup.datasets)}, "
        f"method {setup.method}, loss {setup.loss}, device {info.device}, output {output_dir}")
    return cfg, run, checkpointer, start


def run_stage(cfg: Config, output_dir: Path, info: DistInfo, weights_hint: str = "", setup: RunSetup | None = None) -> Path:
    """Train one stage (or the single run) into ``output_dir``; returns the path of its ``model_final.pth``.

    ``weights_hint``: what to say when ``TRAIN.weights`` does not exist (a later stage names the earlier one);
    ``setup``: the stage resolved already (:func:`plan_run`), else resolved here.
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
    setup = setup or resolve_run(cfg, info.world_size, info.local_world_size)
    configure_kernels(info.device, cfg.TRAIN.cpu_threads)
    demo_world.write_if_asked(cfg.DATA, info)
    cfg, run, checkpointer, start = _start(cfg, output_dir, info, setup, weights_hint)
    # TRAIN.val_every: the validation hook, checked before the run is accepted; it logs through the reporter made below,
    # and its best score so far lives in run.parts.extra (checkpointed, restored on resume)
    validator = build_validator(cfg, run.parts.model, run.meta, run.parts.extra, output_dir, setup.max_iters, info,
                                lambda iteration, scalars: reporter.write_scalars(iteration, scalars), setup.catalog)
    if info.is_main:
        cfg.save(output_dir / "config.yaml")
    resume_hint = (f"run the command again without resume={cfg.TRAIN.resume} to resume (with it, the run would start from that "
                   f"checkpoint again)" if cfg.TRAIN.resume else LoopSettings.resume_hint)
    settings = LoopSettings(max_iters=setup.max_iters, checkpoint_every=cfg.TRAIN.checkpoint_every, grad_clip=cfg.TRAIN.grad_clip,
                            channels_last=cfg.TRAIN.channels_last, freeze_bn=cfg.TRAIN.freeze_bn, cuda_graphs=cfg.TRAIN.cuda_graphs,
                            resume_hint=resume_hint)
    reporter = TrainingReporter(output_dir, info.is_main, start, setup.max_iters, setup.batch_size, info.device,
                                cfg.TRAIN.print_freq, show_progress=sys.stderr.isatty(), loggers=active_loggers(cfg.TRAIN),
                                run_name=cfg.TRAIN.exp_id + (f"/{cfg.TRAIN.stage}" if cfg.TRAIN.stage else ""), run_config=cfg.to_dict())
    try:
        # the handler stays until model_final.pth is written: a signal after the last iteration stops precise BN (the
        # last checkpoint is complete) or lets the final save finish
        with PreemptionSignal() as preemption:
            stats = train_loop(run.parts, run.step, run.step_context, checkpointer, settings, info, reporter, start,
                               hooks=[validator] if validator else [], preemption=preemption)
            if cfg.TRAIN.precise_bn_iters > 0:
                count = recalibrate_batchnorm(run.parts.model, run.parts.loader, cfg.TRAIN.precise_bn_iters, info, cfg.TRAIN.channels_last,
                                              preemption, resume_hint)
                log.info(f"re-estimated the running statistics of {count} BatchNorm layers over {cfg.TRAIN.precise_bn_iters} batches")
            if validator is not None:
                validator.finish()  # the last iteration's validation, when it waited for precise BN
            if info.is_main:
                save_weights(deployable_state_dict(unwrap_model(run.parts.model)), run.meta, final_path)  # LoRA merged
            if preemption.received:
                log.info(f"received {preemption.received} after the last iteration; the run is complete: {final_path}")
    finally:
        reporter.close()
    if info.is_main:
        skipped = run.parts.loader.skipped_counts()
        log.info(f"finished: {final_path} ({stats.iterations} iterations in {stats.wall_seconds:.1f} s, "
                 f"{stats.data_wait_seconds:.1f} s waiting for data; skipped bad samples on rank 0: {sum(skipped.values())})")
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


def _stage_config(cfg: Config, names: list[str], name: str, position: int, output_dir: Path) -> tuple[Config, str]:
    """A stage's config (its overrides, its output folder, the previous stage's weights) and what to say when those
    weights are missing."""
    index = names.index(name)
    stage_cfg = apply_stage(cfg, name).updated({"TRAIN.output_dir": str(output_dir / name)})
    if position > 0:  # an explicit resume= names a checkpoint of the first stage run
        stage_cfg = stage_cfg.updated({"TRAIN.resume": None})
    own_weights = _sets_weights(cfg.stages[index]["overrides"]) or (position == 0 and _sets_weights(cfg.overrides))
    if index == 0 or own_weights:
        return stage_cfg, ""
    previous = output_dir / names[index - 1] / FINAL_NAME
    hint = (f"stage {name!r} starts from stage {names[index - 1]!r}'s weights {previous}, which do not exist: "
            f"run stage={names[index - 1]} first (or all stages), or pass weights=PATH")
    return stage_cfg.updated({"TRAIN.weights": str(previous)}, where=f"stage {name}"), hint


def run_training(cfg: Config, info: DistInfo, plan: dict[str | None, RunSetup] | None = None) -> Path:
    """All stages (or ``TRAIN.stage``), each from the previous stage's weights; returns the final model. ``plan``:
    the stages resolved already (:func:`~mseg_semantic.training.setup.plan_run`)."""
    output_dir = Path(cfg.TRAIN.output_dir) if cfg.TRAIN.output_dir else default_output_dir(cfg.TRAIN.exp_id)
    output_dir = Path(broadcast_object(str(output_dir), info))  # one date for every rank, even at midnight
    setup_logging(None, info.is_main)
    if cfg.dropped_mseg_keys:
        log.info(f"MSeg compatibility: ignored {len(cfg.dropped_mseg_keys)} keys that mean nothing here: {', '.join(cfg.dropped_mseg_keys)}")
    plan = plan or plan_run(cfg, info.world_size, info.local_world_size)  # an unknown stage name raises here, with a suggestion
    check_loggers(active_loggers(cfg.TRAIN))  # a tracking package missing: one line before anything is written
    names = stage_names(cfg)
    lock = _acquire(output_dir, info)
    try:
        if not names:
            return run_stage(cfg.updated({"TRAIN.output_dir": str(output_dir)}), output_dir, info, setup=plan[None])
        if info.is_main:
            cfg.updated({"TRAIN.output_dir": str(output_dir)}).save(output_dir / "config.yaml")
        final = None
        for position, name in enumerate(plan):
            stage_cfg, hint = _stage_config(cfg, names, name, position, output_dir)
            final = run_stage(stage_cfg, output_dir / name, info, hint, plan[name])
        if cfg.TRAIN.stage is None and final is not None and info.is_main:
            link_or_copy_atomic(final, output_dir / FINAL_NAME)  # the whole run's product where single runs put it
        barrier(info)
        return output_dir / FINAL_NAME if cfg.TRAIN.stage is None else final
    finally:
        if lock is not None:
            lock.release()
