"""``--protocol paper``: the 2021 code's behaviour, one deviation per test, on fixtures in the official formats.

Every knob the protocol sets is an ordinary option too; these tests check what each one does to the
data or the model, that the protocol sets it (and only where it applies), that explicit options
win over it, and the acceptance path: ``fpt fit --config listops --protocol paper`` strips the
brackets and cuts at 512 visibly, and its report row is compared with 38.4 (46.1 without it).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fpt.config import protocols as protocol
from fpt.config.files import build_config, preset_keys, read_yaml
from fpt.data.fixtures import write_cifar10, write_listops_files, write_mnist_like, write_tape_remote_homology
from fpt.tasks import make_task

pytestmark = pytest.mark.usefixtures("offline_data")


# -- the mechanism --------------------------------------------------------------------------------
def test_protocol_fills_in_settings_and_explicit_options_win():
    preset = read_yaml("listops")
    overridable = preset_keys(preset)
    values = protocol.resolve({**preset, "protocol": "paper"}, overridable)
    assert values["batch_size"] == 4 and values["lr"] == 1e-3  # over the preset's 32 / 1e-3
    assert values["input_dropout"] == 0.1 and values["backbone_dropout"] == "keep" and values["input_init"] == "paper"
    assert values["task_options"] == {"source": "files", "close_bracket": False,
                                      "truncate_at": 512, "pad_to": 512, "test_split": "val"}
    assert preset["position_rows"] == 2048 and values["position_rows"] is None  # the 2021 code's 1024 positions
    # a flag / the user's own YAML key is explicit: it stays
    mine = protocol.resolve({**preset, "protocol": "paper", "batch_size": 32,
                             "task_options": {**preset["task_options"], "truncate_at": 0}},
                            overridable - {"batch_size", "task_options.truncate_at"})
    assert mine["batch_size"] == 32 and mine["task_options"]["truncate_at"] == 0
    # the default protocol changes nothing
    assert protocol.resolve({**preset}, overridable) == preset
    with pytest.raises(ValueError, match=r"option .protocol. \(--protocol\) must be one of fpt, paper"):
        protocol.resolve({"protocol": "2021"})


def test_paper_homology_keeps_what_the_2021_limit_kept():
    # the 2021 code skipped x.shape[1] > 1024 with TAPE's <cls> and <sep> counted: 1022 residues; -small keeps its cut
    for name, limit in (("remote-homology", 1022), ("remote-homology-small", 256)):
        preset = read_yaml(name)
        values = protocol.resolve({**preset, "protocol": "paper"}, preset_keys(preset))
        assert values["task_options"]["max_tokens"] == limit and values["task_options"]["too_long"] == "skip"


@pytest.mark.parametrize("task, backbone, lr", [("mnist", "gpt2", 1e-3), ("remote-homology", "gpt2", 1e-4),
                                                ("mnist", "lstm", 3e-4)])
def test_paper_learning_rate_and_lstm(task, backbone, lr):
    c = build_config({"protocol": "paper", "task": task, "backbone": backbone, "init": "random"})
    assert c.lr == lr and c.batch_size == 4
    assert c.lstm_kind == ("layernorm" if backbone == "lstm" else "torch")
    assert c.backbone_dropout == (0.1 if backbone == "lstm" else "keep")


def test_cli_preset_keys_give_way_to_the_protocol_but_flags_do_not(tmp_path, tiny_dirs, capsys):
    from fpt.cli.main import main

    run = tmp_path / "run"
    code = main(["fit", "--config", "bit-xor-small", "--protocol", "paper", "--backbone", tiny_dirs["gpt2"],
                 "--init", "random", "--steps", "2", "--eval-every", "2", "--input-dropout", "0", "-o", "n_bits=3",
                 "-o", "val_samples=8", "-o", "test_samples=8", "--run-dir", str(run), "--no-progress-bar"])
    assert code == 0
    r = json.loads((run / "results.json").read_text())
    assert r["batch_size"] == 4  # the preset's 32 gave way to the protocol
    settings = r["protocol"]["settings"]
    assert r["protocol"]["name"] == "paper"
    assert settings["batch_size"] == {**settings["batch_size"], "protocol": 4, "fpt": 32, "used": 4}
    assert "run.py:29" in settings["batch_size"]["source"]
    drop = settings["input_dropout"]  # the --input-dropout flag won over the protocol, and results.json says so
    assert drop["overridden"] and drop["used"] == 0.0 and drop["protocol"] == 0.1
    assert settings["task_options.bit_values"]["used"] == "binary"
    assert "lr" not in settings  # the protocol's 1e-3 is fpt's default: nothing changed


# -- ListOps: brackets, 512, padding, the split reported as test ----------------------------------------
@pytest.fixture
def listops_files(tmp_path):
    # long enough that every expression is still longer than 512 tokens once its ']' are gone
    return write_listops_files(tmp_path, n={"train": 6, "val": 4, "test": 5}, min_length=680, max_length=740)


def test_listops_paper_tokenizer_strips_brackets_and_cuts_at_512(tmp_path, listops_files, caplog):
    fixed = make_task("listops", {"source": "files"}, data_dir=str(tmp_path))
    paper = make_task("listops", {"source": "files", "close_bracket": False, "truncate_at": 512},
                      data_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="fpt.data"):
        paper_train = paper.train().batch(np.arange(6))
    fixed_train = fixed.train().batch(np.arange(6))
    from fpt.data.listops import CLOSE_ID

    assert (fixed_train["x"] == CLOSE_ID).any() and not (paper_train["x"] == CLOSE_ID).any()
    assert fixed_train["x"].shape[1] > 512 and paper_train["x"].shape[1] == 512
    # the paper's sequence is the fixed one without ']', cut to 512 (same samples: same seed, same order)
    for i in range(6):
        row = fixed_train["x"][i][fixed_train["mask"][i]]
        expected = row[row != CLOSE_ID][:512]
        assert torch.equal(paper_train["x"][i][paper_train["mask"][i]], expected)
    text = caplog.text
    assert "dropped" in text and "']' tokens" in text and "to 512 tokens" in text  # visibly
    stats = paper.preprocessing["splits"]["train"]
    brackets = sum(t.count("]") for t, _ in listops_files["train"])
    assert stats == {"sequences": 6, "longest_before": max(len(t) for t, _ in listops_files["train"]),
                     "close_brackets_removed": brackets, "truncated": 6, "longest_after": 512}


def test_listops_pad_to_reads_the_last_position_and_test_split_val(tmp_path, listops_files):
    task = make_task("listops", {"close_bracket": False, "truncate_at": 512, "pad_to": 512, "test_split": "val"},
                     data_dir=str(tmp_path))
    batch = task.train().batch(np.arange(3))
    assert batch["x"].shape == (3, 512) and "mask" not in batch  # padded to 512, no mask: the 2021 batches
    assert task.spec.max_tokens == 512 and not task.spec.padded
    tests = task.test()
    assert list(tests) == ["test", "test_basic_test"]
    assert len(tests["test"]) == 4 and len(tests["test_basic_test"]) == 5  # basic_val is the headline, as in 2021
    # ... so fpt validates on a row held out of basic_train, never on the reported split
    assert len(task.val()) == 1 and len(task.train()) == 5
    assert "basic_train" in task.preprocessing["validation"]
    with pytest.raises(ValueError, match="set truncate_at <= 512"):
        make_task("listops", {"pad_to": 512}, data_dir=str(tmp_path))


def test_listops_generated_paper_drops_brackets_too():
    task = make_task("listops", {"source": "generated", "min_length": 20, "max_length": 60, "max_tokens": 60,
                                 "close_bracket": False})
    from fpt.data.listops import CLOSE_ID

    assert not (task.val().batch(np.arange(8))["x"] == CLOSE_ID).any()
    assert task.preprocessing["applied"] == "to every generated expression"


# -- dropout -----------------------------------------------------------------------------------------------
def test_input_dropout_and_backbone_dropout(tiny_dirs):
    from fpt.backbones import load_backbone
    from fpt.model.network import FPT, ModelConfig

    task = make_task("bit-xor", {"n_bits": 4})
    kept = load_backbone(tiny_dirs["gpt2"], init="random", dropout="keep")
    off = load_backbone(tiny_dirs["gpt2"], init="random")
    assert kept.model.config.resid_pdrop == kept.model.config.attn_pdrop == 0.1  # GPT-2's own, as in 2021
    assert off.model.config.resid_pdrop == 0.0 and all(m.p == 0.0 for m in off.modules()
                                                       if isinstance(m, torch.nn.Dropout))
    model = FPT(kept, task.spec, ModelConfig(input_dropout=0.1))
    x = torch.ones(64, 8, 1)
    model.train()
    assert not torch.equal(model.embed(x), model.embed(x))  # dropout is on in training
    model.eval()
    assert torch.equal(model.embed(x), model.embed(x))
    # none after an embedding input (the 2021 code has no dropout there)
    discrete = FPT(off, make_task("listops", {"source": "generated", "max_length": 60, "max_tokens": 60,
                                              "min_length": 20}).spec, ModelConfig(input_dropout=0.1))
    assert discrete.input_dropout is None
    with pytest.raises(ValueError, match="cache_features computes"):
        build_config({"freeze": "output-only", "cache_features": True, "input_dropout": 0.1})


def test_numeric_backbone_dropout_reaches_gguf_style_modules(tiny_dirs):
    from fpt.backbones.hf import _set_dropout
    from fpt.backbones import load_backbone

    b = load_backbone(tiny_dirs["llama"], init="random")
    _set_dropout(b.model.config, 0.3, b.model)
    assert {m.attention_dropout for m in b.modules() if hasattr(m, "attention_dropout")} == {0.3}


# -- the layer-norm LSTM -----------------------------------------------------------------------------------
def test_layernorm_lstm_norms_train_when_frozen_and_compute_the_2021_cell():
    from fpt.backbones import load_backbone
    from fpt.backbones.lnlstm import LayerNormLSTMCell, LNLSTMLayerNorm
    from fpt.model.network import FPT, ModelConfig

    task = make_task("bit-xor", {"n_bits": 4})
    backbone = load_backbone("lstm", init="random", layers=2, lstm_width=16, lstm_kind="layernorm", dropout=0.1)
    model = FPT(backbone, task.spec, ModelConfig(freeze="+input"))  # an LSTM has no positions
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    norms = {n for n, m in model.named_modules() if isinstance(m, LNLSTMLayerNorm) for n in
             (f"{n}.alpha", f"{n}.beta")}
    assert len(norms) == 2 * 3 * 2  # 3 norms per cell, 2 cells
    assert trained == norms | {"input_layer.weight", "input_layer.bias", "head.weight", "head.bias"}
    assert model.group_counts["recurrent"]["trainable"] == 0
    # initialisation as in 2021: norm gains uniform in +-1/sqrt(n) (near zero, not one)
    cell = backbone.model.cells[0]
    assert isinstance(cell, LayerNormLSTMCell)
    assert cell.ln_i2h.alpha.abs().max() <= 1 / math.sqrt(64) and cell.ln_cell.alpha.abs().max() <= 1 / 4
    # the norm: per sample, unbiased variance, eps 1e-6
    ln = LNLSTMLayerNorm(5)
    with torch.no_grad():
        ln.alpha.fill_(1.0)
        ln.beta.zero_()
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0]])
    expected = (v - v.mean()) / torch.sqrt(v.var(unbiased=True) + 1e-6)
    assert torch.allclose(ln(v), expected)
    # one cell step by hand: gates i, f, o = sigmoid of the first 3H pre-activations, g = tanh of the last H
    cell.eval()
    x, h, c = torch.randn(2, 16), torch.randn(2, 16), torch.randn(2, 16)
    pre = cell.ln_i2h(cell.i2h(x)) + cell.ln_h2h(cell.h2h(h))
    i, f, o, g = pre[:, :16].sigmoid(), pre[:, 16:32].sigmoid(), pre[:, 32:48].sigmoid(), pre[:, 48:].tanh()
    c2 = cell.ln_cell(c * f + i * g)
    h_out, c_out = cell(x, h, c)
    assert torch.allclose(c_out, c2) and torch.allclose(h_out, o * c2.tanh())
    # a fresh random initial state per forward pass, as the 2021 code's init_hidden
    seq = torch.randn(2, 5, 16)
    backbone.model.eval()
    assert not torch.equal(backbone.model(seq), backbone.model(seq))


# -- augmentation and normalisation ---------------------------------------------------------------------------
def test_cifar_paper_augmentation_rotates_and_lra_augments(tmp_path):
    write_cifar10(tmp_path, per_batch=8)
    plain = make_task("cifar10", {"val_fraction": 0.25}, data_dir=str(tmp_path))
    rotated = make_task("cifar10", {"val_fraction": 0.25, "rotation": 20.0}, data_dir=str(tmp_path))
    positions = np.arange(16)
    a, b = plain.train().batch(positions)["x"], rotated.train().batch(positions)["x"]
    assert a.shape == b.shape and not torch.allclose(a, b)  # the same crop + flip stream, then a rotation
    # evaluation splits are never augmented
    assert torch.equal(plain.test()["test"].batch(np.arange(4))["x"], rotated.test()["test"].batch(np.arange(4))["x"])
    c = build_config({"protocol": "paper", "task": "cifar10-lra"})
    assert c.task_options == {"normalize": "paper", "augment": True, "rotation": 20.0}
    with pytest.raises(ValueError, match="set augment=true"):
        make_task("cifar10-lra", {"rotation": 20.0}, data_dir=str(tmp_path))


def test_random_rotation_is_torchvision_like():
    from fpt.data.patching import random_rotation

    img = torch.zeros(1, 5, 5, 1, dtype=torch.uint8)
    img[0, 0, 2, 0] = 255  # top centre

    class Ninety:
        def uniform(self, low, high, size):
            return np.full(size, 90.0)

    out = random_rotation(img, Ninety(), 90.0)
    assert out[0, 2, 0, 0] == 255 and int(out.sum()) == 255  # counter-clockwise: top centre -> left centre
    angles = []

    class Spy:
        def uniform(self, low, high, size):
            angles.append((low, high))
            return np.zeros(size)

    same = random_rotation(img, Spy(), 20.0)
    assert angles == [(-20.0, 20.0)] and torch.equal(same, img)


def test_paper_normalization_constants(tmp_path):
    write_mnist_like(tmp_path / "mnist", n_train=20, n_test=8)
    images = write_mnist_like(tmp_path / "mnist", n_train=20, n_test=8)
    raw = make_task("mnist", {"val_fraction": 0.25, "normalize": "paper", "patch_size": 28}, data_dir=str(tmp_path))
    x = raw.test()["test"].batch(np.arange(8))["x"]
    assert torch.allclose(x.reshape(8, 28, 28), torch.as_tensor(images["test_images"] / 255.0, dtype=torch.float32))
    write_cifar10(tmp_path, per_batch=4)
    cifar = make_task("cifar10", {"val_fraction": 0.25, "normalize": "paper", "augment": False}, data_dir=str(tmp_path))
    assert np.allclose(cifar._load()["mean"], [0.4914, 0.4822, 0.4465])
    assert np.allclose(make_task("cifar10-lra", {"normalize": "paper"}, data_dir=str(tmp_path))._load()["std"], [0.5])


# -- bits ---------------------------------------------------------------------------------------------------
def test_bit_xor_binary_inputs():
    x = make_task("bit-xor", {"bit_values": "binary"}).train().batch(np.arange(16))["x"]
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert set(make_task("bit-xor").train().batch(np.arange(16))["x"].unique().tolist()) == {-1.0, 1.0}


# -- the paper's init of the new layers -----------------------------------------------------------------------
def test_paper_init_of_embedding_and_head(tiny_dirs):
    from fpt.backbones import load_backbone
    from fpt.model.network import FPT, ModelConfig

    spec = make_task("listops", {"source": "generated", "max_length": 60, "max_tokens": 60, "min_length": 20}).spec
    backbone = load_backbone(tiny_dirs["gpt2"], init="random")
    torch.manual_seed(0)
    paper = FPT(backbone, spec, ModelConfig(input_init="paper"))
    assert 0.8 < float(paper.input_layer.weight.detach().std()) < 1.2  # nn.Embedding's N(0, 1)
    bound = 1 / math.sqrt(backbone.hidden_size)  # nn.Linear's default head init
    assert float(paper.head.weight.detach().abs().max()) <= bound and float(paper.head.bias.detach().abs().max()) <= bound
    ours = FPT(backbone, spec, ModelConfig())
    assert float(ours.input_layer.weight.detach().std()) < 0.2 and float(ours.head.bias.abs().max()) == 0.0


# -- remote homology: the 2021 evaluation ----------------------------------------------------------------------
def test_homology_paper_evaluation(tmp_path, tiny_dirs):
    from fpt.training.fitting import fit

    write_tape_remote_homology(tmp_path / "remote_homology", n=10, lengths=(5, 80))
    values = {"protocol": "paper", "task": "remote-homology", "task_options": {"max_tokens": 40},
              "data_dir": str(tmp_path), "backbone": tiny_dirs["llama"], "init": "random", "steps": 2,
              "eval_every": 2, "eval_batch_size": 8, "device": "cpu", "run_dir": str(tmp_path / "run")}
    config = build_config(values)
    assert config.task_options == {"max_tokens": 40, "eval_split": "valid", "too_long": "skip",
                                   "published_scale": 0.9739}
    r = fit(config, enable_progress_bar=False)
    task = make_task("remote-homology", config.task_options, data_dir=str(tmp_path))
    tests = task.test()
    assert list(tests) == ["test", "test_fold", "test_superfamily", "test_family"]
    kept, dropped = len(tests["test"]), task.skipped["val"]  # TAPE's valid is the test set, as in 2021 ...
    assert kept == len(task._load()["val"][1])
    # ... so fpt validates on sequences held out of TAPE's train instead (never on the reported split)
    assert len(task.val()) == len(task._load()["val_carved"][1]) >= 1
    assert "TAPE's train" in r["data"]["validation"]
    assert dropped > 0 and r["data"]["dropped_too_long"]["val"] == dropped
    acc = r["test"]["accuracy"]
    assert r["test"]["accuracy_as_published"] == pytest.approx(acc * 0.9739)
    assert r["test"]["accuracy_dropped_as_wrong"] == pytest.approx(acc * kept / (kept + dropped))


# -- acceptance: fpt fit --config listops [--protocol paper] and its report row ----------------------------------
@pytest.fixture(scope="module")
def gpt2_1024(tmp_path_factory):
    """A tiny pretrained GPT-2 (config + safetensors) with GPT-2's 1024 positions."""
    from transformers import GPT2Config, GPT2Model

    path = tmp_path_factory.mktemp("gpt2-1024")
    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=1024, vocab_size=32, bos_token_id=0,
                         eos_token_id=0)).save_pretrained(str(path))
    return str(path)


def test_acceptance_listops_paper_vs_fixed_report_rows(tmp_path, listops_files, gpt2_1024, caplog):
    from fpt.cli.main import main
    from fpt.results.rows import run_row

    common = ["--config", "listops", "-o", "source=files", "--data-dir", str(tmp_path), "--backbone", gpt2_1024,
              "--steps", "2", "--eval-every", "2", "--no-progress-bar", "--num-threads", "1"]
    with caplog.at_level("WARNING", logger="fpt.data"):  # a warning: on stderr when fpt runs from the shell
        assert main(["fit", "--protocol", "paper", *common, "--run-dir", str(tmp_path / "paper")]) == 0
    said = caplog.text
    assert "the 2021 code's preprocessing" in said and "dropped" in said and "cut 5 of 5 sequences to 512" in said
    assert main(["fit", *common, "--run-dir", str(tmp_path / "fixed")]) == 0
    paper, fixed = run_row(tmp_path / "paper"), run_row(tmp_path / "fixed")
    assert paper["setting"] == fixed["setting"] == "fpt"
    assert paper["paper_accuracy"] == 38.4 and "Lu et al. 2021 Table 1" in paper["paper_source"]
    assert fixed["paper_accuracy"] == 46.1 and "Rothermel" in fixed["paper_source"]
    assert paper["variant"] == "listops-2021" and fixed["variant"] == "listops-fixed"
    assert "protocol" not in paper["differences"] and "protocol" in fixed["differences"]
    r = json.loads((tmp_path / "paper" / "results.json").read_text())
    assert r["data"]["splits"]["test"]["truncated"] == 5 and r["task_options"]["pad_to"] == 512
