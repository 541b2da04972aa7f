"""fit and test_run: one run trained and tested with Lightning (the loop, precision, checkpoints, logging, resume).

``fit(config)`` trains and tests one run and writes, in ``config.run_dir``:

* ``config.yaml``: the resolved configuration;
* ``metrics.csv``: every logged value (Lightning's CSVLogger);
* ``checkpoints/last.ckpt``: the resume state (trained parameters + optimizer + loop state only;
  the frozen backbone is rebuilt from its identity, never stored);
* ``model.safetensors``: the trained parameters and, in its metadata, the backbone's identity;
* ``results.json``: task, backbone, init, freeze, layers, steps, seed, parameter counts, seconds,
  device, and the validation and test metrics.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from fpt.model import fastpath
from fpt.training.best import BEST_WEIGHTS, BestValidationWeights
from fpt.training.threads import AdaptiveThreads
from fpt.training.callbacks import PhaseTracker
from fpt.training.stopping import GracefulStop
from fpt.runs.checkpoint import (
    NonFiniteWeightsError,
    check_compatible,
    checkpoint_step,
    keep_choices,
    load_run,
    read_checkpoint,
    save_checkpoint_file,
    save_prediction_layout,
    save_trained,
)
from fpt.config.run import FIELDS, RunConfig
from fpt.base.text import plural
from fpt.config.files import save_config
from fpt.base.cpu import threads_beside
from fpt.training.distributed import global_rank_from_env, local_processes
from fpt.runs.health import NonFiniteGradientError, StopForSignal, TrainingInterrupted, is_out_of_memory, out_of_memory_error
from fpt.base.io import WRITE_ERRNOS, WriteError, atomic_write_json, write_error
from fpt.runs.rundir import RunLock, is_run_dir, is_unstarted_run, prepare_run_dir
from fpt.training.module import FPTModule
from fpt.training.results import _results
from fpt.training.trainer import _health_callbacks, _quiet_lightning, _trainer, resolve_device


def fit(config: RunConfig, resume: bool = False, enable_progress_bar: bool | None = None,
        overwrite: bool = False, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train, test and write the run directory; returns the contents of ``results.json``.

    ``callbacks``: more Lightning callbacks for this run (e.g. ``fpt bench``'s step timer).

    An existing run in ``config.run_dir`` is never overwritten: ``resume=True`` continues it,
    ``overwrite=True`` moves it aside to ``RUN_DIR.old-<timestamp>`` first. The run directory is
    locked (``RUN_DIR/.lock``) while this runs. SIGINT/SIGTERM save a checkpoint and raise
    :class:`fpt.runs.health.TrainingInterrupted`.
    """
    _quiet_lightning()
    config.validate()
    if config.data_dir and not Path(config.data_dir).expanduser().is_dir():  # else silently ignored by the tasks
        raise FileNotFoundError(f"--data-dir {config.data_dir}: no such directory; give the directory holding the "
                                "task's dataset files, or leave it out (then $FPT_DATA_DIR, then the cache)")
    run_dir = Path(config.run_dir or config.default_run_dir())
    config.run_dir = str(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    # Under torchrun / srun every process runs this function; only rank 0 checks and writes the run
    # directory (another rank could otherwise find rank 0's fresh config.yaml and refuse to start).
    rank_zero = global_rank_from_env() == 0
    adaptive = None
    if resolve_device(config)[0] == "cpu":
        threads = fastpath.cpu_threads(config.num_threads, local_processes(config))
        if fastpath.threads_are_fpts_choice(config.num_threads) and local_processes(config) == 1:
            # threads follow the cores other processes leave free, at the start and while training (fpt.base.cpu)
            adaptive = AdaptiveThreads(most=threads)
            time.sleep(0.25)
            threads = threads_beside(adaptive.load.cpus(), threads)
        torch.set_num_threads(threads)
    checkpoint = None
    if resume:
        checkpoint = read_checkpoint(last)  # missing, truncated, foreign: a clear error before any work
        keep_choices(config, (checkpoint.get("fpt") or {}).get("fast_path"))  # resumes computing as it ran
    if rank_zero:  # only checks (a run there, a file in the way, read-only or full), moves nothing yet
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, move=False, config=config)
    if rank_zero:
        RunLock(run_dir).check()  # a live run in this directory: say so before the slow model build
    L.seed_everything(config.seed, workers=True, verbose=False)
    start = time.time()
    # Build task and model before writing anything: a bad option (task, preset, --layers) must not
    # leave a config.yaml behind that makes the run directory refuse the corrected command.
    module = FPTModule(config)
    if module.objective.kind != "classification":
        given = [flag for flag, on in (("--stop-at-target", config.stop_at_target),
                                       ("--target-accuracy", config.target_accuracy != FIELDS["target_accuracy"].default))
                 if on]
        if given:  # they read validation accuracy, which a regression run does not have
            raise ValueError(f"{' and '.join(given)} read validation accuracy, but {config.task} here is "
                             f"{module.objective.kind} (validation {module.objective.metric}): they would be ignored. "
                             "Drop them; the run keeps the weights of its best validation point (best.safetensors)")
    module.run_start = start
    counts = module.model.parameter_counts()
    if rank_zero:
        print(f"fpt: {config.task} on {config.backbone} ({config.init}, {plural(module.model.backbone.num_layers, 'layer')}), "
              f"freeze={config.freeze}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
              f"({100 * counts['trainable'] / counts['total']:.3f}%)", flush=True)
        if module.model.inferred_rules_yaml:  # said once per run: what froze, as the rules a user could write
            rules = "\n".join("  " + line for line in module.model.inferred_rules_yaml.splitlines())
            print(f"fpt: {module.model.backbone.arch} has no entry in fpt's module map; freezing rules read from its "
                  f"modules (put them in the config to change them):\n{rules}", flush=True)
        if config.steps % config.eval_every:  # the last step is always validated (fpt.training.callbacks.ResumeCheckpoint)
            when_ = (f"every {config.eval_every} steps and at the last step ({config.steps})"
                     if config.steps > config.eval_every else f"at the last step ({config.steps}) only: --steps "
                     f"{config.steps} is below --eval-every {config.eval_every}")
            print(f"fpt: validating {when_}", flush=True)
        print(module.plan.describe(), flush=True)  # every choice of the fast path, and why
    resumed_step = None
    if checkpoint is not None:  # refuse another backbone or task shape before config.yaml is overwritten
        check_compatible(checkpoint["fpt"], module.model, str(last))
        resumed_step = int(checkpoint["global_step"])
        if resumed_step > config.steps:  # checked before config.yaml is rewritten
            raise ValueError(f"--resume {run_dir}: the run is at step {resumed_step} already: --steps {config.steps} "
                             f"would train nothing (config.yaml is left as it is). To continue it, give --steps above "
                             f"{resumed_step}")
        checkpoint = None
    lock = _take_run_dir(run_dir, resume, overwrite) if rank_zero else RunLock(run_dir)
    try:
        return _fit_locked(config, module, run_dir, resume, resumed_step, enable_progress_bar, rank_zero, start,
                           list(callbacks or []) + ([adaptive] if adaptive else []))
    finally:
        lock.release()


def _take_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Rank 0, once every option has been checked: move an old run aside (``--overwrite``) and lock the directory."""
    unstarted = not resume and is_unstarted_run(run_dir)
    moved = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if unstarted:
        print(f"fpt: {run_dir} held a run that ended before its first checkpoint (nothing to resume); starting "
              "afresh there" + (f" (its files moved to {moved})" if moved is not None else ""), flush=True)
    elif moved is not None:
        print(f"fpt: --overwrite: moved the previous run in {run_dir} to {moved}", flush=True)
    lock = RunLock(run_dir).acquire()
    if lock.took_over:
        print(f"fpt: removed a stale lock of pid {lock.took_over.get('pid')} (no longer running) in {run_dir}", flush=True)
    if not resume and is_run_dir(run_dir):  # another run finished in between the check and the lock
        lock.release()
        prepare_run_dir(run_dir, resume=False, overwrite=False, move=False)
    return lock


def _checkpoint_note(last: Path, config: RunConfig) -> str:
    """Which step the last good checkpoint holds, for error messages."""
    if not last.exists():
        return (f" No checkpoint had been written yet (the first is taken at step {config.eval_every}), so there is "
                "nothing to resume: fix the cause and run the command again (the directory is reused).")
    step = checkpoint_step(last)
    if step is None:
        return ""
    return (f" It holds step {step}. A resumed run repeats the same steps with the same settings, so fix the cause "
            f"in a new run (another --run-dir, or --overwrite) unless it was transient.")


def _train(trainer: L.Trainer, module: FPTModule, config: RunConfig, last: Path, resume: bool, stopper: GracefulStop,
           phases: PhaseTracker, resume_command: str) -> None:
    """``trainer.fit``, with its ways of ending turned into fpt's errors (each says what to do)."""
    try:
        with stopper.installed():
            trainer.fit(module, ckpt_path=str(last) if resume else None, weights_only=True)
    except StopForSignal as stop:
        name = signal.Signals(stop.signum).name
        raise TrainingInterrupted(
            f"stopped by {name} at step {stop.step} of {config.steps}; checkpoint written to {last}.\n"
            f"Resume with: {resume_command}", stop.signum, stop.step, resume_command) from None
    except NonFiniteGradientError as err:
        raise NonFiniteGradientError(str(err) + _checkpoint_note(last, config)) from None
    except NonFiniteWeightsError as err:
        raise NonFiniteWeightsError(str(err) + _checkpoint_note(last, config)) from None
    except OSError as err:
        if isinstance(err, WriteError) or err.errno in WRITE_ERRNOS:  # e.g. metrics.csv on a full disk
            raise WriteError(f"{write_error(err, err.filename or last.parent.parent)}.{_checkpoint_note(last, config)}") \
                from None
        raise
    except Exception as err:
        if is_out_of_memory(err):
            raise out_of_memory_error(err, phases.phase, config) from err
        raise
    # A signal after the last checkpoint: stop before testing (one process; with several, the ranks could
    # disagree here, so they test together: the run is complete and the test takes seconds).
    if stopper.signum is not None and trainer.world_size <= 1:
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(stopper.signum).name} after the last training step ({trainer.global_step}); "
            f"checkpoint written to {last}, the test did not run.\nResume with: {resume_command}",
            stopper.signum, int(trainer.global_step), resume_command)


def _save_trained_state(trainer: L.Trainer, module: FPTModule, config: RunConfig, run_dir: Path, last: Path) -> None:
    """The end of training on disk: fpt's counters in last.ckpt, model.safetensors, the prediction layout."""
    # ResumeCheckpoint wrote the end state (optimizer, loops) inside the loop (a checkpoint taken after
    # trainer.fit returns holds a finished epoch, which resumes with every logged step one late);
    # refresh fpt's own counters (best_val, first_step_at_target) in it.
    if trainer.is_global_zero and last.exists():
        checkpoint = read_checkpoint(last)
        checkpoint["fpt"] = module.checkpoint_meta()
        save_checkpoint_file(checkpoint, last)  # temp file + fsync + rename
    trained = None
    if config.strategy == "fsdp":  # parameters are sharded: gather full ones (every rank takes part; rank 0 gets them)
        names = set(module.model.trainable_state_dict())
        full = trainer.strategy.lightning_module_state_dict()
        trained = {k[len("model."):]: v for k, v in full.items() if k[len("model."):] in names}
    if trainer.is_global_zero:
        save_trained(module.model, run_dir / "model.safetensors", trained=trained, step=int(trainer.global_step))
        save_prediction_layout(module.task, run_dir)


def _fit_locked(config, module, run_dir: Path, resume: bool, resumed_step, enable_progress_bar, rank_zero, start,
                user_callbacks: list[Callback]):
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(err, run_dir) from None
    if rank_zero:
        save_config(config, run_dir / "config.yaml")
    stopper, phases, chance = _health_callbacks(config, module, last)
    # the trained weights of the best validation (best.safetensors), tested at the end too
    best = BestValidationWeights(run_dir / BEST_WEIGHTS, metric=f"val/{module.objective.metric}",
                                 higher_is_better=module.objective.higher_is_better,
                                 enabled=config.strategy != "fsdp")
    # best before the checkpoint writers (its best step is in each checkpoint); the stopper last: its
    # checkpoint must include the state of every other callback
    callbacks = [phases, *([chance] if chance else []), best, *user_callbacks, stopper]
    trainer = _trainer(config, run_dir, enable_progress_bar, resumed_step, extra_callbacks=callbacks)
    _train(trainer, module, config, last, resume, stopper, phases, f"fpt fit --resume {run_dir} --steps {config.steps}")
    _save_trained_state(trainer, module, config, run_dir, last)
    train_seconds = time.time() - start
    try:
        with stopper.installed():  # a signal now lets the test finish (seconds): the run completes
            test_metrics = _test(trainer, module)
            at_best = best.test_at_best(trainer, module, test_metrics)  # the test at the best validation
    except Exception as err:
        if is_out_of_memory(err):
            raise out_of_memory_error(err, "test", config) from err
        raise
    results = _results(config, module, trainer, test_metrics, train_seconds, time.time() - start)
    module.task.adjust_test_metrics({k: v for k, v in at_best.items() if isinstance(v, dict)})  # e.g. homology's
    results["at_best_val"] = at_best
    if chance is not None and chance.message:
        results["warnings"] = [chance.message]
    adaptive = next((c for c in user_callbacks if isinstance(c, AdaptiveThreads)), None)
    if adaptive is not None:  # the threads this invocation started with, and each change (other jobs came or went)
        results["cpu_threads"] = {"start": adaptive.start_threads, "changes": adaptive.changes}
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "results.json", results)
    return results


def _test(trainer: L.Trainer, module: FPTModule) -> dict[str, dict[str, float]]:
    out = trainer.test(module, verbose=False)
    metrics: dict[str, dict[str, float]] = {}
    merged = {k: v for d in out for k, v in d.items()}
    for key, value in merged.items():
        split, name = key.split("/", 1)
        metrics.setdefault(split, {})[name] = float(value)
    return metrics


def test_run(run_dir: str | Path, enable_progress_bar: bool | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run on its test splits (``fpt test``); updates nothing on disk."""
    _quiet_lightning()
    config, model = load_run(run_dir)
    module = FPTModule(config, model=model)
    accelerator, precision = resolve_device(config)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                        enable_progress_bar=bool(enable_progress_bar), enable_model_summary=False)
    return _test(trainer, module)
