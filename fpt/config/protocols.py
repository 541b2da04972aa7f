"""Protocols: ``fpt`` (the default, fpt's corrected protocol) and ``paper`` (what the 2021 code did).

``protocol: paper`` (YAML) / ``--protocol paper`` fills in, for every setting where the official
code (github.com/kzl/universal-computation, the snapshot read for docs/paper-fidelity.md) behaves
differently from fpt's defaults, the 2021 value: ListOps' tokenizer and 512-token cut, dropout,
the layer-norm LSTM, the augmentations, the remote-homology evaluation, the input layer's
initialisation, batch size and learning rate. Each of these is an ordinary config key or task
option too, so any one of them can be set on its own.

Precedence (lowest first): RunConfig defaults < a shipped preset < the protocol < your own YAML
file < command-line flags. So ``fpt fit --config listops --protocol paper`` takes the preset's
task and data settings and the protocol's batch size, while ``--batch-size 32`` (or a
``batch_size`` key in a YAML file of your own) still wins over the protocol. ``results.json``
records the protocol and, for every setting it defines, the protocol's value, fpt's default and
the value the run used (``fpt.training.results.protocol_record``).

Evidence for every value (file:line of the official code, or the paper) is in ``why`` and in
``docs/paper-fidelity.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fpt.base.text import suggest
from fpt.config.run import FIELDS

PROTOCOLS = ("fpt", "paper")


def _task(values: dict[str, Any]) -> str:
    return str(values.get("task") or FIELDS["task"].default)


def _is_lstm(values: dict[str, Any]) -> bool:
    return str(values.get("backbone") or FIELDS["backbone"].default) == "lstm"


def _tasks(*names: str) -> Callable[[dict[str, Any]], bool]:
    return lambda values: _task(values) in names


def _always(values: dict[str, Any]) -> bool:
    return True


def _listops_files(values: dict[str, Any]) -> bool:
    return _task(values) == "listops" and (values.get("task_options") or {}).get("source", "files") == "files"


def _homology_at_1024(values: dict[str, Any]) -> bool:
    """Remote homology at the 2021 length limit (max_tokens unset or >= 1024), not a shorter -small cut."""
    limit = (values.get("task_options") or {}).get("max_tokens")
    return _task(values) == "remote-homology" and (limit is None or int(limit) >= 1024)


@dataclass(frozen=True)
class Setting:
    key: str  # a RunConfig field, or "task_options.NAME"
    value: Any  # what the 2021 code does
    why: str  # the evidence (official file:line, or the paper)
    applies: Callable[[dict[str, Any]], bool] = _always  # for which runs (task, backbone)


# Later entries for the same key win where both apply (lr: 1e-3, then homology 1e-4, then LSTM 3e-4).
PAPER: tuple[Setting, ...] = (
    Setting("batch_size", 4, "scripts/run.py:29 (batch_size=4); paper App. C: 'between 2 and 16'"),
    Setting("lr", 1e-3, "scripts/run.py:28 (learning_rate=1e-3); paper App. C"),
    Setting("lr", 1e-4, "paper App. C: 1e-4 for remote homology", _tasks("remote-homology")),
    Setting("lr", 3e-4, "paper App. C: 3e-4 for the LSTMs", _is_lstm),
    Setting("input_dropout", 0.1, "scripts/run.py:30 (dropout=0.1); fpt.py:118 nn.Dropout after the input layer"),
    Setting("backbone_dropout", "keep", "fpt.py:44 GPT2Model.from_pretrained keeps GPT-2's 0.1 dropouts; "
            "trainer.py:54 model.train()", lambda v: not _is_lstm(v)),
    Setting("backbone_dropout", 0.1, "fpt.py:78-85 LNLSTM(dropout=0.1); models/lstm.py:389-391", _is_lstm),
    Setting("lstm_kind", "layernorm", "fpt.py:72-86 + models/lstm.py: 3-layer layer-norm LSTM (LNLSTM)", _is_lstm),
    Setting("input_init", "paper", "fpt.py:96-120 (orthogonal, gain 1.41, zero bias; nn.Embedding's N(0,1)); "
            "fpt.py:129 default nn.Linear head"),
    # ListOps: the LRA loader copied into the 2021 code
    Setting("task_options.close_bracket", False, "datasets/helpers/listops.py:63 tfds Tokenizer() keeps "
            "alphanumeric tokens only: ']' (and the parentheses) vanish", _tasks("listops")),
    Setting("task_options.truncate_at", 512, "datasets/helpers/listops.py:45,88 max_length=512, "
            "tf_encode(...)[:max_length]", _tasks("listops")),
    Setting("task_options.pad_to", 512, "datasets/helpers/listops.py:96-101 padded_batch to 512; fpt.py:184-185 reads "
            "the last position (a pad for shorter sequences), no attention mask", _tasks("listops")),
    Setting("position_rows", None, "fpt.py:40-48 GPT2Model as built: its 1024 positions (sequences are cut to 512 "
            "first, so nothing needs more)", _tasks("listops")),
    Setting("task_options.test_split", "val", "datasets/listops.py:15 d_train, d_test, *_ = get_datasets(...): "
            "the second split returned is basic_val", _listops_files),
    # images
    Setting("task_options.normalize", "paper", "datasets/mnist.py:19 Normalize(0, 1); cifar10.py:23 "
            "Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)); cifar10_gray.py:24 Normalize(0.5, 0.5)",
            _tasks("mnist", "fashion-mnist", "cifar10", "cifar10-lra")),
    Setting("task_options.augment", True, "datasets/cifar10_gray.py:17-25 data_aug=True by default",
            _tasks("cifar10", "cifar10-lra")),
    Setting("task_options.rotation", 20.0, "datasets/cifar10.py:22, cifar10_gray.py:23 RandomRotation(20)",
            _tasks("cifar10", "cifar10-lra")),
    # bits
    Setting("task_options.bit_values", "binary", "datasets/bit_xor.py:14-18 bits fed as 0/1 (dataset.py:12)",
            _tasks("bit-xor")),
    # remote homology
    Setting("task_options.eval_split", "valid", "datasets/remote_homology.py:26-30 'test' loader is TAPE's valid",
            _tasks("remote-homology")),
    Setting("task_options.too_long", "skip", "datasets/remote_homology.py:39-51 batches with a longer sequence "
            "are skipped", _tasks("remote-homology")),
    Setting("task_options.max_tokens", 1022, "datasets/remote_homology.py:51 skips x.shape[1] > 1024, and TAPE's "
            "tokenizer adds <cls> and <sep> to every sequence (tape/tokenizers.py:157-170, datasets.py:537): sequences "
            "of more than 1022 residues are dropped (fpt feeds residues only); a smaller max_tokens (-small) is kept",
            _homology_at_1024),
    Setting("bucket_by_length", 100, "datasets/remote_homology.py:28-29 tape.utils.setup_loader: TAPE's "
            "BucketBatchSampler (utils/_sampler.py, bucket_size_multiplier=100: pools of 100 batches sorted by length, "
            "batch order shuffled within a pool); the only 2021 loader that groups by length", _tasks("remote-homology")),
    Setting("bucket_by_length", 0, "every other 2021 loader draws batches of any length mix (ListOps: padded to 512 "
            "anyway)", lambda v: _task(v) != "remote-homology"),
    Setting("task_options.published_scale", 0.9739, "datasets/remote_homology.py:10-13 'we multiply reported "
            "accuracies for the paper by .9739'", _tasks("remote-homology")),
)

PROTOCOL_SETTINGS: dict[str, tuple[Setting, ...]] = {"fpt": (), "paper": PAPER}


def check_protocol(name: Any) -> str:
    if name not in PROTOCOLS:
        raise ValueError(f"option 'protocol' (--protocol) must be one of {', '.join(PROTOCOLS)}, got {name!r}."
                         f"{suggest(str(name), PROTOCOLS)}")
    return name


def settings_for(values: dict[str, Any]) -> dict[str, Setting]:
    """The protocol's settings that apply to this run, by key (the last applicable entry per key)."""
    protocol = check_protocol(values.get("protocol", "fpt"))
    out: dict[str, Setting] = {}
    for s in PROTOCOL_SETTINGS[protocol]:
        if s.applies(values):
            out[s.key] = s
    return out


def resolve(values: dict[str, Any], overridable: Iterable[str] = ()) -> dict[str, Any]:
    """``values`` with the protocol's settings filled in.

    A setting is taken from the protocol unless ``values`` holds that key explicitly; keys in
    ``overridable`` (those that came from a shipped preset, as ``name`` or ``task_options.name``)
    do not count as explicit. Returns a new dict; ``values`` is not changed.
    """
    overridable = set(overridable)
    out = dict(values)
    options = dict(out.get("task_options") or {})
    for key, s in settings_for(values).items():
        if key.startswith("task_options."):
            name = key.split(".", 1)[1]
            if name in options and key not in overridable:
                continue
            options[name] = s.value
        else:
            if key in values and key not in overridable:
                continue
            out[key] = s.value
    if options or "task_options" in out:
        out["task_options"] = options
    return out


def describe(protocol: str) -> str:
    """One line per setting of a protocol, for ``fpt list`` and docs."""
    lines = []
    for s in PROTOCOL_SETTINGS[check_protocol(protocol)]:
        lines.append(f"{s.key} = {s.value!r}: {s.why}")
    return "\n".join(lines)
