"""The ``fpt study`` command (wired into :mod:`fpt.cli.main` through :mod:`fpt.cli.experiments`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from fpt.config.run import argument_type
from fpt.experiments.study import (
    describe_study, launch_study, load_study, make_study_plan, run_study, save_study, study_status,
)


def add_study_parser(sub, add_launcher_flags: Callable) -> None:
    study = sub.add_parser(
        "study", help="does pretraining help here? many problems x arms x seeds x lr, with the statistics",
        description="Plans every trial of a study file (problems x arms x learning rates x seeds), chooses each "
                    "(problem, arm)'s learning rate on validation, runs the trials (one process loads each backbone "
                    "once), resumes what is unfinished, and reports per-problem means with 95%% intervals, mean ranks, "
                    "paired Wilcoxon tests and a critical-difference diagram. Re-running the same command skips "
                    "finished trials.",
        epilog="Examples: fpt study offline --threads 1 | fpt study offline --status | "
               "fpt study offline --report --out docs/reports/study. Shipped studies: fpt list.")
    study.add_argument("file", help="a study YAML file, or a shipped study's name (fpt/presets/studies)")
    study.add_argument("--study-dir", help="where the trials go (default runs/studies/<study name>)")
    study.add_argument("--parallel", type=int, default=1, help="worker processes (each loads every backbone once)")
    study.add_argument("--threads", "--num-threads", dest="threads", type=argument_type("num_threads"), default=None,
                       help="CPU threads per trial, an integer >= 1 (fpt fit's --num-threads; default: physical cores / "
                            "--parallel)")
    study.add_argument("--dry-run", action="store_true", help="print every trial in its order and its state; run nothing")
    study.add_argument("--status", action="store_true", help="trials finished / left per problem and the ETA; runs nothing")
    study.add_argument("--report", action="store_true", help="write the study's report from what has finished; "
                                                             "runs nothing")
    study.add_argument("--out", default=None, help="--report: output directory (default STUDY_DIR/report)")
    add_launcher_flags(study)


def study_main(args, slurm_options: Callable) -> int:
    from fpt.experiments.study_report import write_study_report

    if args.parallel < 1:
        raise ValueError("--parallel must be >= 1")
    if args.launcher != "local" and args.parallel != 1:
        raise ValueError("--parallel is for --launcher local; with slurm, --slurm-array-parallelism")
    study = load_study(args.file)
    argv = sys.argv[1:] if sys.argv and sys.argv[0].endswith("fpt") else None
    command = "fpt " + " ".join(argv) if argv else ""
    plan = make_study_plan(study, args.study_dir, threads=args.threads, parallel=args.parallel, command=command)
    if args.report:
        save_study(plan)
        out = write_study_report(plan.root, args.out or plan.root / "report")
        print(Path(out["markdown"]).read_text())
        print(f"report: {out['markdown']}")
        return 0
    if args.status:
        print(study_status(plan))
        return 0
    if args.dry_run:
        print(describe_study(plan))
        return 0
    if args.launcher != "local":
        finished = launch_study(plan, slurm_options(args), wait=not args.no_wait)
        print(f"follow them with  fpt study {args.file} --status" + (f" --study-dir {args.study_dir}" if args.study_dir else "")
              if args.no_wait else f"study directory: {plan.root} (fpt study {args.file} --report)")
        return 0 if finished or args.no_wait else 1
    if args.no_wait:
        raise ValueError("--no-wait is for --launcher slurm (the local launcher runs the trials in this command)")
    summaries = run_study(plan, parallel=args.parallel)
    complete = all(s["complete"] for s in summaries.values())
    print(f"study directory: {plan.root} (fpt study {args.file} --report, or fpt report {plan.root})")
    return 0 if complete else 1
