"""The ``fpt`` command line: ``fpt fit``, ``fpt test``, ``fpt list``.

Examples::

    fpt fit --task bit-xor --backbone smollm2-135m --layers 2 --steps 1000 --run-dir runs/xor
    fpt fit --config bit-xor-small              # a shipped preset (fpt list shows them)
    fpt fit --resume runs/xor --steps 2000      # continue a run, e.g. to a later step count
    fpt test --run-dir runs/xor
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
    "task": (str, "task name (fpt list)"),
    "backbone": (str, "smollm2-135m (offline default), lstm, a Hugging Face id (gpt2, EleutherAI/pythia-160m) or a local dir"),
    "init": (str, "pretrained | random"),
    "layers": (int, "keep only the first K blocks"),
    "freeze": (str, "freeze preset: fpt, output-only, +ln, +input, +pos, +ff, +attn, full"),
    "steps": (int, "optimizer steps"),
    "batch_size": (int, "global batch size"),
    "lr": (float, "Adam learning rate"),
    "weight_decay": (float, "decoupled weight decay"),
    "grad_clip": (float, "gradient-norm clip (0: off)"),
    "max_bad_steps": (int, "stop after this many consecutive steps with a non-finite gradient norm"),
    "seed": (int, "seed of data, held-out sets and new layers"),
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
    "attn_implementation": (str, "sdpa | eager"),
    "label": (str, "free text shown in reports"),
}
_BOOL_FLAGS = {
    "stop_at_target": "stop once validation accuracy reaches --target-accuracy",
    "learned_positions": "learned position table for RoPE backbones (--no-learned-positions to turn off)",
    "trust_remote_code": "allow running Python code shipped with a hub model",
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
    parser = argparse.ArgumentParser(prog="fpt", description="Frozen Pretrained Transformers: train, test, list.")
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
    fit.add_argument("--no-progress-bar", action="store_true", help="no progress bar (one line per validation)")

    test = sub.add_parser("test", help="evaluate a finished run on its test split(s)")
    test.add_argument("--run-dir", required=True)

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
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
        allowed = {"steps", "eval_every", "num_workers", "device", "devices", "precision", "stop_at_target"}
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
        base = read_yaml(args.config) if args.config else {}
        config = build_config(merge(base, flags))
        results = fit(config, enable_progress_bar=not args.no_progress_bar and None)
    test = results.get("test", {})
    print(f"test accuracy {test.get('accuracy', float('nan')):.4f}  exact {test.get('exact_accuracy', float('nan')):.4f}  "
          f"({results['steps']} steps, {results['seconds']:.0f} s, "
          f"{results['trainable_params']:,} trainable / {results['total_params']:,} params)")
    print(f"run directory: {config.run_dir}")
    return 0


def _test(args) -> int:
    from fpt.training import test_run

    metrics = test_run(args.run_dir)
    print(json.dumps(metrics, indent=2))
    return 0


def _list(args) -> int:
    from fpt.backbones import HUB_EXAMPLES, list_backbones
    from fpt.backbones.freeze import PRESET_HELP
    from fpt.config import list_presets
    from fpt.tasks import list_tasks

    info = {"tasks": list_tasks(), "backbones": list_backbones(), "hub_examples": list(HUB_EXAMPLES),
            "freeze_presets": PRESET_HELP, "config_presets": list_presets()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    sections = [("tasks", info["tasks"]), ("backbones", info["backbones"]), ("freeze presets", info["freeze_presets"]),
                ("config presets (fpt fit --config NAME)", info["config_presets"])]
    for title, entries in sections:
        print(f"{title}:")
        width = max((len(k) for k in entries), default=0)
        for key, text in entries.items():
            print(f"  {key:<{width}}  {text}")
    print("hub backbones (online, or cached): " + ", ".join(HUB_EXAMPLES) + ", or any local directory")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"fit": _fit, "test": _test, "list": _list}[args.command]
    try:
        return handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        # Errors a user can cause: say what is wrong and what to do, without a traceback.
        print(f"fpt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
