"""The ``fpt`` command line: fit, test, predict, bench, sweep, report, plot, list.

Examples::

    fpt fit --task bit-xor --backbone smollm2-135m --layers 2 --steps 1000 --run-dir runs/xor
    fpt fit --config bit-xor-small              # a shipped preset (fpt list shows them)
    fpt fit --resume runs/xor --steps 2000      # continue a run, e.g. to a later step count
    fpt test --run-dir runs/xor
    fpt predict --run-dir runs/mine --data new.npz --out preds.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

# Command-line flags that map one-to-one onto RunConfig fields: flag -> (type, help).
_FIT_FLAGS: dict[str, tuple[Any, str]] = {
    "protocol": (str, "fpt (default, corrected) | paper: the 2021 code's behaviour (docs/paper-fidelity.md); "
                      "flags and your own YAML keys still override what it sets"),
    "task": (str, "task name (fpt list)"),
    "backbone": (str, "smollm2-135m (offline default), lstm, a Hugging Face id (gpt2, EleutherAI/pythia-160m), a local dir, "
                      "or run:RUN_DIR (a finished run's trained backbone, e.g. trained on bit-memory with --freeze full)"),
    "init": (str, "pretrained | random"),
    "layers": (int, "keep only the first K blocks"),
    "freeze": (str, "freeze preset: fpt, output-only, +ln, +input, +pos, +ff, +attn, full"),
    "steps": (int, "optimizer steps"),
    "batch_size": (int, "global batch size"),
    "accumulate_grad_batches": (int, "micro-batches of --batch-size per optimizer step (effective batch = batch size x this)"),
    "lr": (float, "Adam learning rate"),
    "weight_decay": (float, "decoupled weight decay"),
    "grad_clip": (float, "gradient-norm clip (0: off)"),
    "max_bad_steps": (int, "stop after this many consecutive steps with a non-finite gradient norm"),
    "chance_warning_evals": (int, "warn if validation accuracy is at chance for the first K validations (0: never)"),
    "seed": (int, "seed of the training stream, generated held-out sets, random init and new layers"),
    "eval_every": (int, "steps between validations and checkpoints"),
    "eval_batch_size": (int, "batch size for validation and test"),
    "target_accuracy": (float, "record the first step where validation accuracy reaches this"),
    "run_dir": (str, "where the run writes its files"),
    "data_dir": (str, "directory holding the task's dataset files"),
    "device": (str, "auto | cpu | cuda"),
    "devices": (int, "devices per node (DDP when > 1)"),
    "precision": (str, "auto | 32-true | bf16-mixed | 16-mixed"),
    "num_workers": (int, "data loader worker processes"),
    "readout": (str, "last | mean | tokens (default: the task's)"),
    "lstm_width": (int, "hidden size of the lstm backbone"),
    "lstm_kind": (str, "torch (nn.LSTM) | layernorm (the 2021 code's layer-norm LSTM)"),
    "input_dropout": (float, "dropout after a continuous input layer (the 2021 code: 0.1)"),
    "backbone_dropout": (str, "dropout inside the backbone: a probability, or keep (its own; GPT-2: 0.1)"),
    "input_init": (str, "embedding (token-embedding scale) | paper (the 2021 code's init of the new layers)"),
    "attn_implementation": (str, "sdpa | eager"),
    "label": (str, "free text shown in reports"),
    "num_nodes": (int, "machines (launch with torchrun or srun; README: Performance and scale)"),
    "strategy": (str, "auto | ddp | fsdp"),
    "compile": (str, "torch.compile the backbone: auto (on CUDA) | true | false"),
    "fused_optimizer": (str, "fused Adam with sync-free skipping of non-finite steps: auto (on CUDA) | true | false"),
    "num_threads": (int, "CPU threads (default: physical cores / processes)"),
    "cache_train_samples": (int, "with --cache-features on a generated task: training samples to cache (0: steps x batch size)"),
    "cache_memory_mb": (int, "with --cache-features: larger caches go to RUN_DIR/features (memory-mapped)"),
}
_BOOL_FLAGS = {
    "stop_at_target": "stop once validation accuracy reaches --target-accuracy",
    "learned_positions": "learned position table for RoPE backbones (--no-learned-positions to turn off)",
    "trust_remote_code": "allow running Python code shipped with a hub model",
    "cache_features": "freeze output-only: compute the frozen outputs once and train the head on them",
}


def _parse_task_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"task options are KEY=VALUE, got {text!r} (e.g. -o n_bits=5)")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value)  # numbers and booleans as YAML reads them; never evaluated as code
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpt", description="Frozen Pretrained Transformers: fit, test, predict, bench, sweep, report, plot, list.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model, then test it", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fit.add_argument("--config", help="a YAML file or a shipped preset name; flags override it")
    fit.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    fit.add_argument("-o", "--task-option", action="append", default=[], type=_parse_task_option, metavar="KEY=VALUE",
                     help="a task option, e.g. -o n_bits=5 -o patch_size=1 (repeatable)")
    for name, (kind, help_text) in _FIT_FLAGS.items():
        fit.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=help_text)
    for name, help_text in _BOOL_FLAGS.items():
        fit.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction, default=None,
                         help=help_text)
    fit.add_argument("--overwrite", action="store_true",
                     help="if --run-dir holds a run, move it aside to RUN_DIR.old-<timestamp> and start again")
    fit.add_argument("--no-progress-bar", action="store_true", help="no progress bar (one line per validation)")

    test = sub.add_parser("test", help="evaluate a finished run on its test split(s)")
    test.add_argument("--run-dir", required=True)

    pred = sub.add_parser("predict", help="classes and probabilities for new data with a trained run")
    pred.add_argument("--run-dir", required=True)
    pred.add_argument("--data", required=True, help=".npz with x (raw, as in training) and optionally y")
    pred.add_argument("--out", required=True, help="CSV to write: index, prediction, p0..pC-1 (, label)")
    pred.add_argument("--x-key", default=None, help="array name of the inputs (default: x, else x_test)")

    from fpt.bench import add_bench_parser

    add_bench_parser(sub, _parse_task_option)

    from fpt.experiment_cli import add_parsers as add_experiment_parsers  # sweep, report, plot

    add_experiment_parsers(sub)

    lst = sub.add_parser("list", help="tasks, backbones, freeze presets and shipped config presets")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _fit(args) -> int:
    from fpt.config import build_config, load_config, merge, read_yaml
    from fpt.training import fit

    flags = {name: getattr(args, name) for name in list(_FIT_FLAGS) + list(_BOOL_FLAGS) if getattr(args, name) is not None}
    if args.task_option:
        flags["task_options"] = dict(args.task_option)
    if args.resume:
        run_dir = Path(args.resume)
        if args.overwrite:
            raise ValueError("--resume continues the run in place; --overwrite starts a new one: use one of them")
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
        allowed = {"steps", "eval_every", "num_workers", "device", "devices", "precision", "stop_at_target",
                   "num_nodes", "strategy", "compile", "fused_optimizer", "num_threads"}
        changed = sorted(set(flags) - allowed)
        if changed or args.config:
            raise ValueError(f"--resume continues a run with its own config; only {', '.join(sorted(allowed))} "
                             f"may change (got {', '.join(changed) or '--config'})")
        config = load_config(run_dir / "config.yaml")
        values = merge(config.to_dict(), flags)
        values["run_dir"] = str(run_dir)
        config = build_config(values)
        results = fit(config, resume=True, enable_progress_bar=not args.no_progress_bar and None)
    else:
        from fpt.config import is_shipped_preset, preset_keys

        base = read_yaml(args.config) if args.config else {}
        # A shipped preset's keys may be overridden by --protocol; your own YAML file's keys may not.
        overridable = preset_keys(base) - preset_keys(flags) if args.config and is_shipped_preset(args.config) else set()
        config = build_config(merge(base, flags), overridable)
        try:
            results = fit(config, enable_progress_bar=not args.no_progress_bar and None, overwrite=args.overwrite)
        except OSError as err:
            raise _with_offline_variant(err, args.config) from None
    test = results.get("test", {})
    from fpt.distributed import global_rank_from_env

    if global_rank_from_env() != 0:  # torchrun / srun: every process gets here; rank 0 speaks
        return 0
    print(f"test accuracy {test.get('accuracy', float('nan')):.4f}  exact {test.get('exact_accuracy', float('nan')):.4f}  "
          f"({results['steps']} steps, {results['seconds']:.0f} s, "
          f"{results['trainable_params']:,} trainable / {results['total_params']:,} params)")
    print(f"run directory: {config.run_dir}")
    return 0


def _with_offline_variant(err: OSError, preset: str | None) -> OSError:
    """A backbone that cannot be had offline: name the shipped SmolLM2 variant of the preset, if there is one."""
    from fpt.config import is_shipped_preset

    if preset and is_shipped_preset(preset) and is_shipped_preset(f"{preset}-smollm2") \
            and getattr(err, "fpt_offline_backbone", False):
        return type(err)(f"{err}\nOffline, run the SmolLM2 variant of this preset instead: "
                         f"fpt fit --config {preset}-smollm2 (SmolLM2-135M-Instruct, 4-bit Q4_1 GGUF dequantised; "
                         "not the paper's GPT-2, and its report rows say so)")
    return err


def _test(args) -> int:
    from fpt.training import test_run

    metrics = test_run(args.run_dir)
    print(json.dumps(metrics, indent=2))
    return 0


def _predict(args) -> int:
    from fpt.predict import predict

    summary = predict(args.run_dir, args.data, args.out, x_key=args.x_key)
    accuracy = f", accuracy {summary['accuracy']:.4f} against the given labels" if "accuracy" in summary else ""
    print(f"wrote {summary['samples']} predictions to {summary['out']}{accuracy}")
    return 0


def _list(args) -> int:
    from fpt.backbones import HUB_EXAMPLES, list_backbones
    from fpt.backbones.freeze import PRESET_HELP
    from fpt.config import list_presets
    from fpt.tasks import list_tasks

    info = {"tasks": list_tasks(), "backbones": list_backbones(), "hub_examples": list(HUB_EXAMPLES),
            "freeze_presets": PRESET_HELP, "config_presets": list_presets()}
    from fpt.sweep import list_experiments

    info["experiments"] = list_experiments()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    sections = [("tasks", info["tasks"]), ("backbones", info["backbones"]), ("freeze presets", info["freeze_presets"]),
                ("config presets (fpt fit --config NAME)", info["config_presets"]),
                ("experiments (fpt sweep PRESET --experiment NAME)", info["experiments"])]
    for title, entries in sections:
        print(f"{title}:")
        width = max((len(k) for k in entries), default=0)
        for key, text in entries.items():
            print(f"  {key:<{width}}  {text}")
    print("hub backbones (online, or cached): " + ", ".join(HUB_EXAMPLES) + ", or any local directory")
    return 0


def _interrupted():  # an except clause's types are evaluated only when an exception arrives
    from fpt.health import TrainingInterrupted

    return TrainingInterrupted


def _run_failures() -> tuple[type, ...]:
    from fpt.data.cifar import UnsafePickleError
    from fpt.data.store import DownloadError
    from fpt.health import OutOfMemory
    from fpt.rundir import RunLockedError
    from fpt.training import NonFiniteGradientError

    return (NonFiniteGradientError, OutOfMemory, RunLockedError, DownloadError, UnsafePickleError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fpt.bench import main as _bench

    from fpt.experiment_cli import HANDLERS as _experiment_handlers

    handler = {"fit": _fit, "test": _test, "predict": _predict, "list": _list, "bench": _bench,
               **_experiment_handlers}[args.command]
    finished = False
    try:
        code = handler(args)
        finished = True
        return code
    except _interrupted() as stop:
        # Stopped by Ctrl-C / SIGTERM after writing a checkpoint: 128 + signal (130 / 143), like a shell.
        print(f"fpt {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except _run_failures() as err:
        # The run failed (diverged, out of memory, a download failed its checksum, an unsafe pickle)
        # or could not start (run directory in use): say so, without a traceback.
        print(f"fpt {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        # Errors a user can cause: say what is wrong and what to do, without a traceback.
        print(f"fpt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fpt: interrupted", file=sys.stderr)
        return 130
    finally:
        from fpt.distributed import shutdown_process_group

        shutdown_process_group(wait_for_peers=finished)


if __name__ == "__main__":
    sys.exit(main())
