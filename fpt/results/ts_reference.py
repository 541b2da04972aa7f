"""Published time-series baselines (UCR/UEA accuracies, TSER RMSE) with their exact sources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# =================================================================================================
# Time series (the `timeseries` task): published numbers of the field's own methods.
#
# Kept apart from the paper's numbers above: these are not FPT results but the baselines a frozen LM
# is compared with on the UCR / UEA / TSER archives. A run is compared only with numbers of the same
# problem on the same split: the archive's default TRAIN/TEST files (``results.json`` ``data``:
# ``official_split`` true, and the train + test sizes of the archive's files). Test accuracy in %,
# RMSE in the targets' units, as published.
# =================================================================================================
TS_CITATIONS = {
    "middlehurst2024": "Middlehurst, Schaefer, Bagnall (2024). Bake off redux: a review and experimental evaluation of "
                       "recent time series classification algorithms. Data Mining and Knowledge Discovery 38. "
                       "Results: github.com/time-series-machine-learning/tsml-eval (default train/test split).",
    "dau2019": "Dau, Bagnall, Kamgar, Yeh, Zhu, Gharghabi, Ratanamahatana, Keogh (2019). The UCR time series archive. "
               "IEEE/CAA J. Autom. Sinica 6(6); DataSummary.csv of the UCR 2018 archive (1-NN DTW, full window).",
    "bagnall2018": "Bagnall, Dau, Lines, Flynn, Large, Bostrom, Southam, Keogh (2018). The UEA multivariate time series "
                   "classification archive, 2018. arXiv:1811.00075 (1-NN DTW-D).",
    "zhou2023": "Zhou, Niu, Wang, Sun, Jin (2023). One Fits All: Power General Time Series Analysis by Pretrained LM "
                "(GPT4TS). NeurIPS 2023, Table 25 (UEA classification).",
    "tsml-eval-regression": "tsml-eval's published regression results (github.com/time-series-machine-learning/"
                            "tsml-eval), the TSER archive's default train/test split (archive: Tan, Bergmeir, "
                            "Petitjean, Webb (2021), Time series extrinsic regression, DMKD 35).",
}


@dataclass(frozen=True)
class TSReference:
    problem: str  # the archive's problem name
    method: str  # e.g. "HIVE-COTE 2", "ROCKET", "1-NN DTW"
    value: float  # accuracy % (classification) or RMSE (regression)
    metric: str  # "accuracy" or "rmse"
    source: str  # a key of TS_CITATIONS
    note: str = ""

    def citation(self) -> str:
        return TS_CITATIONS[self.source]


# The archive's default split of each problem with published numbers: (train cases, test cases).
TS_SPLITS = {"GunPoint": (50, 150), "ItalyPowerDemand": (67, 1029), "BasicMotions": (40, 40),
             "JapaneseVowels": (270, 370), "Covid3Month": (140, 61)}


def _ts_references() -> list[TSReference]:
    out = []
    bake_off = {  # problem: HIVE-COTE 2, MultiRocket, ROCKET (None: not published for this problem)
        "GunPoint": (100.0, 100.0, 100.0), "ItalyPowerDemand": (97.0, 96.8, 97.0), "BasicMotions": (100.0, None, 100.0),
    }
    for problem, values in bake_off.items():
        for method, value in zip(("HIVE-COTE 2", "MultiRocket", "ROCKET"), values):
            if value is not None:
                out.append(TSReference(problem, method, value, "accuracy", "middlehurst2024"))
    out += [
        TSReference("GunPoint", "1-NN DTW", 90.7, "accuracy", "dau2019", "full warping window"),
        TSReference("ItalyPowerDemand", "1-NN DTW", 95.0, "accuracy", "dau2019", "full warping window"),
        TSReference("BasicMotions", "1-NN DTW", 97.5, "accuracy", "bagnall2018", "DTW-D (dependent), multivariate"),
        TSReference("JapaneseVowels", "GPT4TS", 98.6, "accuracy", "zhou2023",
                    "6 GPT-2 layers; GPT4TS keeps the epoch with the best TEST accuracy, fpt selects on validation"),
        TSReference("JapaneseVowels", "ROCKET", 96.2, "accuracy", "zhou2023", "as reported in GPT4TS's Table 25"),
        TSReference("Covid3Month", "ROCKET", 0.0389, "rmse", "tsml-eval-regression"),
        TSReference("Covid3Month", "1-NN DTW", 0.0522, "rmse", "tsml-eval-regression"),
    ]
    return out


TS_REFERENCES: list[TSReference] = _ts_references()


def ts_lookup(data: dict[str, Any] | None) -> tuple[list[TSReference], str]:
    """Published numbers for a run's data (``results.json`` ``data``), and why there are none if so.

    Only the archive's default split of the same problem matches: same name, test from the TEST file,
    and the archive's train and test sizes.
    """
    if not data:
        return [], "no data description in results.json (a run from before the timeseries task recorded it)"
    problem = str(data.get("problem", ""))
    found = [r for r in TS_REFERENCES if r.problem == problem]
    if not found:
        return [], f"no published numbers for {problem} in fpt.results.ts_reference.TS_REFERENCES"
    if not data.get("official_split"):
        return [], f"{problem}: the test split was carved from one file, not the archive's TEST file"
    sizes = (data.get("n_train_file"), data.get("n_test"))
    if problem in TS_SPLITS and tuple(sizes) != TS_SPLITS[problem]:
        return [], (f"{problem}: {sizes[0]} train / {sizes[1]} test cases, the archive's default split has "
                    f"{TS_SPLITS[problem][0]} / {TS_SPLITS[problem][1]}: not the published split")
    return found, ""
