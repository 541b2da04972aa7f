"""Command-line parts of ``fpt sweep``, ``fpt study``, ``fpt report`` and ``fpt plot`` (wired into :mod:`fpt.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fpt.config.run import argument_type
from fpt.results.figures import plot_run
from fpt.experiments.study import is_study_dir
from fpt.experiments.study_cli import add_study_parser, study_main
from fpt.experiments.study_report import write_study_report
from fpt.results.rows import metrics_cut_mid_row
from fpt.results.report import write_report
from fpt.experiments.slurm import LAUNCHERS, SlurmOptions, launch
from fpt.experiments.plan import describe_plan, make_plan
from fpt.experiments.status import format_status, sweep_status
from fpt.experiments.files import parse_assignment
from fpt.experiments.execute import run_plan
from fpt.experiments.summary import summarize_dir


def _assignment(many: bool):
    def parse(text: str):
        try:
            return parse_assignment(text, many)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _add_launcher_flags(parser) -> None:
    """--launcher and the --slurm-* flags (fpt sweep, fpt study)."""
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                       help="local: a process pool here (--parallel); slurm: every pending trial a SLURM job (an "
                            "array), through submitit; submitit-local: the same without a scheduler (fpt/experiments/slurm.py)")
    parser.add_argument("--no-wait", action="store_true", help="slurm: submit and return; follow with --status")
    slurm = SlurmOptions()
    parser.add_argument("--slurm-partition", help="sbatch --partition")
    parser.add_argument("--slurm-time", default=slurm.time, help="time limit per trial: minutes or [D-]HH:MM[:SS]; "
                                                                 "near it the trial checkpoints and is requeued")
    parser.add_argument("--slurm-cpus-per-task", type=int, help="CPUs per trial (default: --threads, else the cluster's)")
    parser.add_argument("--slurm-gpus-per-task", type=int, help="GPUs per trial")
    parser.add_argument("--slurm-array-parallelism", type=int, default=slurm.array_parallelism,
                       help="trials running at once")
    parser.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before each trial, e.g. 'module load cuda' (repeatable)")
    parser.add_argument("--slurm-signal-delay", type=int, default=slurm.signal_delay,
                       help="seconds before the time limit at which the trial checkpoints (SIGUSR2) to be requeued")
    parser.add_argument("--slurm-max-requeue", type=int, default=slurm.max_requeue,
                       help="requeues after a time limit (preempted trials are always requeued)")
    parser.add_argument("--slurm-option", action="append", default=[], type=_assignment(False), metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --slurm-option account=myproj --slurm-option qos=high")


def add_parsers(sub) -> None:
    sweep = sub.add_parser(
        "sweep", help="many runs of a preset (grid x seeds x experiment variants), best setting chosen on validation",
        description="One run directory per trial under the sweep directory; the best setting is chosen on the mean "
                    "validation value over seeds (the highest accuracy; for regression, the lowest RMSE) and its test "
                    "value reported as mean +- std. Re-running the same command skips finished trials and resumes "
                    "interrupted ones.",
        epilog="Examples: fpt sweep bit-xor-small --lr 1e-4,1e-3,1e-2 --seeds 3 | "
               "fpt sweep bit-xor-small --experiment table1 | "
               "fpt sweep bit-xor-small --grid init=pretrained,random --grid layers=1,2 --set steps=300. "
               "Experiments: fpt list.")
    sweep.add_argument("preset", nargs="?", help="a shipped preset (fpt list) or a YAML config file; with "
                                                  "--summarize, a sweep directory")
    sweep.add_argument("--experiment", "-e", help="named variants from fpt/presets/experiments (fpt list), e.g. table1")
    sweep.add_argument("--lr", help="learning rates, comma separated (shorthand for --grid lr=...)")
    sweep.add_argument("--grid", action="append", default=[], type=_assignment(True), metavar="KEY=V1,V2",
                       help="sweep any option (repeatable; cartesian product), e.g. --grid init=pretrained,random, "
                            "--grid task_options.n_bits=5,10")
    sweep.add_argument("--set", dest="sets", action="append", default=[], type=_assignment(False), metavar="KEY=VALUE",
                       help="fix an option for every trial, e.g. --set steps=300 --set task_options.n_bits=8")
    sweep.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per setting (default 1, or the experiment's)")
    sweep.add_argument("--sweep-dir", help="where trials go (default runs/sweeps/<preset>[-<experiment>][-<swept keys>])")
    sweep.add_argument("--parallel", type=int, default=1, help="trials run at once, each in its own process")
    sweep.add_argument("--threads", "--num-threads", dest="threads", type=argument_type("num_threads"), default=None,
                       help="CPU threads per trial, an integer >= 1 (fpt fit's --num-threads; default: physical cores / "
                            "--parallel)")
    sweep.add_argument("--dry-run", action="store_true", help="print the trials and their state; run nothing")
    sweep.add_argument("--status", metavar="SWEEP_DIR", help="trials pending / running / finished / failed / "
                                                             "interrupted, from the sweep directory's files; runs nothing")
    sweep.add_argument("--summarize", action="store_true", help="fpt sweep SWEEP_DIR --summarize: rebuild sweep.json "
                                                                "and sweep.md from the trial directories; runs nothing")
    _add_launcher_flags(sweep)

    report = sub.add_parser("report", help="markdown/CSV table of runs next to the paper's numbers, plus figures")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, sweeps or folders of runs")
    report.add_argument("--out", default="report", help="output directory (report.md, report.csv, *.png)")
    report.add_argument("--no-attention", action="store_true", help="skip the Bit XOR attention maps")

    plot = sub.add_parser("plot", help="figures of one run: learning curve, attention maps for Bit XOR")
    plot.add_argument("run_dir", metavar="RUN_DIR")
    plot.add_argument("--out", default=None, help="output directory (default RUN_DIR/figures)")

    add_study_parser(sub, _add_launcher_flags)


def _slurm_options(args) -> SlurmOptions:
    return SlurmOptions(
        partition=args.slurm_partition, time=args.slurm_time, cpus_per_task=args.slurm_cpus_per_task or args.threads,
        gpus_per_task=args.slurm_gpus_per_task, array_parallelism=args.slurm_array_parallelism,
        setup=list(args.slurm_setup), signal_delay=args.slurm_signal_delay, max_requeue=args.slurm_max_requeue,
        sbatch={k: str(v) for k, v in args.slurm_option},
        cluster="local" if args.launcher == "submitit-local" else "slurm")


def sweep_main(args) -> int:
    if args.status:
        if args.preset or args.summarize:
            raise ValueError("--status SWEEP_DIR takes no preset and no --summarize")
        print(format_status(sweep_status(args.status)))
        return 0
    if args.summarize:
        if not args.preset:
            raise ValueError("usage: fpt sweep SWEEP_DIR --summarize")
        summary = summarize_dir(args.preset)
        print((Path(args.preset) / "sweep.md").read_text())
        return 0 if summary["complete"] else 1
    if not args.preset:
        raise ValueError("fpt sweep needs a preset or config file (or --status SWEEP_DIR, or SWEEP_DIR --summarize)")
    if args.launcher == "local" and args.no_wait:
        raise ValueError("--no-wait is for --launcher slurm (the local launcher runs the trials in this command)")
    if args.launcher != "local" and args.parallel != 1:
        raise ValueError("--parallel is for --launcher local; with slurm, --slurm-array-parallelism")
    grid = dict(args.grid)
    if args.lr:
        if "lr" in grid:
            raise ValueError("give learning rates with --lr or --grid lr=..., not both")
        grid["lr"] = parse_assignment(f"lr={args.lr}", True)[1]
    if args.parallel < 1:
        raise ValueError("--parallel must be >= 1")
    argv = sys.argv[1:] if sys.argv and sys.argv[0].endswith("fpt") else None
    command = "fpt " + " ".join(argv) if argv else ""
    plan = make_plan(args.preset, experiment=args.experiment, grid=grid, seeds=args.seeds, sets=dict(args.sets),
                     sweep_dir=args.sweep_dir, threads=args.threads, parallel=args.parallel, command=command)
    print(describe_plan(plan))
    if args.dry_run:
        return 0
    if args.launcher == "local":
        summary = _run_local(plan, args.parallel, command or "fpt " + " ".join(sys.argv[1:]))
    else:
        summary = launch(plan, _slurm_options(args), wait=not args.no_wait)
        if summary is None:  # submitted, not waiting
            return 0
    print()
    print((plan.sweep_dir / "sweep.md").read_text())
    print(f"sweep directory: {plan.sweep_dir} (sweep.json, sweep.md; fpt report {plan.sweep_dir} for figures)")
    return 0 if summary["complete"] else 1


def _run_local(plan, parallel: int, command: str):
    """:func:`fpt.sweep.run_plan`; stopped by Ctrl-C / SIGTERM, the advice is the sweep's own command (finished
    trials are skipped, the stopped one resumes), not the trial's ``fpt fit --resume``."""
    from fpt.runs.health import TrainingInterrupted

    again = (f"Continue the sweep by running the same command again: {command} (finished trials are skipped; "
             "the stopped one resumes from its checkpoint)")
    try:
        return run_plan(plan, parallel=parallel)
    except TrainingInterrupted as stop:
        raise TrainingInterrupted(f"{str(stop).splitlines()[0]}\n{again}", stop.signum, stop.step, command) from None
    except KeyboardInterrupt:
        print(f"fpt sweep: interrupted. {again}", file=sys.stderr)
        raise


def report_main(args) -> int:
    if len(args.runs) == 1 and is_study_dir(args.runs[0]):  # a study directory: the study's statistics
        out = write_study_report(args.runs[0], args.out)
        print(open(out["markdown"]).read())
        print(f"report: {out['markdown']}")
        return 0
    out = write_report(args.runs, args.out, attention=not args.no_attention)
    print(open(out["markdown"]).read())
    for path in out["figures"].values():
        print(f"figure: {path}")
    for line in out["skipped"]:
        print(f"no attention map for {line}", file=sys.stderr)
    print(f"report: {out['markdown']}, {out['csv']}")
    return 0


def plot_main(args) -> int:
    if metrics_cut_mid_row(args.run_dir):
        print(f"fpt plot: note: the last row of {Path(args.run_dir) / 'metrics.csv'} is cut mid-row (the run was killed "
              "or the disk filled while it was written); the curve leaves it out", file=sys.stderr)
    for name, path in plot_run(args.run_dir, args.out).items():
        print(f"{name}: {path}")
    return 0


HANDLERS = {"sweep": sweep_main, "report": report_main, "plot": plot_main,
            "study": lambda args: study_main(args, _slurm_options)}
