"""fpt study: the study file, the plan and its order, the in-process runner (backbones loaded once, results
bit-identical to a trial run alone), resuming, progress, and the statistics of the report against scipy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fpt.backbones.cache import BackboneCache, reuse_backbones
from fpt.backbones.backbone import BuildOptions
from fpt.results import statistics

scipy_stats = pytest.importorskip("scipy.stats")


# -- statistics against scipy on fixed numbers ------------------------------------------------------
def test_interval_is_scipys_t_interval():
    values = [0.81, 0.84, 0.79, 0.90]
    iv = statistics.interval(values)
    mean = sum(values) / 4
    low, high = scipy_stats.t.interval(0.95, 3, loc=mean, scale=scipy_stats.sem(values))
    assert iv.n == 4 and iv.mean == pytest.approx(mean)
    assert iv.std == pytest.approx(float(__import__("numpy").std(values, ddof=1)))
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    one = statistics.interval([0.5])
    assert one.std is None and one.low is None and one.mean == 0.5


def test_welch_is_scipys_unequal_variance_t_test():
    a, b = [0.42, 0.41, 0.43], [0.48, 0.50, 0.47]
    w = statistics.welch(a, b)
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = expected.confidence_interval(0.95)
    assert w.difference == pytest.approx(sum(a) / 3 - sum(b) / 3) and w.p == pytest.approx(expected.pvalue)
    assert (w.low, w.high) == (pytest.approx(ci.low), pytest.approx(ci.high)) and (w.n_a, w.n_b) == (3, 3)
    assert statistics.welch_verdict(w, True, "pretrained", "random").startswith("pretrained better (p = ")
    assert statistics.welch_verdict(w, False, "pretrained", "random").startswith("random better")
    one = statistics.welch([0.4], b)
    assert one.p is None and "a test needs 2 a side" in statistics.welch_verdict(one, True, "x", "y")
    close = statistics.welch([0.40, 0.45, 0.41], [0.42, 0.44, 0.40])
    assert statistics.welch_verdict(close, True, "x", "y").startswith("cannot tell (p = ")


def test_ranks_and_friedman_match_scipy():
    table = {"p1": {"a": 0.9, "b": 0.8, "c": 0.8}, "p2": {"a": 0.7, "b": 0.75, "c": 0.6},
             "p3": {"a": 0.3, "b": 0.2, "c": 0.1}, "p4": {"a": 0.05, "b": 0.04, "c": 0.06}}
    higher = {"p1": True, "p2": True, "p3": True, "p4": False}  # p4: an RMSE, lower is better
    ranks, n = statistics.mean_ranks(table, higher, ["a", "b", "c"])
    # p1: a 1, b/c 2.5; p2: b 1, a 2, c 3; p3: a 1, b 2, c 3; p4: b 1, a 2, c 3
    assert n == 4 and ranks == {"a": pytest.approx(6 / 4), "b": pytest.approx(6.5 / 4), "c": pytest.approx(11.5 / 4)}
    f = statistics.friedman_nemenyi(table, higher, ["a", "b", "c"])
    oriented = [[table[p][x] if higher[p] else -table[p][x] for p in table] for x in "abc"]
    expected = scipy_stats.friedmanchisquare(*oriented)
    assert f.statistic == pytest.approx(expected.statistic) and f.p == pytest.approx(expected.pvalue)
    # Demsar (2006), Table 5: q_0.05 for k = 3 classifiers is 2.343
    assert f.critical_difference == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)), abs=2e-3)
    assert f.nemenyi is not None and f.nemenyi.shape == (3, 3)
    # a missing score leaves the problem out of ranks and tests
    table["p5"] = {"a": 0.5, "b": None, "c": 0.4}
    higher["p5"] = True
    assert statistics.mean_ranks(table, higher, ["a", "b", "c"])[1] == 4


def test_paired_is_scipys_wilcoxon_with_wins_ties_losses():
    diffs = {"p1": 3.0, "p2": -1.0, "p3": 0.0, "p4": 2.5, "p5": 4.0, "p6": 0.5, "p7": 1.5, "p8": 6.0}
    r = statistics.paired("x", "y", diffs)
    assert (r.wins, r.ties, r.losses, r.n) == (6, 1, 1, 7)
    expected = scipy_stats.wilcoxon([d for d in diffs.values() if d != 0])
    assert r.statistic == pytest.approx(expected.statistic) and r.p == pytest.approx(expected.pvalue)
    assert r.min_p == pytest.approx(2 / 2 ** 7)


def test_the_sentence_follows_the_numbers():
    ups = {f"p{i}": 1.0 + i for i in range(8)}
    word, sentence = statistics.verdict(statistics.paired("pre", "rand", ups), "pretraining")
    assert word == "helps" and sentence.startswith("pretraining helps") and "n = 8" in sentence
    downs = {k: -v for k, v in ups.items()}
    word, sentence = statistics.verdict(statistics.paired("pre", "rand", downs), "pretraining")
    assert word == "hurts" and "worse on 8" in sentence
    mixed = {k: (v if i % 2 else -v) for i, (k, v) in enumerate(ups.items())}
    word, sentence = statistics.verdict(statistics.paired("pre", "rand", mixed), "pretraining")
    assert word == "cannot tell" and "is not below 0.05" in sentence
    few = {f"p{i}": 1.0 + i for i in range(5)}  # all five positive: p = 0.0625, the smallest n = 5 allows
    word, sentence = statistics.verdict(statistics.paired("pre", "rand", few), "pretraining")
    assert word == "cannot tell" and "at least 6 problems" in sentence
    ties = {"p1": 0.0, "p2": 0.0}
    word, sentence = statistics.verdict(statistics.paired("pre", "rand", ties), "pretraining")
    assert word == "cannot tell" and "every problem is a tie" in sentence
    word, sentence = statistics.verdict(statistics.paired("pre", "rand", {}), "pretraining")
    assert word == "cannot tell" and "no problem" in sentence


# -- the backbone cache ---------------------------------------------------------------------------
def test_cache_key_ignores_the_seed_only_for_pretrained_weights():
    key = BackboneCache.key
    assert key("m", BuildOptions(init="pretrained", seed=0)) == key("m", BuildOptions(init="pretrained", seed=3))
    assert key("m", BuildOptions(init="random", seed=0)) != key("m", BuildOptions(init="random", seed=3))
    assert key("m", BuildOptions(layers=2)) != key("m", BuildOptions(layers=3))


def test_reuse_loads_once_and_hands_out_independent_copies():
    import torch

    from fpt.backbones import load_backbone

    with reuse_backbones() as cache:
        a = load_backbone("lstm", init="random", layers=1, lstm_width=8, seed=1)
        b = load_backbone("lstm", init="random", layers=1, lstm_width=8, seed=1)
        c = load_backbone("lstm", init="random", layers=1, lstm_width=8, seed=2)
        assert (cache.loads, cache.hits) == (2, 1)
        pa, pb = next(a.parameters()), next(b.parameters())
        assert pa is not pb and torch.equal(pa, pb)
        with torch.no_grad():
            pa.add_(1.0)  # a trial training its copy leaves the kept one and the others alone
        assert not torch.equal(pa, pb)
        d = load_backbone("lstm", init="random", layers=1, lstm_width=8, seed=1)
        assert torch.equal(next(d.parameters()), pb)
        assert not torch.equal(next(c.parameters()), pb)
    fresh = load_backbone("lstm", init="random", layers=1, lstm_width=8, seed=1)
    assert torch.equal(next(fresh.parameters()), pb)


# -- the study file and its plan ----------------------------------------------------------------------
def _study_file(tmp_path: Path, backbone: str, **extra) -> Path:
    trial = {"task": "bit-xor", "steps": 4, "batch_size": 8, "eval_every": 2, "eval_batch_size": 16, "device": "cpu"}
    study = {
        "problems": {
            "xor3": {**trial, "task_options": {"n_bits": 3, "val_samples": 16, "test_samples": 16}},
            "xor4": {**trial, "task_options": {"n_bits": 4, "val_samples": 16, "test_samples": 16}},
        },
        "arms": {"pre": {"backbone": backbone, "init": "pretrained"}, "rand": {"backbone": backbone, "init": "random"}},
        "pairs": [["pre", "rand"]], "seeds": 2, "lr": [1.0e-3], **extra,
    }
    path = tmp_path / "tiny-study.yaml"
    path.write_text("# A two-problem, two-arm, two-seed study of tiny models.\n" + yaml.safe_dump(study))
    return path


def test_study_file_errors_say_what_is_wrong(tmp_path, pretrained_dirs):
    from fpt.experiments.study import load_study

    good = yaml.safe_load(_study_file(tmp_path, pretrained_dirs["gpt2"]).read_text())
    cases = [({"arms": {**good["arms"], "bad": {"lr": 0.1}}}, "the study's lr grid"),
             ({"pairs": [["pre", "nope"]]}, "names no arm 'nope'"),
             ({"colour": 1}, "unknown keys ['colour']"),
             ({"problems": {"x": {"steps": 3}}}, "needs a 'preset'"),
             ({"lr": []}, "learning-rate grid")]
    for change, message in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_study(path)
    with pytest.raises(FileNotFoundError, match="Shipped studies: offline"):
        load_study("ofline")


def test_order_is_seed_then_problem_then_arm_then_lr(tmp_path, pretrained_dirs):
    from fpt.experiments.study import load_study, make_study_plan

    study = load_study(_study_file(tmp_path, pretrained_dirs["gpt2"], lr=[1.0e-3, 1.0e-2]))
    plan = make_study_plan(study, tmp_path / "s")
    got = [(t.seed, p, t.variant, t.params["lr"]) for p, t in plan.order]
    assert got == [(s, p, a, lr) for s in (0, 1) for p in ("xor3", "xor4") for a in ("pre", "rand")
                   for lr in (1.0e-3, 1.0e-2)]
    assert plan.order[0][1].run_dir == tmp_path / "s" / "xor3" / "pre_lr=0.001" / "s0"


def test_progress_estimates_from_measured_times(tmp_path, pretrained_dirs):
    from fpt.experiments.study import Progress, load_study, make_study_plan

    plan = make_study_plan(load_study(_study_file(tmp_path, pretrained_dirs["gpt2"])), tmp_path / "s")
    progress = Progress(plan)
    assert progress.eta_seconds() is None and "after the first trial" in progress.line()
    (_, t0), (_, t1) = plan.order[0], plan.order[1]  # xor3 pre s0, xor3 rand s0
    progress.record("xor3", t0, 10.0, True)
    progress.record("xor3", t1, 30.0, True)
    assert progress.estimate("xor3", "pre") == 10.0 and progress.estimate("xor4", "rand") == 30.0
    progress.record("xor4", plan.order[2][1], 20.0, True)  # xor4 pre: twice xor3's pre
    assert progress.estimate("xor4", "rand") == pytest.approx(30.0 * 2)  # rand's xor3 time, scaled by 20 / 10
    # left: xor4 rand s0, then seed 1 of xor3 pre, xor3 rand, xor4 pre, xor4 rand
    assert progress.eta_seconds() == pytest.approx(60 + 10 + 30 + 20 + 60)
    assert "3/8 trials finished, 5 left; ETA 3 min" in progress.line()


def test_shipped_study_covers_every_aeon_problem_and_plans(tmp_path):
    from fpt.data import aeon
    from fpt.experiments.study import list_studies, load_study, make_study_plan

    assert "offline" in list_studies()
    study = load_study("offline")
    named = {spec["task_options"]["name"] for spec in study.problems.values() if spec.get("task") == "timeseries"}
    variants = {"Covid3Month_disc", "JapaneseVowels_eq", "PickupGestureWiimoteZ_eq"}  # the same data again
    bundled = set(aeon.bundled_problems())
    if not bundled:
        pytest.skip("the aeon wheel is not installed (make install puts it in)")
    assert named | variants == bundled and not named & variants
    plan = make_study_plan(study, tmp_path / "offline", threads=1)  # every trial's config is valid
    assert len(plan.order) == len(study.problems) * 5 * 2 * 3


# -- the acceptance test: a two-problem, two-arm, two-seed study, then a re-run ------------------------
def test_study_runs_resumes_and_reports(tmp_path, pretrained_dirs, capsys):
    from fpt.cli.main import main

    path = _study_file(tmp_path, pretrained_dirs["gpt2"])
    root = tmp_path / "study"
    assert main(["study", str(path), "--study-dir", str(root), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "8 trials" in out and "0/8 trials finished, 8 left" in out and "8/8 trials finished, 0 left; done" in out
    timing = (root / "trials.jsonl").read_text().splitlines()
    assert len(timing) == 8 and len({json.loads(line)["pid"] for line in timing}) == 1  # one process for all
    results = sorted(root.glob("*/*/s*/results.json"))
    assert len(results) == 8
    stamps = {p: p.stat().st_mtime_ns for p in results}

    assert main(["study", str(path), "--study-dir", str(root), "--threads", "1"]) == 0  # the same command again
    out = capsys.readouterr().out
    assert "8/8 trials finished, 0 left; done" in out and "for 0 trials" in out
    assert len((root / "trials.jsonl").read_text().splitlines()) == 8  # nothing ran
    assert {p: p.stat().st_mtime_ns for p in results} == stamps

    assert main(["study", str(path), "--study-dir", str(root), "--status"]) == 0
    assert "8 finished" in capsys.readouterr().out
    assert main(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| xor3 | accuracy | 0,1 |" in report and "pretraining (pre vs rand)" in report
    assert "at least 6 problems" in report  # two problems: the test cannot decide, and says why
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["pairs"][0]["problems"] == ["xor3", "xor4"]
    assert (tmp_path / "report" / "pairs.png").stat().st_size > 0


def test_in_process_trials_are_bit_identical_to_separate_processes(tmp_path, pretrained_dirs):
    """A trial whose backbone came from the cache (a copy of one loaded for an earlier trial) gives the same
    weights and numbers as the same trial in a process of its own."""
    from safetensors.torch import load_file

    from fpt.experiments.study import load_study, make_study_plan, run_study

    study = load_study(_study_file(tmp_path, pretrained_dirs["gpt2"]))
    plan = make_study_plan(study, tmp_path / "study", threads=1)
    run_study(plan, echo=lambda _: None)
    # seed 1 of xor4: both arms' backbones were loaded before (pretrained: at seed 0; random: the same seed at xor3)
    chosen = [t for p, t in plan.order if p == "xor4" and t.seed == 1]
    for trial in chosen:
        values = {**trial.values, "run_dir": str(tmp_path / "alone" / trial.setting)}
        config = tmp_path / f"{trial.setting}.yaml"
        config.write_text(yaml.safe_dump(values))
        subprocess.run([sys.executable, "-m", "fpt.cli", "fit", "--config", str(config), "--no-progress-bar"],
                       check=True, capture_output=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        alone, cached = Path(values["run_dir"]), trial.run_dir
        a, b = load_file(str(alone / "model.safetensors")), load_file(str(cached / "model.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
        ra, rb = (json.loads((d / "results.json").read_text()) for d in (alone, cached))
        for key in ("val", "test", "at_best_val"):
            assert ra[key] == rb[key], key


def test_submitit_launcher_runs_a_study_as_the_sweeps_do(tmp_path, pretrained_dirs, capsys):
    from fpt.cli.main import main

    path = _study_file(tmp_path, pretrained_dirs["gpt2"], seeds=1)
    root = tmp_path / "study"
    assert main(["study", str(path), "--study-dir", str(root), "--threads", "1", "--launcher", "submitit-local"]) == 0
    out = capsys.readouterr().out
    assert "submitit's local executor" in out and "4/4 trials finished, 0 left; done" in out
    assert len(list(root.glob("*/*/s0/results.json"))) == 4
    assert main(["study", str(path), "--study-dir", str(root), "--status"]) == 0
    assert "4 finished" in capsys.readouterr().out
