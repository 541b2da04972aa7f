"""The ``.ts`` reader, the ``timeseries`` task, the regression output type, and their reports.

* the reader on fixture files of every header / format case (written here), and every malformed case
  naming its file and line;
* the problems the ``aeon`` wheel ships: known shapes and class counts, every one loads by name,
  the non-problems (forecasting / anomaly series) are refused;
* patches, normalisation and the carved validation split;
* regression metrics against numpy, model selection in the metric's direction;
* a short end-to-end fit (tiny backbone) of one classification and one regression problem, with
  ``fpt predict`` and ``fpt report``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fpt.data import aeon, ts, ts_archive
from fpt.data.store import MissingDataError
from fpt.model.objectives import Classification, Regression, make_objective
from fpt.tasks import make_task
from fpt.tasks.timeseries import TimeSeriesDataError, num_patches, patch_series, tokens_of

pytestmark = pytest.mark.usefixtures("offline_data")

AEON = aeon.aeon_data_root()
needs_aeon = pytest.mark.skipif(AEON is None, reason="the aeon wheel is not installed (pip install --no-deps aeon)")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def series_line(rng, channels: int, length: int, label: str | None) -> str:
    fields = [",".join(f"{v:.4f}" for v in rng.normal(size=length)) for _ in range(channels)]
    return ":".join(fields + ([label] if label is not None else []))


def write_problem(root: Path, name: str, n_train: int, n_test: int, channels: int = 1, length: int = 20,
                  regression: bool = False, classes=("a", "b"), seed: int = 0, variable: bool = False) -> Path:
    """NAME_TRAIN.ts / NAME_TEST.ts whose label is learnable (class: sign of the first channel's mean; target: its mean)."""
    rng = np.random.default_rng(seed)
    folder = root / name
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        lines = []
        for _ in range(n):
            t = int(rng.integers(length // 2, length + 1)) if variable else length
            shift = rng.normal() * 2
            values = rng.normal(size=(channels, t)) * 0.3 + shift
            label = f"{shift:.5f}" if regression else classes[int(shift > 0)]
            lines.append(":".join([",".join(f"{v:.4f}" for v in ch) for ch in values] + [label]))
        head = [f"@problemName {name}", "@timeStamps false", "@missing false",
                f"@univariate {'true' if channels == 1 else 'false'}"]
        if channels > 1:
            head.append(f"@dimensions {channels}")
        head.append(f"@equalLength {'false' if variable else 'true'}")
        if not variable:
            head.append(f"@seriesLength {length}")
        head.append("@targetLabel true" if regression else f"@classLabel true {' '.join(classes)}")
        write(folder / f"{name}_{split}.ts", "\n".join(head + ["@data"] + lines) + "\n")
    return folder


# -- the reader ------------------------------------------------------------------------------------
def test_reader_univariate_lowercase_keys_comments_and_class_order(tmp_path):
    f = write(tmp_path / "a.ts", "# a comment\n% an ARFF-style comment\n@problemname Tiny\n@timestamps FALSE\n"
                                  "@univariate true\n@equallength true\n@serieslength 3\n@classlabel true b a\n@DATA\n"
                                  "1,2,3:a\n\n4,5,6:b\n# comment between cases\n7,8.5,-9e-1:a\n")
    d = ts.read_ts(f)
    assert d.kind == "classification" and d.header.problem_name == "Tiny" and len(d) == 3
    assert d.class_values == ("b", "a")  # the header's order, not sorted
    assert d.num_channels == 1 and d.lengths.tolist() == [3, 3, 3]
    np.testing.assert_allclose(d.series[2][:, 0], [7, 8.5, -0.9])
    assert d.labels == ["a", "b", "a"] and d.lines.tolist() == [10, 12, 14]


def test_reader_infers_omitted_keys(tmp_path):
    # no @univariate / @dimensions / @equalLength / @seriesLength: channels and lengths come from the data
    f = write(tmp_path / "b.ts", "@problemName B\n@classLabel true 1 2\n@data\n1,2:3,4:1\n5,6,7:8,9,10:2\n")
    d = ts.read_ts(f)
    assert d.num_channels == 2 and d.lengths.tolist() == [2, 3]
    np.testing.assert_allclose(d.series[1], [[5, 8], [6, 9], [7, 10]])  # [time, channel]
    # neither label key, but the channel count is known: a field more than channels is a label
    g = write(tmp_path / "c.ts", "@univariate true\n@data\n1,2,3:x\n4,5,6:y\n")
    assert ts.read_ts(g).kind == "classification" and ts.read_ts(g).class_values == ("x", "y")
    h = write(tmp_path / "d.ts", "@univariate true\n@data\n1,2,3\n4,5,6\n")
    assert ts.read_ts(h).kind == "unlabelled"


def test_reader_multivariate_variable_length_and_regression(tmp_path):
    f = write(tmp_path / "m.ts", "@problemName M\n@univariate false\n@dimensions 3\n@equalLength false\n"
                                  "@targetLabel true\n@data\n1,2:3,4:5,6:0.5\n1,2,3,4:5,6,7,8:9,10,11,12:-1.25e-2\n")
    d = ts.read_ts(f)
    assert d.kind == "regression" and d.labels is None
    np.testing.assert_allclose(d.targets, [0.5, -0.0125])
    assert d.num_channels == 3 and d.lengths.tolist() == [2, 4]
    assert d.series[1].shape == (4, 3)


def test_missing_values_are_nan_then_error_or_interpolated(tmp_path):
    f = write(tmp_path / "n.ts", "@missing true\n@classLabel true 0 1\n@univariate true\n@data\n"
                                  "1,?,3,NaN:0\n?,2,nan,4:1\n1,2,3,4:0\n")
    d = ts.read_ts(f)
    assert d.missing_count() == 4 and np.isnan(d.series[0][1, 0])
    with pytest.raises(ts.TSFormatError,
                       match=r"n\.ts: 4 missing values .* in 2 cases, the first on line 5.*missing=interpolate"):
        ts.fill_missing(d, "error")
    filled = ts.fill_missing(d, "interpolate")
    np.testing.assert_allclose(filled.series[0][:, 0], [1, 2, 3, 3])  # inside: linear; trailing: nearest
    np.testing.assert_allclose(filled.series[1][:, 0], [2, 2, 3, 4])
    with pytest.raises(ValueError, match="missing must be one of"):
        ts.fill_missing(d, "zero")
    g = write(tmp_path / "g.ts", "@classLabel true 0 1\n@univariate true\n@data\n?,?:0\n")
    with pytest.raises(ts.TSFormatError, match=r"g\.ts, line 4: channel 1 has no value at all"):
        ts.fill_missing(ts.read_ts(g), "interpolate")


MALFORMED = [  # (file text, line the message must name, words it must contain)
    ("@problemName X\n@timeStamps true\n@classLabel true 1 2\n@data\n(1,2),(2,3):1\n", 2, "timeStamps true"),
    ("@classLabel true 1 2\n@univariate true\n1,2,3:1\n", 3, "expected a @key header line"),
    ("@classLabel true 1 2\n@univariate true\n", 2, "no @data line"),
    ("@classLabel true\n@data\n1,2:1\n", 1, "must list the class values"),
    ("@classLabel maybe 1 2\n@data\n1,2:1\n", 1, "must be true or false"),
    ("@univariate yes\n@data\n1,2:1\n", 1, "must be true or false"),
    ("@seriesLength -3\n@data\n1,2:1\n", 1, "positive integer"),
    ("@classLabel true 1 2\n@targetLabel true\n@data\n1,2:1\n", 1, "both @classLabel true and @targetLabel"),
    ("@classLabel true 1 2\n@classLabel true 1 3\n@data\n1,2:1\n", 2, "given twice"),
    ("@univariate true\n@dimensions 2\n@classLabel true 1 2\n@data\n1,2:1\n", 1, "@univariate true but @dimensions 2"),
    ("@data\n1,2,3:1\n", 2, "neither @classLabel nor @targetLabel"),
    ("@classLabel true 1 2\n@univariate true\n@data\n1,2,x:1\n", 4, "channel 1, value 3: 'x' is not a number"),
    ("@classLabel true 1 2\n@univariate true\n@data\n1,,3:1\n", 4, "an empty value is not a number"),
    ("@classLabel true 1 2\n@dimensions 2\n@data\n1,2:3,4:1\n1,2:1\n", 5, "1 channel, expected 2 channels"),
    ("@classLabel true 1 2\n@data\n1,2:3,4,5:1\n", 3, "channel 2 has 3 values, channel 1 has 2"),
    ("@classLabel true 1 2\n@univariate true\n@data\n1,2:3\n", 4, "class '3' is not among"),
    ("@classLabel true 1 2\n@univariate true\n@seriesLength 3\n@data\n1,2:1\n", 5, "@seriesLength is 3"),
    ("@classLabel true 1 2\n@univariate true\n@equalLength true\n@data\n1,2:1\n1,2,3:2\n", 6, "@equalLength true"),
    ("@classLabel true 1 2\n@univariate true\n@data\n1,2:1\n@missing false\n", 5, "header line '@missing' after @data"),
    ("@classLabel true 1 2\n@univariate true\n@data\n1,2:\n", 4, "empty label"),
    ("@targetLabel true\n@univariate true\n@data\n1,2:high\n", 4, "regression target 'high' is not a number"),
    ("@targetLabel true\n@univariate true\n@data\n1,2:?\n", 4, "missing or not finite"),
    ("@missing false\n@classLabel true 1 2\n@univariate true\n@data\n1,?:1\n", 5, "@missing false"),
    ("@classLabel true 1 2\n@univariate true\n@data\n", 3, "no cases after @data"),
    ("@classLabel true 1 2\n@data extra\n1:1\n", 2, "@data takes no value"),
]


@pytest.mark.parametrize("text,line,words", MALFORMED)
def test_every_malformed_file_names_file_and_line(tmp_path, text, line, words):
    f = write(tmp_path / "bad_TRAIN.ts", text)
    with pytest.raises(ts.TSFormatError) as err:
        ts.read_ts(f)
    message = str(err.value)
    assert message.startswith(f"{f}, line {line}"), message
    assert words in message, message


def test_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "bin.ts"
    f.write_bytes(b"@classLabel true 1 2\n@data\n1,2\xff:1\n")
    with pytest.raises(ts.TSFormatError, match=r"bin\.ts, line 3: not UTF-8"):
        ts.read_ts(f)


# -- the bundled problems (aeon wheel) ----------------------------------------------------------------
KNOWN = {  # name: (train cases, test cases, channels, (min length, max length), classes or "regression")
    "GunPoint": (50, 150, 1, (150, 150), 2),
    "ItalyPowerDemand": (67, 1029, 1, (24, 24), 2),
    "BasicMotions": (40, 40, 6, (100, 100), 4),
    "JapaneseVowels": (270, 370, 12, (7, 29), 9),
    "Covid3Month": (140, 61, 1, (84, 84), "regression"),
    "ArrowHead": (36, 175, 1, (251, 251), 3),
    "OSULeaf": (200, 242, 1, (427, 427), 6),
}


@needs_aeon
@pytest.mark.parametrize("name", sorted(KNOWN))
def test_bundled_files_have_their_known_shapes(name):
    n_train, n_test, channels, (lo, hi), classes = KNOWN[name]
    files = ts_archive.find_problem(name)
    train, test = ts.read_ts(files["train"]), ts.read_ts(files["test"])
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.num_channels == test.num_channels == channels
    lengths = np.concatenate([train.lengths, test.lengths])
    assert (int(lengths.min()), int(lengths.max())) == (lo, hi)
    if classes == "regression":
        assert train.kind == test.kind == "regression" and np.isfinite(train.targets).all()
    else:
        assert train.kind == "classification" and len(train.class_values) == classes
        assert set(train.labels) == set(test.labels) == set(train.class_values)
    assert train.missing_count() == test.missing_count() == 0


@needs_aeon
def test_every_bundled_problem_loads_by_name_and_non_problems_are_refused():
    problems = aeon.bundled_problems()
    assert set(KNOWN) <= set(problems)
    for name in problems:
        task = make_task("timeseries", {"name": name, "patch_size": 16})
        spec, info = task.spec, task.describe_data()
        batch = task.train().batch(np.arange(3))
        assert batch["x"].shape[0] == 3 and batch["x"].shape[2] == spec.input_dim and torch.isfinite(batch["x"]).all()
        assert info["official_split"] and info["n_train"] + info["n_val"] == info["n_train_file"]
        if spec.output == "regression":
            assert batch["y"].dtype == torch.float32 and spec.num_classes == 1
        else:
            assert batch["y"].dtype == torch.int64 and spec.num_classes == len(info["classes"]) >= 2
    others = aeon.bundled_non_problems()
    assert {"Airline", "Lynx"} <= set(others)
    for name in others:
        with pytest.raises(ValueError, match="not a classification or regression problem"):
            _ = make_task("timeseries", {"name": name}).spec


def test_a_missing_problem_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("FPT_OFFLINE", "1")
    with pytest.raises(MissingDataError) as err:
        _ = make_task("timeseries", {"name": "NoSuchProblem"}).spec
    message = str(err.value)
    assert "NoSuchProblem_TRAIN.ts" in message and "NoSuchProblem_TEST.ts" in message
    assert "timeseries/NoSuchProblem" in message  # the cache folder it would use
    assert "timeseriesclassification.com" in message


class _Response:
    def __init__(self, payload: bytes, length: int | None = None):
        self.payload, self.offset = payload, 0
        self.headers = {"Content-Length": str(len(payload) if length is None else length)}

    def read(self, n=-1):
        chunk = self.payload[self.offset:] if n < 0 else self.payload[self.offset:self.offset + n]
        self.offset += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@needs_aeon
def test_online_a_problem_is_downloaded_once_from_its_zenodo_record_and_parsed(monkeypatch, tmp_path):
    name = "Adiac"  # in aeon's Zenodo table, not bundled
    record = aeon.zenodo_record(name)
    assert isinstance(record, int)
    fixture = write_problem(tmp_path / "remote", name, 8, 6)
    requested = []

    def serve(url, timeout=30.0):
        requested.append(url)
        assert f"zenodo.org/records/{record}/files/" in url
        filename = url.split("/files/")[1].split("?")[0]
        return _Response((fixture / filename).read_bytes())

    monkeypatch.setattr("fpt.data.store.urlopen", serve)
    files = ts_archive.find_problem(name)
    assert files["train"].parent == Path(tmp_path / "cache" / "timeseries" / name)
    assert len(requested) == 2 and ts.read_ts(files["train"]).kind == "classification"
    ts_archive.find_problem(name)  # found in the cache: nothing fetched again
    assert len(requested) == 2


@needs_aeon
def test_an_incomplete_download_is_never_used(monkeypatch, tmp_path):
    fixture = write_problem(tmp_path / "remote", "Adiac", 8, 6)
    data = (fixture / "Adiac_TRAIN.ts").read_bytes()
    monkeypatch.setattr("fpt.data.store.urlopen", lambda url, timeout=30.0: _Response(data[:100], length=len(data)))
    monkeypatch.setattr("time.sleep", lambda s: None)  # pooch waits between retries
    with pytest.raises(MissingDataError, match="Content-Length"):
        ts_archive.find_problem("Adiac")
    assert not list((tmp_path / "cache").rglob("*.ts"))


# -- the task: files, patches, normalisation, splits ----------------------------------------------------
def test_patches_pad_the_tail_like_gpt4ts():
    x = np.arange(10, dtype=float)[:, None]  # [length 10, 1 channel]
    p = patch_series(x, patch_size=4, stride=2)
    assert len(p) == (10 - 4) // 2 + 2 == num_patches(10, 4, 2)
    np.testing.assert_array_equal(p[0, :, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(p[-1, :, 0], [8, 9, 9, 9])  # last value repeated `stride` times
    short = patch_series(np.array([[1.0], [2.0]]), patch_size=5, stride=5)  # shorter than a patch
    np.testing.assert_array_equal(short[:, :, 0], [[1, 2, 2, 2, 2]])
    two = np.stack([np.arange(6.0), 10 + np.arange(6.0)], axis=1)
    mixed = tokens_of(two, 3, 3, "mixed")
    assert mixed.shape == (3, 6)
    np.testing.assert_array_equal(mixed[0], [0, 10, 1, 11, 2, 12])  # channel-minor, as GPT4TS's (p m)
    independent = tokens_of(two, 3, 3, "independent")
    assert independent.shape == (6, 5)  # window by window, one token per channel, + one-hot channel id
    np.testing.assert_array_equal(independent[1], [10, 11, 12, 0, 1])


def test_options_split_and_normalisation(tmp_path):
    write_problem(tmp_path, "Toy", n_train=40, n_test=10, channels=2, length=12, classes=("neg", "pos"))
    options = {"path": str(tmp_path / "Toy"), "patch_size": 4, "val_fraction": 0.25}
    task = make_task("timeseries", options)
    info = task.describe_data()
    assert (info["n_train"], info["n_val"], info["n_test"]) == (30, 10, 10) and info["official_split"]
    assert task.classes == ("neg", "pos")
    # stratified: each class gives validation cases; the carving is fixed by split_seed, not the run seed
    val_y = task.val().batch(np.arange(10))["y"]
    assert set(val_y.tolist()) == {0, 1}
    again = make_task("timeseries", options, seed=5)
    assert torch.equal(again.val().batch(np.arange(10))["x"], task.val().batch(np.arange(10))["x"])
    # per-channel statistics from the training split only: training values are standardised
    train_x = task.train().batch(np.arange(30))["x"]
    values = train_x[:, :-1].reshape(30, -1, 4, 2)  # the last token repeats values (tail padding)
    assert abs(float(values.mean())) < 0.1
    spec = task.spec
    assert spec.input_dim == 8 and spec.max_tokens == num_patches(12, 4, 4) and not spec.padded
    assert make_task("timeseries", {**options, "channels": "independent"}).spec.input_dim == 4 + 2
    with pytest.raises(ValueError, match="exactly one of"):
        make_task("timeseries", {"name": "GunPoint", "path": "x.ts"})
    with pytest.raises(ValueError, match="normalize must be one of"):
        make_task("timeseries", {**options, "normalize": "minmax"})
    # a single file: the test split is carved from it, and the task says so
    single = make_task("timeseries", {"path": str(tmp_path / "Toy" / "Toy_TRAIN.ts")})
    assert single.describe_data()["official_split"]  # NAME_TRAIN.ts finds NAME_TEST.ts beside it
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "mine.ts").write_text((tmp_path / "Toy" / "Toy_TRAIN.ts").read_text())
    one = make_task("timeseries", {"path": str(tmp_path / "one" / "mine.ts")}).describe_data()
    assert not one["official_split"] and one["n_test"] == 8 and one["n_train"] + one["n_val"] == 32


def test_variable_length_uses_the_mask_and_trims_batches(tmp_path):
    write_problem(tmp_path, "Var", n_train=20, n_test=6, channels=3, length=16, variable=True)
    task = make_task("timeseries", {"path": str(tmp_path / "Var"), "patch_size": 4})
    spec = task.spec
    assert spec.padded and spec.readout == "last"
    batch = task.test().get("test").batch(np.arange(6))
    mask = batch["mask"]
    assert batch["x"].shape[:2] == mask.shape and int(mask.sum(1).max()) == mask.shape[1]  # trimmed to the longest
    lengths = mask.sum(1)
    assert torch.equal(mask, torch.arange(mask.shape[1])[None] < lengths[:, None])  # right padding
    assert bool((batch["x"][~mask] == 0).all())


def test_files_that_do_not_fit_together_are_refused(tmp_path):
    write_problem(tmp_path, "P", 10, 4, channels=1)
    write_problem(tmp_path / "other", "P", 10, 4, channels=2)
    (tmp_path / "P" / "P_TEST.ts").write_text((tmp_path / "other" / "P" / "P_TEST.ts").read_text())
    with pytest.raises(TimeSeriesDataError, match="1 channels but .*P_TEST.ts has 2"):
        _ = make_task("timeseries", {"path": str(tmp_path / "P")}).spec
    write(tmp_path / "U" / "U_TRAIN.ts", "@classLabel false\n@univariate true\n@data\n1,2\n3,4\n")
    with pytest.raises(TimeSeriesDataError, match="has no labels"):
        _ = make_task("timeseries", {"path": str(tmp_path / "U" / "U_TRAIN.ts")}).spec


# -- the regression objective -------------------------------------------------------------------------
def test_regression_metrics_match_numpy_over_batches():
    rng = np.random.default_rng(0)
    k = 3  # several targets per sample (the shape a forecasting head will have)
    mean, std = np.array([10.0, -2.0, 0.5]), np.array([4.0, 0.5, 2.0])
    objective = Regression(k, mean, std)
    metrics = objective.metrics()
    preds, targets, losses = [], [], []
    for n in (5, 7, 4):
        out = torch.from_numpy(rng.normal(size=(n, k, 1))).float()
        y = torch.from_numpy(rng.normal(size=(n, k)) * std + mean).float()
        loss = objective.loss(out, y)
        objective.update(metrics, out, y, loss)
        preds.append(out.numpy()[:, :, 0] * std + mean)
        targets.append(y.numpy())
        losses.append((float(loss), n))
    p, t = np.concatenate(preds), np.concatenate(targets)
    values = {k_: float(v) for k_, v in objective.compute(metrics).items()}
    assert math.isclose(values["rmse"], float(np.sqrt(((p - t) ** 2).mean())), rel_tol=1e-5)
    assert math.isclose(values["mae"], float(np.abs(p - t).mean()), rel_tol=1e-5)
    z = (t - mean) / std
    zp = (p - mean) / std
    assert math.isclose(losses[0][0], float(((zp[:5] - z[:5]) ** 2).mean()), rel_tol=1e-5)  # MSE on standardised
    assert math.isclose(values["loss"], sum(l * n for l, n in losses) / len(p), rel_tol=1e-5)
    np.testing.assert_allclose(objective.predict(torch.zeros(2, k, 1)).numpy(), np.tile(mean, (2, 1)), rtol=1e-6)
    assert objective.better(0.1, 0.2) and not objective.better(0.3, 0.2) and objective.metric == "rmse"
    # classification: the evaluation loss is weighted by samples too (a short last batch counts less)
    cls = Classification(2)
    state = cls.metrics()
    out_a, y_a = torch.tensor([[[2.0, 0.0]]] * 5), torch.zeros(5, dtype=torch.long)
    out_b, y_b = torch.tensor([[[0.0, 2.0]]]), torch.zeros(1, dtype=torch.long)
    la, lb = cls.loss(out_a, y_a), cls.loss(out_b, y_b)
    cls.update(state, out_a, y_a, la)
    cls.update(state, out_b, y_b, lb)
    got = {k_: float(v) for k_, v in cls.compute(state).items()}
    assert got["loss"] == pytest.approx((5 * float(la) + float(lb)) / 6, rel=1e-6)
    assert got["accuracy"] == pytest.approx(5 / 6) and got["exact_accuracy"] == pytest.approx(5 / 6)
    assert Classification(3).better(0.9, 0.8)
    with pytest.raises(ValueError, match="std > 0"):
        Regression(1, [0.0], [0.0])


def test_sweep_selects_the_lowest_validation_rmse(tmp_path):
    from fpt.experiments import plan as sweep_plan, summary as sweep_summary

    write_problem(tmp_path, "R", 12, 6, regression=True)
    base = tmp_path / "base.yaml"
    base.write_text(json.dumps({"task": "timeseries", "task_options": {"path": str(tmp_path / "R")},
                                "backbone": "lstm", "init": "random", "freeze": "full", "steps": 2}))
    plan = sweep_plan.make_plan(str(base), grid={"lr": [1e-3, 1e-2, 1e-1]}, seeds=2, sweep_dir=tmp_path / "sw")
    val = {1e-3: 0.30, 1e-2: 0.10, 1e-1: 0.20}  # lower is better: 1e-2 must be chosen
    for t in plan.trials:
        t.run_dir.mkdir(parents=True)
        r = {"task": "timeseries", "lr": t.params["lr"], "seed": t.seed, "init": "random", "freeze": "full",
             "backbone": "lstm", "objective": {"kind": "regression", "metric": "rmse", "higher_is_better": False},
             "val": {"best": val[t.params["lr"]] + 0.01 * t.seed, "metric": "rmse", "higher_is_better": False},
             "test": {"rmse": 1.0 + t.seed, "mae": 0.5}}
        (t.run_dir / "results.json").write_text(json.dumps(r))
    summary = sweep_summary.summarize(plan)
    chosen = [s for s in summary["settings"] if s["chosen"]]
    assert [s["setting"] for s in chosen] == ["lr=0.01"]
    assert chosen[0]["test"]["mean"] == pytest.approx(1.5) and chosen[0]["metric"] == "rmse"
    markdown = sweep_summary.render_markdown(summary)
    assert "val rmse" in markdown and "1.5 ± 0.71" in markdown


# -- end to end ----------------------------------------------------------------------------------------
def _fit(tmp_path, tiny, options, name, steps=30):
    from fpt.config.files import build_config
    from fpt.training.fitting import fit

    config = build_config({"task": "timeseries", "task_options": options, "backbone": tiny, "init": "random",
                           "steps": steps, "batch_size": 8, "eval_every": 10, "eval_batch_size": 16, "lr": 3e-3,
                           "device": "cpu", "run_dir": str(tmp_path / name)})
    return fit(config, enable_progress_bar=False)


def test_classification_and_regression_train_end_to_end_then_predict_and_report(tmp_path, tiny_dirs):
    from fpt.cli.main import main
    from fpt.results.report import write_report

    write_problem(tmp_path / "data", "Cls", n_train=40, n_test=20, channels=2, length=16, variable=True)
    write_problem(tmp_path / "data", "Reg", n_train=40, n_test=20, length=16, regression=True, seed=1)
    cls = _fit(tmp_path, tiny_dirs["gpt2"], {"path": str(tmp_path / "data" / "Cls"), "patch_size": 4}, "cls")
    reg = _fit(tmp_path, tiny_dirs["llama"], {"path": str(tmp_path / "data" / "Reg"), "patch_size": 4}, "reg")

    assert cls["objective"]["kind"] == "classification" and 0 <= cls["test"]["accuracy"] <= 1
    assert cls["val"]["metric"] == "accuracy" and cls["val"]["best"] == cls["val"]["best_accuracy"]
    assert reg["objective"]["kind"] == "regression" and reg["val"]["metric"] == "rmse"
    assert not reg["val"]["higher_is_better"] and reg["val"]["best_accuracy"] is None
    assert set(reg["test"]) == {"rmse", "mae", "loss"} and reg["cpu_seconds"] > 0
    assert reg["data"]["problem"] == "Reg" and reg["data"]["n_test"] == 20
    # the shift sets both the level of the series and the target: the model learns it (better than the mean)
    assert reg["test"]["rmse"] < reg["data"]["trivial_baseline"]["rmse"]
    assert reg["test"]["mae"] <= reg["test"]["rmse"] + 1e-9

    # fpt predict on the .ts test file reproduces the test metrics, in original units / class names
    for name in ("cls", "reg"):
        problem = "Cls" if name == "cls" else "Reg"
        out = tmp_path / f"{name}.csv"
        assert main(["predict", "--run-dir", str(tmp_path / name), "--data",
                     str(tmp_path / "data" / problem / f"{problem}_TEST.ts"), "--out", str(out)]) == 0
        rows = list(csv.DictReader(open(out)))
        assert len(rows) == 20
        results = cls if name == "cls" else reg
        if name == "cls":
            assert {"prediction", "prediction_label", "p0", "p1", "label"} <= set(rows[0])
            accuracy = np.mean([r["prediction"] == r["label"] for r in rows])
            assert accuracy == pytest.approx(results["test"]["accuracy"], abs=1e-6)
            assert {r["prediction_label"] for r in rows} <= {"a", "b"}
        else:
            err = np.array([float(r["prediction"]) - float(r["label"]) for r in rows])
            assert float(np.sqrt((err ** 2).mean())) == pytest.approx(results["test"]["rmse"], rel=1e-4)

    report = write_report([tmp_path / "cls", tmp_path / "reg"], tmp_path / "report", attention=False)
    text = Path(report["markdown"]).read_text()
    assert "## Time series" in text and "| Reg | rmse |" in text and "| Cls | accuracy |" in text
    assert (tmp_path / "report" / "curves-timeseries-Reg.png").exists()
    assert "no published numbers for Cls" in text  # our own files: nothing published to compare with


@needs_aeon
def test_gunpoint_by_name_trains_and_reports_the_published_numbers(tmp_path, tiny_dirs):
    from fpt.results import ts_reference
    from fpt.results.report import write_report

    results = _fit(tmp_path, tiny_dirs["gpt2"], {"name": "GunPoint", "patch_size": 10}, "gp", steps=10)
    assert results["data"]["official_split"] and results["data"]["n_test"] == 150
    published, why = ts_reference.ts_lookup(results["data"])
    assert not why and {p.method for p in published} == {"HIVE-COTE 2", "MultiRocket", "ROCKET", "1-NN DTW"}
    text = Path(write_report([tmp_path / "gp"], tmp_path / "rep", attention=False)["markdown"]).read_text()
    assert "| GunPoint | accuracy |" in text and "| 100 | 100 | 100 | 90.7 | - |" in text
    # another split of the same problem is never compared with the published numbers
    other = dict(results["data"], n_test=100)
    assert ts_reference.ts_lookup(other)[0] == [] and "not the published split" in ts_reference.ts_lookup(other)[1]


def test_make_objective_needs_target_statistics_for_regression():
    from fpt.data.splits import TaskSpec

    spec = TaskSpec("continuous", 4, 8, num_classes=1, output="regression")
    with pytest.raises(ValueError, match="target_statistics"):
        make_objective(spec)
    with pytest.raises(ValueError, match="num_classes must be 1"):
        TaskSpec("continuous", 4, 8, num_classes=3, output="regression")


@needs_aeon
def test_the_readme_command_runs_offline_on_smollm2(tmp_path, monkeypatch, capsys):
    """`fpt fit --task timeseries -o name=GunPoint --layers 2 ...` (the README's command; fewer steps here)."""
    from fpt.backbones.smollm2 import find_smollm2_gguf
    from fpt.cli.main import main

    try:
        find_smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    monkeypatch.setenv("FPT_OFFLINE", "1")
    run = tmp_path / "gp"
    assert main(["fit", "--task", "timeseries", "-o", "name=GunPoint", "--layers", "2", "--steps", "4",
                 "--eval-every", "2", "--batch-size", "8", "--run-dir", str(run), "--no-progress-bar"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert results["data"]["problem"] == "GunPoint" and results["layers"] == 2 and results["steps"] == 4
