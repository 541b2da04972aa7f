"""What users see (issue 20, class 5): figures legible from 1 to 20 runs, help and docs that say what the
commands do, advice that names the command to re-run, counts in the right number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _runs(root: Path, n: int) -> list[Path]:
    """``n`` run directories as fpt fit leaves them (results.json, metrics.csv): lr x init x seed."""
    dirs = []
    for i in range(n):
        d = root / f"r{i}"
        d.mkdir(parents=True)
        results = {"task": "bit-xor", "backbone": "gpt2", "init": ("pretrained", "random")[i % 2], "freeze": "fpt",
                   "seed": (i // 2) % 2, "lr": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2][i // 4 % 5], "layers": 2, "steps": 40,
                   "batch_size": 8, "metrics_step": "completed", "val": {"first_step_at_target": 20 if i % 3 else None}}
        (d / "results.json").write_text(json.dumps(results))
        (d / "metrics.csv").write_text("epoch,step,val/accuracy\n" + "".join(f"0,{s},{0.5 + 0.01 * s * (i + 1) / n}\n"
                                                                          for s in (10, 20, 30, 40)))
        dirs.append(d)
    return dirs


@pytest.mark.parametrize("n", [1, 12, 20])
def test_learning_curves_stay_legible_from_1_to_20_runs(tmp_path, n):
    from fpt.results.figures import learning_curve_figure

    fig = learning_curve_figure(_runs(tmp_path, n))
    ax = fig.axes[0]
    assert ax.get_legend() is None and len(fig.legends) == 1  # the legend is below the plot, never over it
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(set(labels)) == n  # every run told apart
    colours = {(line.get_color(), line.get_linestyle()) for line in ax.lines}
    assert len(colours) == n  # no two lines drawn alike
    if n > 1:  # what every run shares is said once, in the title, not in each entry
        assert "gpt2" not in " ".join(labels) and "all: gpt2" in ax.get_title()
        assert all(len(label) <= 40 for label in labels)


def test_every_convergence_bar_says_k_of_n(tmp_path):
    from fpt.results.figures import convergence_figure

    rows = [{"task": "bit-xor", "setting": "fpt", "init": "pretrained", "freeze": "fpt", "steps_to_target": 100,
             "steps": 200, "paper_steps_to_converge": 500}]
    ax = convergence_figure(rows).axes[0]
    assert [t.get_text() for t in ax.texts] == ["1/1"]  # one run that reached it is labelled too


def test_predict_help_and_docs_say_the_csv_columns():
    from fpt.cli.main import _parser
    from fpt.results.predict import CSV_COLUMNS

    text = " ".join(_parser()._subparsers._group_actions[0].choices["predict"].format_help().split())
    assert " ".join(CSV_COLUMNS.split()) in text
    docs = " ".join((Path(__file__).parents[1] / "docs" / "tasks.md").read_text().split())
    assert " ".join(CSV_COLUMNS.split()) in docs
    assert "prediction_label" in CSV_COLUMNS and "confidence" in CSV_COLUMNS  # what predict() writes


def test_sweep_help_names_the_regression_metric():
    from fpt.cli.main import _parser

    text = " ".join(_parser()._subparsers._group_actions[0].choices["sweep"].format_help().split())
    assert "lowest RMSE" in text


def test_ctrl_c_in_a_sweep_says_re_run_the_sweep(base_file, monkeypatch, capsys, tmp_path):
    from fpt.cli import experiments as experiment_cli
    from fpt.cli.main import main
    from fpt.runs.health import TrainingInterrupted

    def interrupted(plan, parallel=1):
        raise TrainingInterrupted("stopped by signal 2 at step 3; checkpoint written.\nResume with: fpt fit --resume "
                                  "runs/x --steps 4", 2, 3, "fpt fit --resume runs/x --steps 4")

    monkeypatch.setattr(experiment_cli, "run_plan", interrupted)
    assert main(["sweep", str(base_file), "--sweep-dir", str(tmp_path / "sw")]) == 130
    err = capsys.readouterr().err
    assert "running the same command again" in err and "fpt fit --resume" not in err


def test_counts_are_in_the_right_number():
    from fpt.base.text import plural

    assert plural(1, "layer") == "1 layer" and plural(2, "layer") == "2 layers" and plural(1, "seed") == "1 seed"
    from fpt.results.figures import run_legends

    legends = run_legends({Path("a"): {"backbone": "gpt2", "init": "random", "freeze": "fpt", "seed": 0, "layers": 1},
                           Path("b"): {"backbone": "gpt2", "init": "random", "freeze": "fpt", "seed": 0, "layers": 2}})
    assert legends[Path("a")].endswith("1 layer") and legends[Path("b")].endswith("2 layers")
