"""Published numbers to compare our runs with: the paper's Table 1, convergence speed, the
parameter-group ladder, and two later sources. Test accuracy in percent, as published.

Sources (``CITATIONS``):

* ``lu2021``: Kevin Lu, Aditya Grover, Pieter Abbeel, Igor Mordatch. *Pretrained Transformers as
  Universal Computation Engines*. arXiv:2103.05247 (2021); AAAI 2022. GPT-2 (base, 12 layers x 768)
  unless stated; CIFAR-10's Table 1 entry uses GPT-2 large (68.2 with GPT-2 base).
* ``lu2021-blog``: the BAIR blog post on the same paper (2021), rounded numbers on CIFAR-10.
* ``rothermel2021``: Danielle Rothermel, Margaret Li, Tim Rocktaeschel, Jakob Foerster. *Don't
  Sweep your Learning Rate under the Rug: A Closer Look at Cross-modal Transfer of Pretrained
  Transformers*. arXiv:2107.12460 (2021). Learning rate swept, 3 seeds, model selection on a
  validation split: frozen pretrained vs fully finetuned pretrained GPT-2.

Settings (``SETTINGS``) say which of our runs a number is for: task + init + freeze + backbone kind
(``transformer``, ``lstm``, or ``run`` for a backbone loaded from a finished Bit Memory run).
``setting_of(results)`` classifies a run's ``results.json``; ``lookup(task, setting, backbone)``
returns the matching numbers, best match first. Fashion-MNIST (and the ``array`` task) have no
published number: ``lookup`` returns nothing and reports say so.

Table 1's "fully trained transformer" is the same architecture trained on the task from random
initialisation (its ListOps and CIFAR-10 LRA entries are transcribed by the paper from Long Range
Arena, Tay et al. 2020, which trains from scratch): ``full-transformer`` = init random + freeze
full. A pretrained model with every weight trained is Rothermel et al.'s "unfrozen pretrained"
(``finetuned``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CITATIONS = {
    "lu2021": "Lu, Grover, Abbeel, Mordatch (2021). Pretrained Transformers as Universal Computation Engines. "
              "arXiv:2103.05247; AAAI 2022.",
    "lu2021-blog": "Lu et al. (2021). Pretrained Transformers as Universal Computation Engines, BAIR blog post.",
    "rothermel2021": "Rothermel, Li, Rocktaeschel, Foerster (2021). Don't Sweep your Learning Rate under the Rug: "
                     "A Closer Look at Cross-modal Transfer of Pretrained Transformers. arXiv:2107.12460.",
}

TASKS = {  # our task name -> the paper's
    "bit-memory": "Bit Memory", "bit-xor": "Bit XOR", "listops": "ListOps", "mnist": "MNIST",
    "cifar10": "CIFAR-10", "cifar10-lra": "CIFAR-10 LRA", "remote-homology": "Remote Homology",
}
NO_PAPER_NUMBER = {
    "fashion-mnist": "Fashion-MNIST is not in the paper: no published number to compare with",
    "array": "your own data: no published number",
}

# setting -> (init, freeze, backbone kind, description)
SETTINGS: dict[str, tuple[str, str, str, str]] = {
    "fpt": ("pretrained", "fpt", "transformer", "FPT: frozen pretrained transformer"),
    "full-transformer": ("random", "full", "transformer", "fully trained transformer (from scratch)"),
    "full-lstm": ("random", "full", "lstm", "fully trained LSTM"),
    "frozen-random": ("random", "fpt", "transformer", "frozen random transformer"),
    "frozen-bit-memory": ("pretrained", "fpt", "run", "frozen transformer pretrained on Bit Memory"),
    "frozen-random-lstm": ("random", "fpt", "lstm", "frozen random LSTM"),
    "finetuned": ("pretrained", "full", "transformer", "pretrained transformer, every weight trained"),
    "output-only": ("pretrained", "output-only", "transformer", "pretrained, only the output layer trains"),
    "+ln": ("pretrained", "+ln", "transformer", "pretrained, output + layer norms train"),
    "+input": ("pretrained", "+input", "transformer", "pretrained, output + layer norms + input train"),
}


@dataclass(frozen=True)
class Reference:
    source: str  # a key of CITATIONS
    where: str  # table / section / figure within the source
    task: str  # our task name
    setting: str  # a key of SETTINGS
    accuracy: float | None = None  # test accuracy, percent
    steps: float | None = None  # gradient steps to converge
    model: str = "gpt2"  # the backbone the number was measured with
    note: str = ""

    def citation(self) -> str:
        return CITATIONS[self.source]


def _table1() -> list[Reference]:
    # task: FPT / full transformer / full LSTM / frozen random / frozen bit-memory init
    rows = {
        "bit-memory": (100, 100, 60.9, 75.8, 100),
        "bit-xor": (100, 100, 50.1, 100, 100),
        "listops": (38.4, 38, 17.1, 34.3, 35.4),
        "mnist": (98.0, 99.1, 99.5, 91.7, 97.8),
        "cifar10": (72.1, 70.3, 73.6, 61.7, 62.6),
        "cifar10-lra": (38.6, 42, 11.7, 36.1, 36.7),
        "remote-homology": (12.7, 9, 12, 9.3, 7.8),
    }
    columns = ("fpt", "full-transformer", "full-lstm", "frozen-random", "frozen-bit-memory")
    out = []
    for task, values in rows.items():
        for setting, value in zip(columns, values):
            model = "lstm" if setting == "full-lstm" else "gpt2"
            note = ""
            if task == "cifar10" and setting == "fpt":
                model, note = "gpt2-large", "GPT-2 large; 68.2 with GPT-2 base"
            if task in ("listops", "cifar10-lra") and setting == "full-transformer":
                note = "transcribed from Long Range Arena (Tay et al. 2020)"
            out.append(Reference("lu2021", "Table 1", task, setting, accuracy=float(value), model=model, note=note))
    out.append(Reference("lu2021", "Table 1 / model size", "cifar10", "fpt", accuracy=68.2, model="gpt2",
                         note="GPT-2 base; 72.1 with GPT-2 large"))
    return out


def _steps() -> list[Reference]:
    rows = {  # task: (FPT, frozen random), gradient steps to converge
        "bit-memory": (1e4, 4e4), "bit-xor": (5e2, 2e4), "listops": (2e3, 6e3), "mnist": (5e3, 2e4),
        "cifar10": (4e5, 4e5), "cifar10-lra": (3e5, 6e5), "remote-homology": (1e5, 1e5),
    }
    return [Reference("lu2021", "steps to converge", task, setting, steps=value)
            for task, pair in rows.items() for setting, value in zip(("fpt", "frozen-random"), pair)]


def _ladder() -> list[Reference]:
    rows = {  # task: output only / +ln / +input / +pos (= fpt)
        "bit-memory": (76, 94, 100, 100), "bit-xor": (56, 98, 98, 100), "listops": (15, 36, 36, 38),
        "mnist": (23, 96, 98, 98), "cifar10": (25, 54, 60, 68), "cifar10-lra": (17, 39, 39, 39),
        "remote-homology": (2, 9, 10, 13),
    }
    return [Reference("lu2021", "parameter-group ladder", task, setting, accuracy=float(v),
                      note="+pos rung" if setting == "fpt" else "")
            for task, values in rows.items() for setting, v in zip(("output-only", "+ln", "+input", "fpt"), values)]


def _others() -> list[Reference]:
    blog = [
        Reference("lu2021-blog", "blog", "cifar10", "frozen-random", accuracy=62.0),
        Reference("lu2021-blog", "blog", "cifar10", "frozen-random-lstm", accuracy=34.0, model="lstm"),
        Reference("lu2021-blog", "blog", "cifar10", "frozen-bit-memory", accuracy=63.0),
    ]
    rothermel = []
    for task, frozen, unfrozen in (("listops", 46.1, 56.3), ("mnist", 98.5, 99.0), ("cifar10", 66.3, 77.7),
                                   ("cifar10-lra", 54.7, 67.8)):
        note = "lr swept, 3 seeds, selected on validation"
        rothermel.append(Reference("rothermel2021", "lr-swept", task, "fpt", accuracy=frozen, note=note))
        rothermel.append(Reference("rothermel2021", "lr-swept", task, "finetuned", accuracy=unfrozen, note=note))
    return blog + rothermel


REFERENCES: list[Reference] = _table1() + _ladder() + _others()
STEPS_TO_CONVERGE: list[Reference] = _steps()
_SOURCE_ORDER = {"Table 1": 0, "Table 1 / model size": 1, "parameter-group ladder": 2, "lr-swept": 3, "blog": 4}


def backbone_kind(results: dict[str, Any]) -> str:
    backbone = str(results.get("backbone", ""))
    if backbone == "lstm":
        return "lstm"
    if backbone.startswith("run:"):
        return "run"
    return "transformer"


def _freeze_name(freeze: Any) -> str:
    if isinstance(freeze, str):
        return "fpt" if freeze == "+pos" else freeze
    from fpt.backbones.freeze import PRESETS

    groups = tuple(freeze)
    for name, preset in PRESETS.items():
        if set(preset) == set(groups):
            return "fpt" if name == "+pos" else name
    return "+".join(groups)


def setting_of(results: dict[str, Any]) -> str | None:
    """Which published setting a run (its results.json, or its config as a dict) corresponds to, if any."""
    kind = backbone_kind(results)
    freeze = _freeze_name(results.get("freeze", "fpt"))
    init = results.get("init", "pretrained")
    if kind == "run":
        identity = results.get("backbone_identity") or {}
        source_task = identity.get("source_task")
        if freeze == "fpt" and source_task in (None, "bit-memory"):
            return "frozen-bit-memory"
        return None
    for name, (s_init, s_freeze, s_kind, _) in SETTINGS.items():
        if (s_init, s_freeze, s_kind) == (init, freeze, kind):
            return name
    return None


def lookup(task: str, setting: str | None, backbone: str | None = None) -> list[Reference]:
    """Published accuracies for this task and setting: entries for our exact backbone first, then in
    the order Table 1, the model-size entry, the ladder, Rothermel et al., the blog."""
    if setting is None:
        return []
    found = [r for r in REFERENCES if r.task == task and r.setting == setting]
    short = (backbone or "").split("/")[-1]
    return sorted(found, key=lambda r: (r.model != short, _SOURCE_ORDER.get(r.where, 9)))


def paper_accuracy(task: str, setting: str | None, backbone: str | None = None) -> Reference | None:
    found = lookup(task, setting, backbone)
    return found[0] if found else None


def paper_steps(task: str, setting: str | None) -> float | None:
    for r in STEPS_TO_CONVERGE:
        if r.task == task and r.setting == setting:
            return r.steps
    return None


def describe(task: str) -> str:
    """A line about what the paper reports for a task (or why there is nothing)."""
    if task in NO_PAPER_NUMBER:
        return NO_PAPER_NUMBER[task]
    if task not in TASKS:
        return f"{task}: not in the paper"
    parts = [f"{r.setting} {r.accuracy:g}" for r in REFERENCES if r.task == task and r.where == "Table 1"]
    return f"{TASKS[task]} (Lu et al. 2021, Table 1, test accuracy %): " + ", ".join(parts)


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
NO_PAPER_NUMBER.setdefault("timeseries", "not in the paper: the field's published baselines for the same problem and "
                                         "split are in the report's time-series section (fpt.reference.TS_REFERENCES)")


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
        return [], f"no published numbers for {problem} in fpt.reference.TS_REFERENCES"
    if not data.get("official_split"):
        return [], f"{problem}: the test split was carved from one file, not the archive's TEST file"
    sizes = (data.get("n_train_file"), data.get("n_test"))
    if problem in TS_SPLITS and tuple(sizes) != TS_SPLITS[problem]:
        return [], (f"{problem}: {sizes[0]} train / {sizes[1]} test cases, the archive's default split has "
                    f"{TS_SPLITS[problem][0]} / {TS_SPLITS[problem][1]}: not the published split")
    return found, ""
