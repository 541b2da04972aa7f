"""Per-trial CPU time of a study's trials: one process per trial vs one process for all (with and without reuse).

    python benchmarks/study_overhead.py offline --problems UnitTest,ItalyPowerDemand \\
        --arms minilm-pretrained,smollm2-L6-pretrained --seeds 0 --steps 10 --out runs/bench/study-overhead

Runs the same trials (a subset of a study: the problems, arms and seeds named, every learning rate), one
thread each, three ways, each into its own directory under ``--out``:

* ``separate``: one ``fpt fit --config TRIAL.yaml`` process per trial (what a hand-run script pays: a
  process start, the imports, the backbone's load, the task's data);
* ``one-process``: every trial in one fresh process, one after the other, each loading its backbone
  (``fpt sweep``'s local runner with --parallel 1);
* ``reused``: every trial in one fresh process with :func:`fpt.backbones.cache.reuse_backbones` (``fpt study``'s
  runner): each backbone identity loaded once, every trial a deep copy.

It prints the CPU seconds (user + system, of the processes, from ``getrusage``) and wall seconds per trial of
each way, and checks that every way gave the same test values (bit-identical results). Needs a quiet machine
for clean numbers: the machine's load is printed with them.

Measured (2026-12-02, the command above: 8 trials of 10 steps, one thread each, a 2-core machine at load 10-13,
so wall seconds are mostly waiting; CPU seconds are this benchmark's processes' own):

| way | CPU s per trial (process total) | of which in fit's training + tests | wall s per trial |
|---|---|---|---|
| separate (one process per trial) | 10.22 | 2.97 | 72.6 |
| one-process (each trial loads its backbone) | 4.46 | 3.10 | 17.1 |
| reused (fpt study: one load per backbone) | 4.33 | 3.04 | 16.6 |

Test values identical in every way. A process start and the imports cost ~5.8 CPU s per trial; fpt sweep's
local runner already paid them once per sweep; loading a backbone again costs ~0.1-1 s more than copying it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

RUNNER = r"""
import json, sys, time
from fpt.experiments.execute import execute_trial
trials = json.load(open(sys.argv[1]))
reuse = sys.argv[2] == "reused"
def run():
    for values in trials:
        cpu, wall = time.process_time(), time.time()
        outcome = execute_trial(values, values["run_dir"] + ".log")
        assert outcome["state"] != "failed", outcome
        print(json.dumps({"run_dir": values["run_dir"], "cpu": time.process_time() - cpu, "wall": time.time() - wall}),
              flush=True)
if reuse:
    from fpt.backbones.cache import reuse_backbones
    with reuse_backbones():
        run()
else:
    run()
"""


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("--problems", required=True)
    parser.add_argument("--arms", required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/bench/study-overhead")
    parser.add_argument("--steps", type=int, default=None, help="steps per trial instead of the study's (the "
                        "overhead per trial does not depend on it; the share of it does)")
    args = parser.parse_args()
    from fpt.experiments.study import load_study, make_study_plan

    study = load_study(args.study)
    problems, arms = args.problems.split(","), args.arms.split(",")
    study.problems = {p: study.problems[p] for p in problems}
    study.arms = {a: study.arms[a] for a in arms}
    study.seeds = [int(s) for s in args.seeds.split(",")]
    if args.steps:
        study.sets = {**study.sets, "steps": args.steps, "eval_every": max(1, args.steps // 2)}
    out = Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows, tests = {}, {}
    for way in ("separate", "one-process", "reused"):
        plan = make_study_plan(study, out / way, threads=1)
        trials = [t.values for _, t in plan.order]
        for v in trials:
            Path(v["run_dir"]).parent.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        cpu0, wall0 = children_cpu(), time.time()
        if way == "separate":
            for v in trials:
                path = Path(v["run_dir"] + ".yaml")
                path.write_text(yaml.safe_dump(v))
                subprocess.run([sys.executable, "-m", "fpt.cli", "fit", "--config", str(path), "--no-progress-bar"],
                               check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            spec = out / f"{way}.json"
            spec.write_text(json.dumps(trials))
            subprocess.run([sys.executable, "-c", RUNNER, str(spec), way], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        cpu, wall = children_cpu() - cpu0, time.time() - wall0
        fit_cpu = sum(json.loads(Path(v["run_dir"], "results.json").read_text()).get("cpu_seconds") or 0 for v in trials)
        rows[way] = (len(trials), cpu, wall, fit_cpu, load, (load + os.getloadavg()[0]) / 2)
        tests[way] = [json.loads(Path(v["run_dir"], "results.json").read_text()).get("test") for v in trials]
    print(f"{len(trials)} trials ({', '.join(problems)} x {', '.join(arms)} x lr {study.lrs} x seeds {study.seeds}, "
          f"{study.sets.get('steps')} steps), one thread each")
    print("| way | trials | CPU s per trial (process total) | of which in fit's training + tests | wall s per trial | load |")
    print("|---|---|---|---|---|---|")
    for way, (n, cpu, wall, fit_cpu, l0, l1) in rows.items():
        print(f"| {way} | {n} | {cpu / n:.2f} | {fit_cpu / n:.2f} | {wall / n:.2f} | {l0:.1f}-{l1:.1f} |")
    same = all(tests[w] == tests["separate"] for w in tests)
    print(f"test values identical in every way: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
