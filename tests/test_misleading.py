"""No exit 0 with a wrong or misleading result (issue 20, class 3): values that do not fit the compute
dtype, series of other lengths, a precision that would not run, options that mean nothing for the task,
ignored directories, a resume that would train nothing, report cells that break the table, plots of
nothing."""

from __future__ import annotations

import numpy as np
import pytest

from fpt.config.files import build_config
from fpt.data import ts

pytestmark = pytest.mark.usefixtures("offline_data")


def _ts(path, rows, length=None, regression=False):
    length = length or len(rows[0][0])
    head = ["@problemName t", "@timeStamps false", "@missing false", "@univariate true", "@equalLength true",
            f"@seriesLength {length}", "@targetLabel true" if regression else "@classLabel true a b", "@data"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(head + [",".join(repr(float(v)) for v in x) + f":{y}" for x, y in rows]) + "\n")
    return path


def _rows(n, length, seed=0, regression=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shift = rng.normal() * 2
        out.append((list(rng.normal(size=length) * 0.3 + shift), f"{shift:.4f}" if regression else "ab"[int(shift > 0)]))
    return out


def test_a_ts_value_beyond_float32_is_refused_naming_file_case_and_channel(tmp_path):
    rows = _rows(6, 8)
    rows[2][0][3] = 1e300
    path = _ts(tmp_path / "big_TRAIN.ts", rows)
    with pytest.raises(ts.TSFormatError, match=r"big_TRAIN\.ts, line 11 \(case 3\): channel 1, value 4: 1e\+300 does not "
                                                r"fit float32"):
        ts.read_ts(path)


def test_an_npz_value_beyond_float32_is_refused_where_it_enters(tmp_path):
    from fpt.data.arrays import ArrayDataError, check_x

    x = np.zeros((10, 4, 3))
    x[7, 2, 1] = 1e300
    with pytest.raises(ArrayDataError, match=r"array 'x': 1 value\(s\) beyond float32.*sample 7 at index \(7, 2, 1\)"):
        check_x("x", x, "tokens")


def test_test_series_of_another_length_than_training_are_refused(tmp_path):
    from fpt.tasks import make_task

    _ts(tmp_path / "len" / "len_TRAIN.ts", _rows(20, 16))
    _ts(tmp_path / "len" / "len_TEST.ts", _rows(10, 40, seed=1))
    task = make_task("timeseries", {"path": str(tmp_path / "len"), "patch_size": 4})
    with pytest.raises(ValueError, match=r"len_TEST\.ts, line 9: a series of length 40; every training series has "
                                         r"length 16"):
        _ = task.spec


def test_predict_refuses_series_of_another_length_than_training(tmp_path):
    from fpt.tasks import make_task
    from fpt.tasks.timeseries import load_for_prediction

    _ts(tmp_path / "ok" / "ok_TRAIN.ts", _rows(20, 16))
    _ts(tmp_path / "ok" / "ok_TEST.ts", _rows(10, 16, seed=1))
    layout = make_task("timeseries", {"path": str(tmp_path / "ok"), "patch_size": 4}).prediction_layout()
    short = _ts(tmp_path / "short.ts", _rows(5, 8, seed=2))
    with pytest.raises(ValueError, match=r"short\.ts, line 9: a series of length 8; every training series has length 16"):
        load_for_prediction(short, layout.to_dict())
    split, _ = load_for_prediction(tmp_path / "ok" / "ok_TEST.ts", layout.to_dict())
    assert len(split) == 10


def test_fp16_autocast_on_a_cpu_is_refused_not_recorded_as_what_ran():
    from fpt.training.trainer import resolve_device

    config = build_config({"device": "cpu", "precision": "16-mixed"})
    with pytest.raises(ValueError, match=r"--precision 16-mixed.*CPU.*bf16-mixed"):
        resolve_device(config)
    assert resolve_device(build_config({"device": "cpu", "precision": "bf16-mixed"}))[1] == "bf16-mixed"


def test_accuracy_targets_on_a_regression_run_are_refused(tmp_path, tiny_dirs, run_values):
    from fpt.training.fitting import fit

    _ts(tmp_path / "reg" / "reg_TRAIN.ts", _rows(20, 16, regression=True), regression=True)
    _ts(tmp_path / "reg" / "reg_TEST.ts", _rows(10, 16, seed=1, regression=True), regression=True)
    values = run_values(tiny_dirs["gpt2"], tmp_path / "run", task="timeseries",
                        task_options={"path": str(tmp_path / "reg"), "patch_size": 4}, stop_at_target=True)
    with pytest.raises(ValueError, match=r"--stop-at-target.*regression.*rmse"):
        fit(build_config(values))
    assert not (tmp_path / "run").exists()


def test_sweep_threads_and_run_dir_grid(tmp_path, base_file):
    from fpt.cli.main import _parser
    from fpt.experiments import plan as sweep

    for bad in ("0", "-3"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["sweep", str(base_file), "--threads", bad])
    assert _parser().parse_args(["sweep", str(base_file), "--num-threads", "2"]).threads == 2
    assert _parser().parse_args(["fit", "--threads", "2"]).num_threads == 2
    with pytest.raises(ValueError, match=r"run_dir.*--sweep-dir"):
        sweep.make_plan(str(base_file), grid={"run_dir": ["A", "B"]}, sweep_dir=tmp_path / "sw")


def test_a_data_dir_that_does_not_exist_is_refused(tmp_path):
    from fpt.training.fitting import fit

    with pytest.raises(FileNotFoundError, match=r"--data-dir /nonexistent-fpt: no such directory"):
        fit(build_config({"device": "cpu", "data_dir": "/nonexistent-fpt", "run_dir": str(tmp_path / "run")}))
    assert not (tmp_path / "run").exists()


def test_resume_to_fewer_steps_than_done_is_refused_and_keeps_the_config(tmp_path, tiny_dirs, run_values):
    from fpt.training.fitting import fit

    values = run_values(tiny_dirs["gpt2"], tmp_path / "run", steps=4)
    fit(build_config(values), enable_progress_bar=False)
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"is at step 4 already: --steps 2 would train nothing.*--steps above 4"):
        fit(build_config({**values, "steps": 2}), resume=True, enable_progress_bar=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def test_report_cells_escape_bars_and_newlines():
    from fpt.results.report import markdown_cell

    assert markdown_cell("a | b\nc") == "a \\| b c"


def test_plot_of_a_run_without_validation_or_a_cut_metrics_file_says_so(tmp_path, capsys):
    from fpt.cli.main import main
    from fpt.config.files import save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config({"device": "cpu"}), run / "config.yaml")
    (run / "metrics.csv").write_text("epoch,step,train/loss\n0,0,0.7\n")
    assert main(["plot", str(run)]) == 2
    assert "no validation in" in capsys.readouterr().err and not (run / "figures").exists()
    (run / "metrics.csv").write_text("epoch,step,val/accuracy\n0,2,0.5\n0,4,0.75\n0,6,0.8")  # the last row cut
    assert main(["plot", str(run)]) == 0
    err = capsys.readouterr().err
    assert "metrics.csv" in err and "cut" in err
    from fpt.results.rows import read_curve

    assert read_curve(run)[1] == [0.5, 0.75]  # the cut row (0.8, perhaps 0.85 whole) is left out
