"""The ``fpt`` command line: fit, test, predict, bench, sweep, study, report, plot, list.

Examples::

    fpt fit --task bit-xor --backbone smollm2-135m --layers 2 --steps 1000 --run-dir runs/xor
    fpt fit --config bit-xor-small              # a shipped preset (fpt list shows them)
    fpt fit --resume runs/xor --steps 2000      # continue a run, e.g. to a later step count
    fpt test --run-dir runs/xor
    fpt predict --run-dir runs/mine --data new.npz --out preds.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from fpt.backbones import HUB_EXAMPLES, list_backbones
from fpt.backbones.freeze import ENCODER_ARCHITECTURES, PRESET_HELP, SUPPORTED_ARCHITECTURES
from fpt.bench import add_bench_parser
from fpt.bench import main as bench_main
from fpt.config.run import FIELDS, RESUMABLE, RunConfig
from fpt.config.files import (
    changed_options,
    is_shipped_preset,
    list_presets,
    load_config,
)
from fpt.runs.checkpoint import NonFiniteWeightsError
from fpt.data.cifar import UnsafePickleError
from fpt.data.store import DownloadError
from fpt.training.distributed import global_rank_from_env, shutdown_process_group
from fpt.cli.experiments import HANDLERS as EXPERIMENT_HANDLERS
from fpt.cli.experiments import add_parsers as add_experiment_parsers
from fpt.runs.health import NonFiniteGradientError, OutOfMemory, TrainingInterrupted
from fpt.base.io import WriteError
from fpt.base.options import base_kind, default_of, parse_text
from fpt.results.predict import CSV_COLUMNS, predict
from fpt.runs.rundir import RunLockedError
from fpt.experiments.files import list_experiments
from fpt.experiments.study import list_studies
from fpt.tasks import list_tasks
from fpt.config.files import assemble, assemble_config


def _parse_task_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"task options are KEY=VALUE, got {text!r} (e.g. -o n_bits=5)")
    key, value = text.split("=", 1)
    return key.strip(), parse_text(value)  # numbers and booleans as YAML reads them; never evaluated as code


_ARGPARSE_TYPES = {"int": int, "float": float}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def flag_help(f: dataclasses.Field) -> str:
    """A field's help text, its choices and its default (``fpt fit --help``; the README's option table)."""
    text = f.metadata["help"]
    default = default_of(f)
    if default not in (None, "", {}):
        text += f" (default: {str(default).lower() if isinstance(default, bool) else default})"
    return text


def option_table(names: list[str] | None = None) -> str:
    """A markdown table of options (all of them by default) from their declarations: docs/options.md and the
    README's main options are this (tests/test_docs.py checks both)."""
    rows = ["| option | YAML key | role | meaning |", "|---|---|---|---|"]
    for name in names or list(FIELDS):
        f = FIELDS[name]
        flag = f"`{flag_name(name)}`" if f.metadata.get("flag", True) else ("`-o KEY=VALUE`" if name == "task_options" else "-")
        rows.append(f"| {flag} | `{name}` | {f.metadata['role']} | {flag_help(f).replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def add_option_flags(parser: argparse.ArgumentParser, fields: dict[str, dataclasses.Field]) -> None:
    """One flag per declared option (``flag=False`` ones are YAML-only); every default is None (= not given)."""
    for name, f in fields.items():
        if f.metadata.get("flag", True) is False:
            continue
        kind, _ = base_kind(f.type)
        if kind == "bool":
            parser.add_argument(flag_name(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=flag_help(f))
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(flag_name(name), *f.metadata.get("aliases", ()), dest=name,
                                type=_ARGPARSE_TYPES.get(kind, str), default=None,
                                choices=None, metavar=("{" + ",".join(choices) + "}") if choices else None,
                                help=flag_help(f))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpt", description="Frozen Pretrained Transformers: fit, test, predict, bench, sweep, report, plot, list.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model, then test it",
                         description="Every option is also a YAML key (fpt/config/ declares them all).")
    fit.add_argument("--config", help="a YAML file or a shipped preset name; flags override it")
    fit.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint; options "
                     "that equal the run's own are accepted, and these may change: "
                     + ", ".join(flag_name(n) for n in sorted(RESUMABLE) if n != "run_dir"))
    fit.add_argument("-o", "--task-option", action="append", default=[], type=_parse_task_option, metavar="KEY=VALUE",
                     help="a task option, e.g. -o n_bits=5 -o patch_size=1 (repeatable)")
    add_option_flags(fit, FIELDS)
    fit.add_argument("--overwrite", action="store_true",
                     help="if --run-dir holds a run, move it aside to RUN_DIR.old-<timestamp> and start again")
    fit.add_argument("--no-progress-bar", action="store_true", help="no progress bar (one line per validation)")

    test = sub.add_parser("test", help="evaluate a finished run on its test split(s)")
    test.add_argument("--run-dir", required=True)

    pred = sub.add_parser("predict", help="classes and probabilities for new data with a trained run")
    pred.add_argument("--run-dir", required=True)
    pred.add_argument("--data", required=True, help=".npz with x (raw, as in training) and optionally y; "
                                                    "a .ts file for timeseries runs")
    pred.add_argument("--out", required=True, help=f"CSV to write, a regular file; columns: {CSV_COLUMNS}")
    pred.add_argument("--x-key", default=None, help="array name of the inputs (default: x, else x_test)")
    pred.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never the run's own files "
                                                                "or the input data)")
    pred.add_argument("--allow-other-scale", action="store_true",
                      help="predict even when the data's values are on another scale than the training inputs' "
                           "(recorded in RUN_DIR/prediction_layout.json; by default that is an error)")

    add_bench_parser(sub, _parse_task_option)
    add_experiment_parsers(sub)  # sweep, report, plot

    lst = sub.add_parser("list", help="tasks, backbones, freeze presets and shipped config presets")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _flags(args) -> dict[str, Any]:
    flags = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    if args.task_option:
        flags["task_options"] = dict(args.task_option)
    return flags


def resume_config(run_dir: Path, given: dict[str, Any], from_preset: set[str] | frozenset = frozenset()) -> RunConfig:
    """The run's own config with ``given`` on top. Options equal to the run's are accepted (re-running the
    original command with --resume appended works); of the others, only how and when it runs may change.
    ``from_preset``: keys a shipped preset gave, which a given ``--protocol`` overrides as for a new run."""
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
    config = load_config(run_dir / "config.yaml")
    if given.get("run_dir") is not None and Path(given["run_dir"]).resolve() != run_dir.resolve():
        raise ValueError(f"--resume {run_dir} and --run-dir {given['run_dir']} name different directories: give one")
    if "protocol" in given and from_preset:  # the preset's keys as the protocol set them when the run started
        from fpt.config.protocols import resolve

        given = {k: v for k, v in resolve(given, from_preset).items() if k in given or k == "task_options"}
    given = {**given, "run_dir": str(run_dir)}
    changed = changed_options(config, given)
    refused = {name: values for name, values in changed.items() if name not in RESUMABLE}
    if refused:
        set_by, hint = set(), ""
        if "protocol" not in given and config.protocol != FIELDS["protocol"].default:
            # the command says nothing of the protocol the run was made with, which set some of these options
            from fpt.config.protocols import settings_for

            set_by = {key.split(".")[0] for key in settings_for(config.to_dict())}
            refused = {"protocol": (config.protocol, f"{FIELDS['protocol'].default} (not given: the default)"),
                       **refused}
            hint = (f" The run was made with --protocol {config.protocol}: add --protocol {config.protocol} to the "
                    "command (the options it set then agree).")
        order = sorted(refused, key=lambda k: (k != "protocol", k))
        listed = "; ".join(f"{name}: the run has {refused[name][0]!r}, given {refused[name][1]!r}"
                           + (f" (set by --protocol {config.protocol})" if name in set_by else "") for name in order)
        raise ValueError(f"--resume continues a run with its own config; these options differ from the run's: {listed}."
                         f"{hint} Only {', '.join(sorted(RESUMABLE - {'run_dir'}))} may change (start a new run with "
                         f"another --run-dir for the others)")
    return assemble_config((config.to_dict(), set()), per_run=given)


def _fit(args) -> int:
    from fpt.training.fitting import fit

    if args.resume:
        if args.overwrite:
            raise ValueError("--resume continues the run in place; --overwrite starts a new one: use one of them")
        given, from_preset = assemble(args.config, _flags(args))  # the preset (if any) and flags, compared with the run's
        config = resume_config(Path(args.resume), given, from_preset)
        results = fit(config, resume=True, enable_progress_bar=not args.no_progress_bar and None)
    else:
        config = assemble_config(args.config, _flags(args))
        try:
            results = fit(config, enable_progress_bar=not args.no_progress_bar and None, overwrite=args.overwrite)
        except OSError as err:
            raise _with_offline_variant(err, args.config) from None
    test = results.get("test", {})
    if global_rank_from_env() != 0:  # torchrun / srun: every process gets here; rank 0 speaks
        return 0
    if "mse" in test:  # forecasting: z-scored, as published
        windows = (results.get("data") or {}).get("windows_counted", {}).get("test")
        headline = (f"test mse {test['mse']:.4f}  mae {test.get('mae', float('nan')):.4f} (z-scored; "
                    f"{windows} test windows, every one counted)" if windows else
                    f"test mse {test['mse']:.4f}  mae {test.get('mae', float('nan')):.4f} (z-scored)")
    elif "rmse" in test:
        headline = f"test rmse {test['rmse']:.6g}  mae {test.get('mae', float('nan')):.6g}"
    else:
        headline = (f"test accuracy {test.get('accuracy', float('nan')):.4f}  "
                    f"exact {test.get('exact_accuracy', float('nan')):.4f}")
    print(f"{headline}  ({results['steps']} steps, {results['seconds']:.0f} s, "
          f"{results['trainable_params']:,} trainable / {results['total_params']:,} params)")
    print(f"run directory: {config.run_dir}")
    return 0


def _with_offline_variant(err: OSError, preset: str | None) -> OSError:
    """A backbone that cannot be had offline: name the shipped SmolLM2 variant of the preset, if there is one."""
    if preset and is_shipped_preset(preset) and is_shipped_preset(f"{preset}-smollm2") \
            and getattr(err, "fpt_offline_backbone", False):
        return type(err)(f"{err}\nOffline, run the SmolLM2 variant of this preset instead: "
                         f"fpt fit --config {preset}-smollm2 (SmolLM2-135M-Instruct, 4-bit Q4_1 GGUF dequantised; "
                         "not the paper's GPT-2, and its report rows say so)")
    return err


def _test(args) -> int:
    from fpt.training.fitting import test_run

    metrics = test_run(args.run_dir)
    print(json.dumps(metrics, indent=2))
    return 0


def _predict(args) -> int:
    summary = predict(args.run_dir, args.data, args.out, x_key=args.x_key, overwrite=args.overwrite,
                      check_values=not args.allow_other_scale)
    accuracy = f", accuracy {summary['accuracy']:.4f} against the given labels" if "accuracy" in summary else ""
    if "rmse" in summary:  # regression
        accuracy = f", rmse {summary['rmse']:.6g}, mae {summary['mae']:.6g} against the given targets"
    if "horizon" in summary:  # forecasting
        print(f"wrote the next {summary['horizon']} steps of {summary['channels']} channels after row {summary['rows']} "
              f"of {args.data} to {summary['out']}")
        return 0
    print(f"wrote {summary['samples']} predictions to {summary['out']}{accuracy}")
    return 0


def _list(args) -> int:
    decoders = [a for a in SUPPORTED_ARCHITECTURES if a not in ENCODER_ARCHITECTURES and a != "lstm"]
    info = {"tasks": list_tasks(), "backbones": list_backbones(), "hub_examples": list(HUB_EXAMPLES),
            "families": {"decoders": decoders, "encoders": list(ENCODER_ARCHITECTURES)},
            "freeze_presets": PRESET_HELP, "config_presets": list_presets(), "experiments": list_experiments(),
            "studies": list_studies()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    sections = [("tasks", info["tasks"]), ("backbones", info["backbones"]), ("freeze presets", info["freeze_presets"]),
                ("config presets (fpt fit --config NAME)", info["config_presets"]),
                ("experiments (fpt sweep PRESET --experiment NAME)", info["experiments"]),
                ("studies (fpt study NAME)", info["studies"])]
    for title, entries in sections:
        print(f"{title}:")
        width = max((len(k) for k in entries), default=0)
        for key, text in entries.items():
            print(f"  {key:<{width}}  {text}")
    print("hub backbones (online, or cached): " + ", ".join(HUB_EXAMPLES) + ", or any local directory")
    print(f"families with a module map (config.model_type): decoders {', '.join(decoders)}; "
          f"encoders {', '.join(ENCODER_ARCHITECTURES)}; any other: freezing rules read from its modules where they "
          "are unambiguous (docs/backbones.md lists the families tested), else freeze_rules in the config")
    return 0


# The run failed (diverged, out of memory, a download failed its checksum, an unsafe pickle) or could
# not start (run directory in use): exit 1 with the message.
RUN_FAILURES = (NonFiniteGradientError, NonFiniteWeightsError, OutOfMemory, RunLockedError, DownloadError,
                UnsafePickleError, WriteError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"fit": _fit, "test": _test, "predict": _predict, "list": _list, "bench": bench_main,
               **EXPERIMENT_HANDLERS}[args.command]
    finished = False
    try:
        code = handler(args)
        finished = True
        return code
    except BrokenPipeError:
        # fpt list | head -1: the reader is gone. No traceback; 141 (128 + SIGPIPE, as a shell reports it): a
        # command cut short never exits 0 (the pipeline's status stays head's)
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes stdout
        except (OSError, ValueError):
            pass
        return 141
    except TrainingInterrupted as stop:
        # Stopped by Ctrl-C / SIGTERM after writing a checkpoint: 128 + signal (130 / 143), like a shell.
        print(f"fpt {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except RUN_FAILURES as err:
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
        shutdown_process_group(wait_for_peers=finished)


if __name__ == "__main__":
    sys.exit(main())
