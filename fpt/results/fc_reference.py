"""Published numbers of the long-horizon forecasting benchmark (the ``forecast`` task), each with its source
figure and its test loader's drop_last policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# =================================================================================================
# Forecasting (the `forecast` task): the long-horizon benchmark's published numbers.
#
# Multivariate ETTh1 / ETTh2, z-scored MSE / MAE, the ETT borders (fpt.data.forecast.ETT_HOUR_BORDERS),
# each read from the repository's own result table (the figure files named in FC_CITATIONS; read
# 2026-12, see docs/tasks.md). Every one was measured with test loaders that drop the last incomplete
# batch (drop_last=True), where fpt counts every window: ``drop_last`` says how many windows each dropped at H=96.
# GPT4TS's per-horizon values exist only in its paper's appendix D.3, not in its repository: fpt prints
# its four-horizon averages (``horizon`` None), the only GPT4TS numbers it could read at a primary source.
# =================================================================================================
FC_CITATIONS = {
    "ltsf-linear": "Zeng, Chen, Zhang, Xu (2023). Are Transformers Effective for Time Series Forecasting? AAAI 2023 "
                   "(arXiv:2205.13504), Table 2; github.com/cure-lab/LTSF-Linear README, pics/Mul-results.png "
                   "(look-back 336 for the LTSF-Linear family).",
    "patchtst": "Nie, Nguyen, Sinthong, Kalagnanam (2023). A Time Series is Worth 64 Words. ICLR 2023 (arXiv:2211.14730), "
                "Table 3; github.com/yuqinie98/PatchTST pic/table3.png (PatchTST/42: look-back 336, patch 16, stride 8).",
    "gpt4ts": "Zhou, Niu, Wang, Sun, Jin (2023). One Fits All: Power General Time Series Analysis by Pretrained LM. "
              "NeurIPS 2023 (arXiv:2302.11939), Table 3 (averages over H = 96, 192, 336, 720); "
              "github.com/DAMO-DI-ML/NeurIPS2023-One-Fits-All pic/long_term_result.png (GPT2(6), look-back 336).",
}


@dataclass(frozen=True)
class FCReference:
    dataset: str  # ETTh1, ETTh2
    horizon: int | None  # None: the average over H = 96, 192, 336, 720
    lookback: int
    method: str
    mse: float
    mae: float
    source: str  # a key of FC_CITATIONS
    drop_last: str  # the test loader's policy, as read from the repository's code

    def citation(self) -> str:
        return FC_CITATIONS[self.source]


_LTSF_DROP = ("drop_last=True in the test loader when the table was made (data_factory.py before commit 6fe4c28, "
              "2023-03-15, which set it False); batch 32: 1 of 2785 test windows dropped at H=96")
_PATCHTST_DROP = "drop_last=True (PatchTST_supervised/data_provider/data_factory.py); batch 128: 97 of 2785 dropped at H=96"
_GPT4TS_DROP = ("drop_last=True (Long-term_Forecasting/data_provider/data_factory.py, drop_last_test); batch 256 over "
                "windows x channels: 39 of 19495 channel-windows dropped at H=96")


def _fc_references() -> list[FCReference]:
    out = []
    linear = {("ETTh1", 96): (0.375, 0.397), ("ETTh1", 192): (0.418, 0.429), ("ETTh1", 336): (0.479, 0.476),
              ("ETTh1", 720): (0.624, 0.592), ("ETTh2", 96): (0.288, 0.352), ("ETTh2", 192): (0.377, 0.413),
              ("ETTh2", 336): (0.452, 0.461), ("ETTh2", 720): (0.698, 0.595)}
    dlinear = {("ETTh1", 96): (0.375, 0.399), ("ETTh1", 192): (0.405, 0.416), ("ETTh1", 336): (0.439, 0.443),
               ("ETTh1", 720): (0.472, 0.490), ("ETTh2", 96): (0.289, 0.353), ("ETTh2", 192): (0.383, 0.418),
               ("ETTh2", 336): (0.448, 0.465), ("ETTh2", 720): (0.605, 0.551)}
    repeat = {("ETTh1", 96): (1.295, 0.713), ("ETTh1", 192): (1.325, 0.733), ("ETTh1", 336): (1.323, 0.744),
              ("ETTh1", 720): (1.339, 0.756), ("ETTh2", 96): (0.432, 0.422), ("ETTh2", 192): (0.534, 0.473),
              ("ETTh2", 336): (0.591, 0.508), ("ETTh2", 720): (0.588, 0.517)}
    patchtst42 = {("ETTh1", 96): (0.375, 0.399), ("ETTh1", 192): (0.414, 0.421), ("ETTh1", 336): (0.431, 0.436),
                  ("ETTh1", 720): (0.449, 0.466), ("ETTh2", 96): (0.274, 0.336), ("ETTh2", 192): (0.339, 0.379),
                  ("ETTh2", 336): (0.331, 0.380), ("ETTh2", 720): (0.379, 0.422)}
    for table, method, source, drop in ((linear, "Linear (LTSF-Linear)", "ltsf-linear", _LTSF_DROP),
                                        (dlinear, "DLinear", "ltsf-linear", _LTSF_DROP),
                                        (repeat, "Repeat (last value)", "ltsf-linear", _LTSF_DROP),
                                        (patchtst42, "PatchTST/42", "patchtst", _PATCHTST_DROP)):
        out += [FCReference(d, h, 336, method, mse, mae, source, drop) for (d, h), (mse, mae) in table.items()]
    out += [FCReference("ETTh1", None, 336, "GPT4TS, GPT2(6)", 0.427, 0.426, "gpt4ts", _GPT4TS_DROP),
            FCReference("ETTh2", None, 336, "GPT4TS, GPT2(6)", 0.346, 0.394, "gpt4ts", _GPT4TS_DROP)]
    return out


FC_REFERENCES: list[FCReference] = _fc_references()


def fc_lookup(data: dict[str, Any] | None) -> tuple[list[FCReference], str]:
    """Published numbers for a forecasting run's data (``results.json`` ``data``): the same dataset on the ETT
    split at the same look-back, the same horizon first, then the four-horizon averages; and why there are none."""
    if not data:
        return [], "no data description in results.json"
    dataset, split, lookback = str(data.get("problem", "")), data.get("split"), data.get("lookback")
    if split != "ett":
        return [], f"{dataset}: not the ETT benchmark split: no published number"
    same = [r for r in FC_REFERENCES if r.dataset == dataset and r.lookback == lookback]
    if not same:
        return [], f"{dataset} at look-back {lookback}: no published number in fpt.results.fc_reference.FC_REFERENCES"
    return ([r for r in same if r.horizon == data.get("horizon")] + [r for r in same if r.horizon is None]), ""
