"""Published numbers to compare our runs with, each with its table, model, task variant and protocol.

A number is printed beside a run only when it was measured on the same **task variant** (the same
data and evaluation: ListOps with or without ``]`` and the 512-token cut, remote homology on TAPE's
``valid`` or on its fold holdout, ...); the row then says every other way it differs (model size,
depth, protocol, a ``-small`` preset). :func:`compare` does this for one run's ``results.json``.

Sources (``CITATIONS``; table numbers are those of each paper's arXiv version cited there). The
arXiv text of Lu et al. could not be read here: its table numbers were transcribed earlier from a
third-party copy; the BAIR post, LRA's README and the official code were read at the commits below.

* ``lu2021``: Lu, Grover, Abbeel, Mordatch. *Pretrained Transformers as Universal Computation
  Engines*. arXiv:2103.05247 v2 (2021). GPT-2 base (12 x 768) unless stated. Table 1: FPT vs a
  fully trained transformer vs a fully trained LSTM (CIFAR-10's FPT entry is GPT-2 *large*; its
  "Full" entries are said to come from the literature: CIFAR-10 LRA's 42 is LRA's vanilla
  Transformer, ListOps' 38 is not LRA's (36.37, below) and is kept as Lu et al.'s own cell of an
  unstated setting; homology's 9 and its LSTM's 12 look like TAPE's models without pretraining on
  TAPE's fold holdout, not the 2021 code's valid-set variant: unverified, labelled so). Table 2:
  frozen transformers by initialisation (pretrained, random, bit-memory-pretrained; all GPT-2 base,
  so CIFAR-10's FPT is 68.2 there). Table 6: steps to converge (the batch size of each task is not
  stated: App. C gives "between 2 and 16"; ``scripts/run.py`` defaults to 4, its Bit Memory demo).
  Table 8: model size (CIFAR-10; base / medium / large). Table 13: FPT plus trained feed-forward /
  attention / both. Table 15: the parameter-group ladder. Numbers produced by the 2021 code
  (protocol ``paper``), whose loop evaluated 25 random *test* batches every 100 steps and had no
  validation split: every ``paper``-protocol number is on a test split that was monitored during
  training (how the reported number was read off that curve is not stated).
* ``lu2021-blog``: the BAIR blog post (2021-03-23), bairblog/bairblog.github.io
  ``_posts/2021-03-23-universal-computation.md`` (commit 96f8199e): "on CIFAR-10, the base FPT model
  achieves an accuracy of 68%, versus 63% from Bit Memory pretraining or 62% from random
  initialization" (Table 2's 68.2 / 62.6 / 61.7, rounded) and, a randomly initialized frozen
  transformer against a randomly initialized frozen LSTM, "62% vs 34% on CIFAR-10": the frozen
  random LSTM's 34 (the paper's own table with that comparison could not be read here).
* ``lra2020``: Tay et al. *Long Range Arena*. arXiv:2011.04006 (2020), Table 1, vanilla Transformer
  (trained from scratch, LRA's own pipeline: ListOps with ``]`` dropped, up to 2000 tokens); the
  same table in google-research/long-range-arena ``README.md`` (commit 211e07d, line 40):
  "Transformer | 36.37 | 64.27 | 57.46 | 42.44 | 71.40" (ListOps, Text, Retrieval, Image, Path).
* ``tape2019``: Rao et al. *Evaluating Protein Transfer Learning with TAPE*. arXiv:1906.08230
  (2019): remote homology, models without pretraining, TAPE's fold-holdout test set (the paper's
  results table; songlab-cal/tape's README lists only pretrained models, so not verified here).
* ``rothermel2021``: Rothermel, Li, Rocktaeschel, Foerster. *Don't Sweep your Learning Rate under
  the Rug*. arXiv:2107.12460 (2021), Table 1: learning rate swept, 3 seeds, selected and evaluated
  at the best validation point, GPT-2 base; their ListOps loader keeps ``]`` and does not truncate
  (protocol ``rothermel``). Their exact grid is not restated here (fpt's ``rothermel`` experiment
  sweeps 1e-5..1e-2, fpt's choice).

A number whose attribution could not be checked against its primary text carries ``unverified``
(the reason), which ``fpt report`` prints beside it.

Settings (``SETTINGS``) say which of our runs a number is for: task + init + freeze + backbone kind
(``transformer``, ``lstm``, or ``run`` for a backbone loaded from a finished Bit Memory run).
``setting_of(results)`` classifies a run; ``lookup(task, setting, backbone, variant)`` lists the
matching numbers, best match first; ``compare(results)`` picks one and lists the differences.
Fashion-MNIST (and the ``array`` task) have no published number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fpt.base.text import plural

CITATIONS = {
    "lu2021": "Lu, Grover, Abbeel, Mordatch (2021). Pretrained Transformers as Universal Computation Engines. "
              "arXiv:2103.05247 (v2); AAAI 2022.",
    "lu2021-blog": "Lu, Grover, Abbeel, Mordatch (2021-03-23). Pretrained Transformers as Universal Computation "
                   "Engines. The BAIR blog (bairblog/bairblog.github.io _posts/2021-03-23-universal-computation.md).",
    "lra2020": "Tay, Dehghani, Abnar, Shen, Bahri, Pham, Rao, Yang, Ruder, Metzler (2020). Long Range Arena: "
               "A Benchmark for Efficient Transformers. arXiv:2011.04006.",
    "tape2019": "Rao, Bhattacharya, Thomas, Duan, Chen, Canny, Abbeel, Song (2019). Evaluating Protein Transfer "
                "Learning with TAPE. arXiv:1906.08230.",
    "rothermel2021": "Rothermel, Li, Rocktaeschel, Foerster (2021). Don't Sweep your Learning Rate under the Rug: "
                     "A Closer Look at Cross-modal Transfer of Pretrained Transformers. arXiv:2107.12460.",
}


SOURCE_NAMES = {"lu2021": "Lu et al. 2021", "lu2021-blog": "the BAIR blog post (Lu et al. 2021)",
                "lra2020": "LRA (Tay et al. 2020)", "tape2019": "TAPE (Rao et al. 2019)",
                "rothermel2021": "Rothermel et al. 2021"}


TASKS = {  # our task name -> the paper's
    "bit-memory": "Bit Memory", "bit-xor": "Bit XOR", "listops": "ListOps", "mnist": "MNIST",
    "cifar10": "CIFAR-10", "cifar10-lra": "CIFAR-10 LRA", "remote-homology": "Remote Homology",
}


NO_PAPER_NUMBER = {
    "fashion-mnist": "Fashion-MNIST is not in the paper: no published number to compare with",
    "array": "your own data: no published number",
}


# Task variants: a number and a run are compared only within one variant.
VARIANTS = {
    "standard": "the task as the paper defines it",
    "listops-2021": "LRA ListOps files, ']' dropped, cut to 512 tokens (the 2021 FPT loader; reported on basic_val)",
    "listops-lra": "LRA ListOps, ']' dropped, up to 2000 tokens, LRA's test split (LRA's own pipeline)",
    "listops-fixed": "LRA ListOps with ']' kept and nothing cut (Rothermel et al. 2021; fpt's default)",
    # the GPT-2 listops preset (max_tokens 1024, too_long skip): about 45% of LRA-grammar expressions are longer
    "listops-fixed-short": "LRA ListOps with ']' kept, sequences longer than max_tokens dropped from every split "
                           "(the GPT-2 preset: <= 1024 tokens): a subset of the test set, no published number",
    "listops-custom": "ListOps with another combination of close_bracket / truncate_at",
    "homology-valid": "TAPE's valid split as the test set, sequences > 1024 dropped, accuracy x 0.9739 (the 2021 code)",
    "homology-fold": "TAPE's fold-holdout test set (TAPE; fpt's default)",
    # Bit XOR with longer strings than the paper's 5 bits (bit-xor-256): no published accuracy
    "bit-xor-long": "Bit XOR with longer strings than the paper's 5 bits (e.g. bit-xor-256): no published number",
    # no run has this variant: a number kept for the record, never printed as comparable
    "listops-lu-full": "the setting of Lu et al.'s Table 1 'Full transformer' ListOps cell: not stated (it is not "
                       "LRA's vanilla Transformer, 36.37)",
}


DEFAULT_VARIANT = {"listops": "listops-fixed", "remote-homology": "homology-fold"}  # fpt's defaults; else standard


# setting -> (init, freeze, backbone kind, description)
SETTINGS: dict[str, tuple[str, str, str, str]] = {
    "fpt": ("pretrained", "fpt", "transformer", "FPT: frozen pretrained transformer"),
    "full-transformer": ("random", "full", "transformer", "fully trained transformer (from scratch)"),
    "full-lstm": ("random", "full", "lstm", "fully trained LSTM"),
    "frozen-random": ("random", "fpt", "transformer", "frozen random transformer"),
    "frozen-bit-memory": ("pretrained", "fpt", "run", "frozen transformer pretrained on Bit Memory"),
    "frozen-random-lstm": ("random", "fpt", "lstm", "frozen random LSTM"),
    # the statistics-only initialisation (--init statistics): no number sourced (the paper's could not be read here)
    "frozen-statistics": ("statistics", "fpt", "transformer", "frozen transformer with only the pretrained weights' "
                          "per-tensor mean and std"),
    "finetuned": ("pretrained", "full", "transformer", "pretrained transformer, every weight trained"),
    "output-only": ("pretrained", "output-only", "transformer", "pretrained, only the output layer trains"),
    "+ln": ("pretrained", "+ln", "transformer", "pretrained, output + layer norms train"),
    "+input": ("pretrained", "+input", "transformer", "pretrained, output + layer norms + input train"),
    "+ff": ("pretrained", "+ff", "transformer", "FPT + the feed-forward blocks train"),
    "+attn": ("pretrained", "+attn", "transformer", "FPT + the self-attention blocks train"),
}


MODEL_DEPTH = {"gpt2": 12, "gpt2-medium": 24, "gpt2-large": 36, "gpt2-xl": 48}


MODEL_TEXT = {"gpt2": "GPT-2 base (12 x 768)", "gpt2-medium": "GPT-2 medium (24 x 1024)",
              "gpt2-large": "GPT-2 large (36 x 1280)", "gpt2-xl": "GPT-2 XL (48 x 1600)",
              "lstm": "the 2021 LSTM (3 x 768, layer norm)"}


@dataclass(frozen=True)
class Reference:
    source: str  # a key of CITATIONS
    where: str  # table within the source
    task: str  # our task name
    setting: str  # a key of SETTINGS
    accuracy: float | None = None  # test accuracy, percent
    steps: float | None = None  # gradient steps to converge
    model: str = "gpt2"  # the backbone the number was measured with (MODEL_TEXT, or a description)
    layers: int | None = None  # depth, when not the model's full depth
    variant: str = "standard"  # a key of VARIANTS
    protocol: str = "paper"  # paper: the 2021 code | rothermel: lr swept, selected on validation | other
    note: str = ""
    via: str = ""  # the table that quotes it, when it is quoted (e.g. "Lu et al. 2021 Table 1")
    unverified: str = ""  # why the attribution could not be checked against its primary text ("" = checked)

    def citation(self) -> str:
        return CITATIONS[self.source]

    def label(self) -> str:
        """``Lu et al. 2021 Table 2, GPT-2 base (12 x 768)``: where the number is from and what measured it."""
        via = f" (quoted in {self.via})" if self.via else ""
        depth = f", {plural(self.layers, 'layer')}" if self.layers else ""
        flag = "; attribution unverified" if self.unverified else ""
        return f"{SOURCE_NAMES[self.source]} {self.where}{via}, {MODEL_TEXT.get(self.model, self.model)}{depth}{flag}"

    def test_monitored(self) -> bool:
        """Whether the number is on a test split its own training loop evaluated as it trained (the 2021 code's)."""
        return self.protocol == "paper"


def _variant_of_task(task: str) -> str:
    return {"listops": "listops-2021", "remote-homology": "homology-valid"}.get(task, "standard")


def _lu(where: str, task: str, setting: str, accuracy: float, **kw) -> Reference:
    kw.setdefault("variant", _variant_of_task(task))
    return Reference("lu2021", where, task, setting, accuracy=float(accuracy), **kw)


def _table1() -> list[Reference]:
    rows = {  # task: FPT / full transformer / full LSTM
        "bit-memory": (100, 100, 60.9), "bit-xor": (100, 100, 50.1), "listops": (38.4, 38, 17.1),
        "mnist": (98.0, 99.1, 99.5), "cifar10": (72.1, 70.3, 73.6), "cifar10-lra": (38.6, 42, 11.7),
        "remote-homology": (12.7, 9, 12),
    }
    out = []
    for task, (fpt, full, lstm) in rows.items():
        out.append(_lu("Table 1", task, "fpt", fpt, model="gpt2-large" if task == "cifar10" else "gpt2",
                       note="Table 1's CIFAR-10 entry is GPT-2 large (68.2 with GPT-2 base, Table 2)"
                       if task == "cifar10" else ""))
        if task == "cifar10-lra":
            out.append(Reference("lra2020", "Table 1 (README line 40: Image 42.44)", task, "full-transformer",
                                 accuracy=float(full),
                                 model="a vanilla transformer trained from scratch (LRA, hyper-parameters swept)",
                                 protocol="other", via="Lu et al. 2021 Table 1"))
        elif task == "listops":
            out.append(_lu("Table 1", task, "full-transformer", full, variant="listops-lu-full",
                           model="a transformer trained from scratch (setting not stated)",
                           note="attributed to Tay et al. 2020 by Lu et al., but LRA's vanilla Transformer is 36.37 "
                                "(LRA README, commit 211e07d, line 40) and no LRA entry is 38",
                           unverified="no source of 38 found; how it was measured is not stated"))
        elif task == "remote-homology":
            out.append(Reference("tape2019", "remote homology, no pretraining", task, "full-transformer",
                                 accuracy=float(full), model="TAPE's transformer (12 x 512) without pretraining",
                                 variant="homology-fold", protocol="other", via="Lu et al. 2021 Table 1",
                                 unverified="TAPE's paper table could not be read here (its README lists pretrained "
                                            "models only)"))
        else:
            out.append(_lu("Table 1", task, "full-transformer", full, layers=3 if task == "cifar10" else None,
                           note="3 layers: the 12-layer model was unstable (App. D)" if task == "cifar10" else ""))
        if task == "remote-homology":
            out.append(Reference("tape2019", "remote homology, no pretraining", task, "full-lstm", accuracy=float(lstm),
                                 model="TAPE's LSTM without pretraining", variant="homology-fold", protocol="other",
                                 via="Lu et al. 2021 Table 1",
                                 note="Lu et al.'s LSTM cell for homology; it matches TAPE's LSTM without pretraining "
                                      "(fold holdout), not a number of the 2021 code's valid-set variant",
                                 unverified="TAPE's paper table could not be read here (its README lists pretrained "
                                            "models only)"))
            continue
        out.append(_lu("Table 1", task, "full-lstm", lstm, model="lstm",
                       note="the 2021 code's layer-norm LSTM (3 x 768), lr 3e-4 (App. C)"))
    return out


def _table2() -> list[Reference]:
    rows = {  # task: frozen random / frozen bit-memory-pretrained (GPT-2 base)
        "bit-memory": (75.8, 100), "bit-xor": (100, 100), "listops": (34.3, 35.4), "mnist": (91.7, 97.8),
        "cifar10": (61.7, 62.6), "cifar10-lra": (36.1, 36.7), "remote-homology": (9.3, 7.8),
    }
    out = [_lu("Table 2", "cifar10", "fpt", 68.2, note="GPT-2 base (Table 1's 72.1 is GPT-2 large); also Table 8")]
    for task, (random, bit_memory) in rows.items():
        out.append(_lu("Table 2", task, "frozen-random", random))
        out.append(_lu("Table 2", task, "frozen-bit-memory", bit_memory))
    return out


def _blog() -> list[Reference]:
    """The BAIR post's one number with no table of the paper read here: the frozen random LSTM on CIFAR-10."""
    return [Reference("lu2021-blog", "(\"62% vs 34% on CIFAR-10\")", "cifar10", "frozen-random-lstm", accuracy=34.0,
                      model="lstm", note="a randomly initialized frozen LSTM (the 2021 code's layer-norm LSTM, 3 x 768) "
                      "against a randomly initialized frozen transformer (62, Table 2's 61.7 rounded); the paper's own "
                      "table of this comparison could not be read here")]


def _table8() -> list[Reference]:  # model size, CIFAR-10 (GPT-2 base is in Table 2)
    return [_lu("Table 8", "cifar10", "fpt", 69.8, model="gpt2-medium"),
            _lu("Table 8", "cifar10", "frozen-random", 64.0, model="gpt2-medium"),
            _lu("Table 8", "cifar10", "frozen-random", 65.7, model="gpt2-large")]


def _table13() -> list[Reference]:
    rows = {  # task: + feed-forward / + attention / + both (= every weight trained), GPT-2 base
        "bit-memory": (100, 100, 100), "bit-xor": (100, 100, 100), "listops": (36.0, 36.8, 35.8),
        "mnist": (98.3, 89.0, 93.1), "cifar10": (76.6, 47.7, 32.9), "cifar10-lra": (38.2, 23.0, 21.0),
        "remote-homology": (13.1, 10.9, 10.5),
    }
    diverged = {("mnist", "+attn"), ("cifar10", "+attn"), ("mnist", "finetuned")}
    out = []
    for task, values in rows.items():
        for setting, value in zip(("+ff", "+attn", "finetuned"), values):
            note = "training diverged; the number before divergence" if (task, setting) in diverged else ""
            out.append(_lu("Table 13", task, setting, value, note=note))
    return out


def _table15() -> list[Reference]:
    rows = {  # task: output only / +ln / +input / +pos (= fpt)
        "bit-memory": (76, 94, 100, 100), "bit-xor": (56, 98, 98, 100), "listops": (15, 36, 36, 38),
        "mnist": (23, 96, 98, 98), "cifar10": (25, 54, 60, 68), "cifar10-lra": (17, 39, 39, 39),
        "remote-homology": (2, 9, 10, 13),
    }
    return [_lu("Table 15", task, setting, v, note="the +pos rung, rounded" if setting == "fpt" else "")
            for task, values in rows.items() for setting, v in zip(("output-only", "+ln", "+input", "fpt"), values)]


def _rothermel() -> list[Reference]:
    rows = {  # task: frozen random / frozen pretrained / unfrozen random / unfrozen pretrained (mean of 3 seeds)
        "listops": (38.9, 46.1, 57.6, 56.3), "mnist": (98.0, 98.5, 98.7, 99.0),
        "cifar10": (61.8, 66.3, 77.8, 77.7), "cifar10-lra": (44.2, 54.7, 62.0, 67.8),
    }
    out = []
    for task, values in rows.items():
        for setting, value in zip(("frozen-random", "fpt", "full-transformer", "finetuned"), values):
            out.append(Reference("rothermel2021", "Table 1", task, setting, accuracy=float(value),
                                 variant="listops-fixed" if task == "listops" else "standard", protocol="rothermel",
                                 note="lr swept, mean of 3 seeds, selected and evaluated at the best validation"))
    return out


def _steps() -> list[Reference]:
    rows = {  # task: (FPT, frozen random), gradient steps to converge
        "bit-memory": (1e4, 4e4), "bit-xor": (5e2, 2e4), "listops": (2e3, 6e3), "mnist": (5e3, 2e4),
        "cifar10": (4e5, 4e5), "cifar10-lra": (3e5, 6e5), "remote-homology": (1e5, 1e5),
    }
    return [Reference("lu2021", "Table 6", task, setting, steps=value, variant=_variant_of_task(task))
            for task, pair in rows.items() for setting, value in zip(("fpt", "frozen-random"), pair)]


REFERENCES: list[Reference] = (_table1() + _table2() + _table8() + _table13() + _table15() + _rothermel()
                               + _blog())


STEPS_TO_CONVERGE: list[Reference] = _steps()


_SOURCE_ORDER = {("lu2021", "Table 1"): 0, ("lu2021", "Table 2"): 1, ("lu2021", "Table 8"): 2, ("lu2021", "Table 13"): 3,
                 ("lu2021", "Table 15"): 4, ("rothermel2021", "Table 1"): 5}  # then the rest (blog, quoted sources)


# -- classifying runs ------------------------------------------------------------------------------
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


def variant_of(results: dict[str, Any]) -> str:
    """The task variant of a run, from its task and task options (see ``VARIANTS``)."""
    task = results.get("task", "")
    options = results.get("task_options") or {}
    if task == "listops":
        close, cut = options.get("close_bracket", True), int(options.get("truncate_at") or 0)
        dropped = ((results.get("data") or {}).get("dropped_too_long") or {}).get("test", 0)
        if close and not cut:
            return "listops-fixed-short" if dropped else "listops-fixed"
        if not close and cut == 512:
            return "listops-2021"
        if not close and not cut:
            return "listops-lra"
        return "listops-custom"
    if task == "remote-homology":
        return "homology-valid" if options.get("eval_split") == "valid" else "homology-fold"
    if task == "bit-xor" and int(options.get("n_bits", 5)) > 5:  # shorter strings: a scaled-down -small check
        return "bit-xor-long"
    return "standard"


def model_of(results: dict[str, Any]) -> str:
    """The run's backbone as the references name models: gpt2 sizes without their hub owner, lstm, or the name."""
    backbone = str(results.get("backbone", ""))
    if backbone.startswith("run:"):
        backbone = str((results.get("backbone_identity") or {}).get("source_backbone", backbone))
    short = backbone.split("/")[-1] if backbone.startswith("openai-community/") else backbone
    return short


def protocol_of(results: dict[str, Any]) -> str:
    protocol = results.get("protocol")
    if isinstance(protocol, dict):
        return str(protocol.get("name", "fpt"))
    return str(protocol or "fpt")  # results.json of runs before protocols existed: fpt's


# -- looking numbers up --------------------------------------------------------------------------
def lookup(task: str, setting: str | None, backbone: str | None = None, variant: str | None = None,
           protocol: str = "fpt") -> list[Reference]:
    """Published accuracies for this task, setting and task variant (default: fpt's default variant of the
    task), best match first: the run's exact model, then GPT-2 base (never a larger GPT-2 for another
    backbone when a base number exists), then the closer protocol (``paper`` runs: the 2021 code's
    numbers; ``fpt`` runs: Rothermel et al.'s, whose loader and selection fpt follows), then table order."""
    if setting is None:
        return []
    variant = variant or DEFAULT_VARIANT.get(task, "standard")
    found = [r for r in REFERENCES if r.task == task and r.setting == setting and r.variant == variant]
    model = model_of({"backbone": backbone or ""})
    preferred = "paper" if protocol == "paper" else "rothermel"
    return sorted(found, key=lambda r: (r.model != model, r.model != "gpt2" and r.model != "lstm",
                                        r.protocol != preferred, _SOURCE_ORDER.get((r.source, r.where), 9)))


def paper_accuracy(task: str, setting: str | None, backbone: str | None = None, variant: str | None = None,
                   protocol: str = "fpt") -> Reference | None:
    found = lookup(task, setting, backbone, variant, protocol)
    return found[0] if found else None


def paper_steps(task: str, setting: str | None) -> float | None:
    for r in STEPS_TO_CONVERGE:
        if r.task == task and r.setting == setting:
            return r.steps
    return None


@dataclass
class Comparison:
    """The published number a run is shown beside, and every way the two differ."""

    setting: str | None
    variant: str
    reference: Reference | None
    differences: list[str] = field(default_factory=list)
    others: list[Reference] = field(default_factory=list)  # same task + setting + variant, not chosen
    elsewhere: list[Reference] = field(default_factory=list)  # same task + setting, other variants: not comparable
    note: str = ""  # why there is no number, when there is none


def _protocol_text(name: str) -> str:
    return {"paper": "the 2021 code's (--protocol paper)", "fpt": "fpt's default",
            "rothermel": "Rothermel et al.'s (lr swept, best validation)", "other": "another paper's own"}.get(name, name)


def compare(results: dict[str, Any]) -> Comparison:
    """The published number for a run (same task, setting and variant) and how they differ."""
    task = results.get("task", "")
    setting = setting_of(results)
    variant = variant_of(results)
    protocol = protocol_of(results)
    if task in NO_PAPER_NUMBER:
        return Comparison(setting, variant, None, note=NO_PAPER_NUMBER[task])
    if setting is None:
        return Comparison(setting, variant, None,
                          note="no published setting matches (task + init + freeze + backbone kind)")
    found = lookup(task, setting, results.get("backbone"), variant, protocol)
    elsewhere = [r for r in REFERENCES if r.task == task and r.setting == setting and r.variant != variant]
    if not found:
        note = f"no published {setting} number for {task} in this task variant ({VARIANTS.get(variant, variant)})"
        if elsewhere:
            note += "; published for other variants only (not comparable): " + "; ".join(
                f"{r.accuracy:g} ({r.label()}; {VARIANTS[r.variant]})" for r in elsewhere)
        return Comparison(setting, variant, None, elsewhere=elsewhere, note=note)
    ref, others = found[0], found[1:]
    return Comparison(setting, variant, ref, differences(results, ref), others, elsewhere)


def differences(results: dict[str, Any], ref: Reference) -> list[str]:
    """Every way a run differs from the setting a published number was measured in."""
    out = []
    model = model_of(results)
    kind = backbone_kind(results)
    identity = results.get("backbone_identity") or {}
    if kind == "lstm":
        width = identity.get("hidden_size")
        if results.get("lstm_kind", "torch") != "layernorm":
            out.append("this run's LSTM is torch.nn.LSTM, the number's the 2021 layer-norm LSTM (--lstm-kind layernorm)")
        if width and str(width) != "768":
            out.append(f"LSTM width {width} (the number: 768)")
        if results.get("layers") not in (None, 3):
            out.append(f"{plural(results.get('layers'), 'LSTM layer')} (the number: 3)")
    elif model != ref.model:
        layers = f" ({plural(results['layers'], 'layer')})" if results.get("layers") else ""
        out.append(f"model: this run {model}{layers}, the number {MODEL_TEXT.get(ref.model, ref.model)}"
                   + (f", {plural(ref.layers, 'layer')}" if ref.layers else ""))
    if kind != "lstm":
        depth = ref.layers or MODEL_DEPTH.get(ref.model)
        layers = results.get("layers")
        if depth and layers and int(layers) != depth and model == ref.model:
            out.append(f"depth: this run {plural(layers, 'layer')}, the number {depth}")
    protocol = protocol_of(results)
    if ref.protocol != protocol:
        out.append(f"protocol: this run {_protocol_text(protocol)}, the number {_protocol_text(ref.protocol)}")
    options = results.get("task_options") or {}
    if results.get("task") == "listops":
        if options.get("source", "files") == "generated":
            out.append("data: generated expressions (source=generated), not LRA's files")
        if ref.variant == "listops-2021":
            if int(options.get("pad_to") or 0) != 512:
                out.append("the 2021 code padded to 512 and read position 511 (pad_to=512); this run reads the last real token")
            if options.get("test_split", "test") != "val" and options.get("source", "files") == "files":
                out.append("the number is on basic_val (test_split=val); this run's test is basic_test")
    if results.get("task") == "remote-homology" and ref.variant == "homology-valid":
        test = results.get("test") or {}
        if "accuracy_as_published" not in test:
            out.append("the number is accuracy x 0.9739 (published_scale); this run reports plain accuracy")
    if results.get("position_rows"):
        out.append(f"positions: this run's position table grown to {results['position_rows']} rows by fpt (new rows "
                   "seeded N(0, its std)); how the number's run fed sequences longer than the model's table is not "
                   "stated in its source")
    dropped = ((results.get("data") or {}).get("dropped_too_long") or {})
    if dropped.get("test") or dropped.get("val"):
        out.append(f"sequences longer than max_tokens={(results.get('data') or {}).get('max_tokens')} dropped "
                   f"(test {dropped.get('test', 0)}, val {dropped.get('val', 0)}): the test set is smaller")
    if str(results.get("label", "")).startswith("-small"):
        out.append("a -small preset: scaled down for a CPU, not the paper's setting")
    return out


def describe(task: str) -> str:
    """A line about what the paper reports for a task (or why there is nothing)."""
    if task in NO_PAPER_NUMBER:
        return NO_PAPER_NUMBER[task]
    if task not in TASKS:
        return f"{task}: not in the paper"
    parts = [f"{r.setting} {r.accuracy:g}" for r in REFERENCES if r.task == task and r.where == "Table 1"
             and r.source == "lu2021"]
    return f"{TASKS[task]} (Lu et al. 2021, Table 1, test accuracy %, the 2021 code's protocol): " + ", ".join(parts)


NO_PAPER_NUMBER.setdefault("timeseries", "not in the paper: the field's published baselines for the same problem and "
                                         "split are in the report's time-series section (fpt.results.ts_reference.TS_REFERENCES)")
