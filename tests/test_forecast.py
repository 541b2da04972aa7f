"""The forecast task: reading series (and refusing bad ones by row and column), the field's split borders,
training-row scaling, instance normalisation, channel independence, baselines, the flatten head, fit, predict
and exact resume after kill -9. Generated series, CSVs written here and aeon's bundled files; never /work/shared."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fpt.cli.main import main as cli_main
from fpt.config import build_config
from fpt.data import forecast as fc
from fpt.model.objectives import make_objective
from fpt.tasks import make_task
from fpt.tasks.forecast import ForecastWindows, num_patches, patch_windows
from fpt.training.fitting import fit

ROWS = 300


def write_csv(path: Path, rows: int = ROWS, channels: int = 2, seed: int = 0, header=None, cells=None) -> Path:
    """A CSV in ETT's layout (a date column, then numbers): daily-periodic sines plus noise, channel c at scale 10^c."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    values = np.stack([(10 ** c) * (np.sin(2 * np.pi * t / 24 + c) + 0.1 * rng.standard_normal(rows)) + 5 * c
                       for c in range(channels)], 1)
    header = header or ["date"] + [f"ch{c}" for c in range(channels)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(rows):
            w.writerow([f"2020-01-01 {i}"] + [repr(float(v)) for v in values[i]])
    if cells:  # {(row, column): text}: overwrite cells (row as the file counts them, the header being row 1)
        lines = path.read_text().splitlines()
        for (row, col), text in cells.items():
            parts = lines[row - 1].split(",")
            parts[col] = text
            lines[row - 1] = ",".join(parts)
        path.write_text("\n".join(lines) + "\n")
    return path


def small_options(path, **overrides) -> dict:
    return {"path": str(path), "lookback": 24, "horizon": 8, "patch_size": 8, "stride": 4, **overrides}


# -- reading and refusing -------------------------------------------------------------------------
@pytest.mark.parametrize("cells, header, columns, expected", [
    ({(5, 2): "abc"}, None, None, "row 5, column 'ch1': 'abc' is not a number"),
    ({(7, 1): "nan"}, None, None, "row 7, column 'ch0': 'nan' (a missing or infinite value)"),
    ({(9, 2): ""}, None, None, "row 9, column 'ch1': an empty cell"),
    (None, None, "ch0,OT", "row 1: no column 'OT'"),
])
def test_a_bad_csv_is_refused_naming_row_and_column(tmp_path, cells, header, columns, expected):
    path = write_csv(tmp_path / "bad.csv", cells=cells, header=header)
    task = make_task("forecast", small_options(path, **({"columns": columns} if columns else {})))
    with pytest.raises(fc.ForecastDataError) as err:
        task.describe_data()
    assert expected in str(err.value) and str(path) in str(err.value)


def test_a_series_too_short_for_lookback_plus_horizon_says_which_split(tmp_path):
    path = write_csv(tmp_path / "short.csv", rows=60)
    with pytest.raises(fc.ForecastDataError, match=r"the val split \(rows .*\) is too short for one window of "
                                                   r"look-back 24 \+ horizon 8 = 32 rows"):
        make_task("forecast", small_options(path)).describe_data()
    with pytest.raises(fc.ForecastDataError, match="split=ett needs the ETTh"):
        make_task("forecast", small_options(path, split="ett")).describe_data()


def test_ett_by_name_offline_says_where_to_put_the_file(offline_data, monkeypatch):
    monkeypatch.setenv("FPT_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        make_task("forecast", {"name": "ETTh1"}).describe_data()
    text = str(err.value)
    assert "ETTh1.csv" in text and "zhouhaoyi/ETDataset" in text and fc.ETT_COMMIT in text and "-o path=" in text
    assert fc.ett_dataset("ETTh1").remotes[0].sha256 == fc.ETT_SHA256["ETTh1"]


def test_aeon_series_by_name_and_npz(tmp_path):
    airline = make_task("forecast", {"name": "Airline", "lookback": 24, "horizon": 12, "patch_size": 6, "stride": 6})
    info = airline.describe_data()
    assert info["rows"] == 144 and info["columns"] == ["Passengers"] and info["split"] == "fraction"
    assert info["borders"]["train"] == [0, 100] and info["borders"]["test"][1] == 144
    series = np.cumsum(np.random.default_rng(1).standard_normal((200, 3)), 0)
    np.savez(tmp_path / "s.npz", series=series, columns=np.array(["a", "b", "c"]))
    task = make_task("forecast", small_options(tmp_path / "s.npz"))
    assert task.describe_data()["columns"] == ["a", "b", "c"]
    np.testing.assert_allclose(task.channel_statistics()[0], series[:140].mean(0))


# -- split, scaling, windows ----------------------------------------------------------------------
def test_ett_split_borders_and_training_row_scaling(tmp_path):
    path = write_csv(tmp_path / "ett.csv", rows=14500)
    lookback, horizon = 48, 24
    task = make_task("forecast", small_options(path, split="ett", lookback=lookback, horizon=horizon))
    info = task.describe_data()
    assert info["borders"] == {"train": [0, 8640], "val": [8640 - lookback, 11520], "test": [11520 - lookback, 14400]}
    assert info["rows_unused"] == 100  # rows after 14400 are never used
    assert info["windows"] == {"train": 8640 - 72 + 1, "val": 2880 - 24 + 1, "test": 2880 - 24 + 1}
    raw = fc.read_csv(path).values
    np.testing.assert_allclose(task.channel_statistics()[0], raw[:8640].mean(0))
    np.testing.assert_allclose(task.channel_statistics()[1], raw[:8640].std(0))
    # the first test window's first target is row 11520, z-scored with the training statistics
    test = task.test()["test"]
    batch = test.batch(np.array([0]))
    mean, std = task.channel_statistics()
    np.testing.assert_allclose(batch["y"][0, 0].item(), (raw[11520, 0] - mean[0]) / std[0], rtol=1e-5)


def test_every_window_of_every_channel_is_counted(tmp_path):
    path = write_csv(tmp_path / "s.csv", channels=3)
    task = make_task("forecast", small_options(path))
    info = task.describe_data()
    test = task.test()["test"]
    assert len(test) == info["windows"]["test"] * 3 == info["samples"]["test"]  # channel independence, no drop_last
    ids = np.arange(len(test))
    y = test.batch(ids)["y"]
    assert sorted(set(y[:, -1].long().tolist())) == [0, 1, 2]  # every channel
    strided = make_task("forecast", small_options(path, eval_stride=4))
    assert len(strided.test()["test"]) == len(range(0, info["windows"]["test"], 4)) * 3
    assert "one window in 4" in strided.describe_data()["windows_note"]
    assert len(strided.train()) == len(task.train())  # training always on every window


def test_patching_matches_gpt4ts_and_instance_norm_removes_level_and_scale():
    look = np.arange(20, dtype=np.float64)[None, :]
    tokens = patch_windows(look, 8, 4)
    assert tokens.shape == (1, num_patches(20, 8, 4), 8) == (1, 5, 8)
    assert tokens[0, -1].tolist() == [16, 17, 18, 19, 19, 19, 19, 19]  # ReplicationPad1d((0, stride)) then unfold
    values = np.random.default_rng(0).standard_normal((80, 1))
    a = ForecastWindows(values, 24, 8, 8, 4, instance_norm=True)
    b = ForecastWindows(values * 3.0 + 5.0, 24, 8, 8, 4, instance_norm=True)
    ids = torch.arange(a.windows)
    ba, bb = a({"sample": ids.clone()}, None), b({"sample": ids.clone()}, None)
    torch.testing.assert_close(ba["x"], bb["x"], atol=1e-4, rtol=1e-4)  # the model sees the same tokens
    torch.testing.assert_close(bb["y"][:, 8:10], torch.stack([ba["y"][:, 8] * 3 + 5, ba["y"][:, 9] * 3], 1),
                               atol=1e-4, rtol=1e-4)  # and its outputs are mapped back with the window's own scale


# -- baselines and the objective --------------------------------------------------------------------
def test_baselines_repeat_seasonal_and_least_squares_linear():
    t = np.arange(400, dtype=np.float64)
    periodic = np.stack([np.sin(2 * np.pi * t / 24), np.cos(2 * np.pi * t / 24)], 1)
    out = fc.baselines(periodic[:300], periodic[300:], 48, 12, 24, np.array([2.0, 3.0]))
    assert out["seasonal-naive (24)"]["mse"] < 1e-20  # exactly periodic: one season earlier is the truth
    assert out["linear (least squares)"]["mse"] < 1e-12  # a sinusoid is a linear recurrence: the map is exact
    assert out["repeat-last"]["mse"] > 0.1
    err = out["repeat-last"]
    assert err["windows"] == 100 - 48 - 12 + 1
    constant = np.ones((100, 2))
    assert fc.baselines(constant[:60], constant[60:], 10, 5, None, np.ones(2))["repeat-last"]["mse"] == 0


def test_forecast_objective_loss_and_metrics_on_the_z_scored_scale_and_in_units():
    objective = make_objective(type("S", (), {"output": "forecast", "num_labels": 2})(),
                               type("T", (), {"channel_statistics": lambda self: (np.zeros(2), np.array([1.0, 10.0]))})())
    out = torch.tensor([[[1.0], [1.0]], [[0.0], [0.0]]])  # window scale
    y = torch.tensor([[2.0, 2.0, 1.0, 1.0, 0.0],  # targets 2, 2; loc 1, scale 1; channel 0 -> pred 2, 2
                      [1.0, 1.0, 0.0, 2.0, 1.0]])  # targets 1, 1; loc 0, scale 2; channel 1 -> pred 0, 0
    assert float(objective.loss(out, y)) == pytest.approx(0.5)
    metrics = objective.metrics()
    objective.update(metrics, out, y, objective.loss(out, y))
    values = objective.compute(metrics)
    assert float(values["mse"]) == pytest.approx(0.5) and float(values["mae"]) == pytest.approx(0.5)
    assert float(values["mse_original"]) == pytest.approx(50.0)  # channel 1's errors of 1 are 10 in its units


# -- the model: flatten head and the no-transformer backbone ------------------------------------------
def test_flatten_head_reads_every_token_and_zero_blocks_is_no_transformer(tmp_path, tiny_dirs):
    from fpt.backbones import load_backbone
    from fpt.model import FPT, ModelConfig

    task = make_task("forecast", small_options(write_csv(tmp_path / "s.csv")))
    backbone = load_backbone(tiny_dirs["gpt2"], init="random", layers=0)
    assert backbone.num_layers == 0 and len(backbone.model.h) == 0
    model = FPT(backbone, task.spec, ModelConfig())
    assert model.head.in_features == backbone.hidden_size * num_patches(24, 8, 4)
    x = task.train().batch(np.arange(4))["x"]
    x2 = x.clone()
    x2[:, 0] += 1.0  # change only the first token: a flatten head sees it even without attention
    with torch.no_grad():
        assert model(x).shape == (4, 8, 1)
        assert not torch.allclose(model(x), model(x2))
    with pytest.raises(ValueError, match="needs at least one layer"):
        load_backbone("lstm", init="random", layers=0)


# -- fit, predict, resume ------------------------------------------------------------------------------
def run_values_for(path, backbone, run_dir, **overrides) -> dict:
    values = {"task": "forecast", "task_options": small_options(path), "backbone": str(backbone), "init": "pretrained",
              "steps": 12, "batch_size": 8, "eval_every": 4, "eval_batch_size": 37, "device": "cpu",
              "run_dir": str(run_dir), "lr": 3e-3}
    values.update(overrides)
    return values


def test_fit_reports_mse_on_every_window_and_predict_writes_the_next_horizon(tmp_path, pretrained_dirs, capsys):
    path = write_csv(tmp_path / "s.csv")
    run_dir = tmp_path / "run"
    results = fit(build_config(run_values_for(path, pretrained_dirs["gpt2"], run_dir)), enable_progress_bar=False)
    data = results["data"]
    assert data["drop_last"] is False and data["windows_counted"]["test"] == data["windows"]["test"]
    assert set(results["test"]) >= {"mse", "mae", "mse_original", "mae_original"}
    assert results["objective"]["metric"] == "mse" and results["val"]["best"] is not None
    assert 0 < results["test"]["mse"] < 10 and np.isfinite(results["test"]["mse_original"])
    assert "linear (least squares)" in data["baselines"]["test"]
    out = tmp_path / "next.csv"
    assert cli_main(["predict", "--run-dir", str(run_dir), "--data", str(path), "--out", str(out)]) == 0
    assert "wrote the next 8 steps of 2 channels after row 300" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 9)) and list(rows[0]) == ["step", "after", "ch0", "ch1"]
    assert rows[0]["after"] == f"2020-01-01 {ROWS - 1}"
    ch1 = np.array([float(r["ch1"]) for r in rows])
    raw = fc.read_csv(path).values
    assert np.isfinite(ch1).all() and abs(ch1.mean() - raw[-48:, 1].mean()) < 3 * raw[:, 1].std()  # in ch1's units
    short = write_csv(tmp_path / "short.csv", rows=10)
    assert cli_main(["predict", "--run-dir", str(run_dir), "--data", str(short), "--out", str(tmp_path / "o.csv")]) == 2
    assert "has 10 rows; the run forecasts from the last 24 (its look-back)" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


SLOW_CLI = """
import sys, time
from pathlib import Path
import fpt.training.module as t
progress = Path(sys.argv[1])
original = t.FPTModule.training_step
def slow_step(self, batch, batch_idx):
    time.sleep(0.15)
    progress.write_text(str(int(self.global_step)))
    return original(self, batch, batch_idx)
t.FPTModule.training_step = slow_step
from fpt.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_forecasting_run_resumes_exactly_after_kill_9(tmp_path, pretrained_dirs):
    from test_reliability import cli_args, wait_for_step

    path = write_csv(tmp_path / "s.csv")
    reference = tmp_path / "reference"
    fit(build_config(run_values_for(path, pretrained_dirs["gpt2"], reference)), enable_progress_bar=False)
    killed = tmp_path / "killed"
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    progress = tmp_path / "progress"
    proc = subprocess.Popen([sys.executable, str(script), str(progress),
                             *cli_args(run_values_for(path, pretrained_dirs["gpt2"], killed))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, progress, 6)  # past the checkpoint at step 4, before the one at 8
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (killed / "results.json").exists()
    assert cli_main(["fit", "--resume", str(killed), "--no-progress-bar"]) == 0
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (reference, killed))
    assert ra["test"] == rb["test"] and ra["val"] == rb["val"] and rb["steps"] == 12
    wa, wb = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (reference / "metrics.csv").read_text() == (killed / "metrics.csv").read_text()


def test_report_compares_the_pretrained_arm_with_each_other_at_their_chosen_learning_rates():
    from fpt.results.forecast_report import _comparisons

    def row(arm, lr, values, chosen=True):
        return {"backbone": "MiniLM-L6", "arm": arm, "lr": lr, "chosen": chosen, "mse_values": values}

    rows = [row("pretrained", 1e-4, [0.42, 0.41, 0.43]), row("pretrained", 1e-3, [0.30, 0.30, 0.30], chosen=False),
            row("random", 1e-4, [0.48, 0.50, 0.47]), row("none", 1e-4, [0.40, 0.45, 0.41])]
    lines = "\n".join(_comparisons(rows))
    # the unchosen learning rate (better on test) is never the one compared: nothing is selected on test
    assert "| MiniLM-L6 | frozen pretrained vs frozen random | -0.063 |" in lines
    assert "pretrained better (p = " in lines.split("frozen random")[1].split("\n")[0]
    assert "cannot tell (p = " in lines.split("no transformer (0 blocks)")[1].split("\n")[0]
    assert _comparisons([row("random", 1e-4, [0.5])]) == []  # no pretrained arm: no comparison
