"""The ``fpt`` command line, in process (``fpt.cli.main``), on tiny runs; one real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from fpt.backbones.freeze import PRESETS
from fpt.cli.main import main

SMALL = ["-o", "n_bits=3", "-o", "val_samples=16", "-o", "test_samples=16", "--init", "random",
         "--steps", "4", "--eval-every", "2", "--batch-size", "8", "--eval-batch-size", "16", "--device", "cpu",
         "--no-progress-bar"]


def fit_args(backbone, run_dir, *extra):
    return ["fit", "--task", "bit-xor", "--backbone", str(backbone), "--run-dir", str(run_dir), *SMALL, *extra]


def last_json(text: str):
    return json.loads(text[text.index("{"):])


def test_fit_test_resume_end_to_end(tmp_path, tiny_dirs, capsys):
    run = tmp_path / "run"
    # YAML config < flags: the file asks for 100 steps and 5 bits; flags say 4 steps, -o says 3 bits.
    config = tmp_path / "xor.yaml"
    config.write_text(yaml.safe_dump({"task": "bit-xor", "steps": 100, "lr": "3e-3",
                                      "task_options": {"n_bits": 5, "patch_size": 1}}))
    assert main(fit_args(tiny_dirs["gpt2"], run, "--config", str(config))) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and f"run directory: {run}" in out
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 4 and results["lr"] == 3e-3
    assert results["task_options"]["n_bits"] == 3 and results["task_options"]["patch_size"] == 1

    assert main(["test", "--run-dir", str(run)]) == 0
    metrics = last_json(capsys.readouterr().out)
    assert metrics["test"]["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-7)

    # Continue the run to 6 steps; its own config is kept.
    assert main(["fit", "--resume", str(run), "--steps", "6", "--no-progress-bar"]) == 0
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["steps"] == 6 and resumed["lr"] == 3e-3 and resumed["task_options"]["n_bits"] == 3
    capsys.readouterr()

    # Only machinery may change on resume; starting over in the same directory is refused.
    assert main(["fit", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "--resume continues a run with its own config" in capsys.readouterr().err
    assert main(fit_args(tiny_dirs["gpt2"], run)) == 2  # the run there has lr 3e-3 (from its YAML file)
    err = capsys.readouterr().err
    assert "holds another run (lr: there 0.003, now 0.001" in err and f"--run-dir {run}-2" in err
    assert main(fit_args(tiny_dirs["gpt2"], run, "--lr", "3e-3", "-o", "patch_size=1")) == 2  # the same run
    assert "already holds a run" in capsys.readouterr().err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("bit-xor", "bit-memory", "lstm", "smollm2-135m", "output-only", "+attn"):
        assert word in out, word
    assert main(["list", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"bit-xor", "bit-memory"} <= set(info["tasks"])
    assert set(info["freeze_presets"]) == set(PRESETS)
    assert "lstm" in info["backbones"]
    # shipped presets and experiments are described in whole sentences, never cut mid-sentence
    for name, text in {**info["config_presets"], **info["experiments"]}.items():
        assert text.endswith(".") and text[0].isupper(), (name, text)
    assert "half the bits masked -> the original." in info["config_presets"]["bit-memory"]


def test_list_subprocess():
    done = subprocess.run([sys.executable, "-m", "fpt.cli", "list", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bit-xor" in json.loads(done.stdout)["tasks"]


# -- bad input: exit status 2 and a message, no traceback, no run directory left behind -------------
@pytest.mark.parametrize("extra,message", [
    (["--task", "bit-xr"], ["unknown task 'bit-xr'", "Did you mean 'bit-xor'"]),
    (["--freeze", "fpy"], ["unknown freeze preset 'fpy'", "Did you mean 'fpt'"]),
    (["--layers", "5"], ["--layers 5 is more than", "2 blocks"]),
    (["--layers", "-1"], ["option 'layers' (--layers) must be an integer >= 0, got -1"]),
    (["-o", "nbits=3"], ["no option 'nbits'", "Did you mean 'n_bits'"]),
    (["-o", "n_bits=three"], ["option 'n_bits' must be int"]),
    (["--readout", "cls"], ["option 'readout' (--readout) must be 'last', 'mean', 'first', 'tokens' or 'flatten', got 'cls'"]),
    (["--readout", "first"], ["readout 'first'", "causal backbone (gpt2)"]),  # an encoders' read-out
])
def test_bad_fit_options(tmp_path, tiny_dirs, capsys, extra, message):
    run = tmp_path / "run"
    assert main(fit_args(tiny_dirs["gpt2"], run, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fpt fit: error:") and "Traceback" not in err
    for part in message:
        assert part in err, (part, err)
    assert not (run / "config.yaml").exists()


@pytest.mark.parametrize("content,message", [
    ({"max_bad_steps": "ten"}, "option 'max_bad_steps' (--max-bad-steps) must be an integer"),
    ({"lr": "fast"}, "option 'lr' (--lr) must be a number"),
    ({"task_options": 5}, "option 'task_options' must be a mapping"),  # merged with -o n_bits=3
    ({"stesp": 3}, "unknown option 'stesp'. Did you mean 'steps'"),
    ({"freeze": 3}, "option 'freeze' (--freeze) must be a preset name or a list of groups"),
    ({"learned_positions": "maybe"}, "option 'learned_positions' (--learned-positions) must be true or false"),
])
def test_bad_yaml_config(tmp_path, tiny_dirs, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(content))
    assert main(fit_args(tiny_dirs["gpt2"], tmp_path / "run", "--config", str(config))) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_config_that_is_not_a_mapping_or_missing(tmp_path, tiny_dirs, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("- steps\n- 3\n")
    assert main(fit_args(tiny_dirs["gpt2"], tmp_path / "run", "--config", str(config))) == 2
    assert "must be a YAML mapping" in capsys.readouterr().err
    assert main(fit_args(tiny_dirs["gpt2"], tmp_path / "run", "--config", "bit-xor-smal")) == 2
    err = capsys.readouterr().err
    assert "no config file or preset named 'bit-xor-smal'" in err and "Did you mean 'bit-xor-small'" in err


@pytest.mark.parametrize("argv,message", [
    (["-o", "n_bits"], "task options are KEY=VALUE"),
    (["--steps", "ten"], "invalid int value"),
])
def test_unparseable_arguments_exit_2(tmp_path, tiny_dirs, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tiny_dirs["gpt2"], tmp_path / "run", *argv))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_test_and_resume_need_a_run_dir(tmp_path, capsys):
    assert main(["test", "--run-dir", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["fit", "--resume", str(tmp_path)]) == 2
    assert "no config.yaml there" in capsys.readouterr().err


def test_yaml_task_options_merge_with_flags():
    from fpt.config.files import build_config, merge

    merged = merge({"task_options": {"n_bits": 5, "patch_size": 5}}, {"task_options": {"n_bits": 10}})
    assert build_config(merged).task_options == {"n_bits": 10, "patch_size": 5}
    assert merge({"task_options": None}, {"task_options": {"n_bits": 3}})["task_options"] == {"n_bits": 3}
    with pytest.raises(ValueError, match="'task_options' must be a mapping"):
        merge({"task_options": [1]}, {"task_options": {"n_bits": 3}})


def test_resume_accepts_the_original_command_and_names_what_differs(tmp_path, tiny_dirs, capsys):
    """A scheduler's requeue script re-runs the original command with --resume appended: options equal to the
    run's own are accepted; of the others, only how and when it runs may change, and the refusal names them."""
    run = tmp_path / "run"
    original = fit_args(tiny_dirs["gpt2"], run, "--lr", "3e-3")
    assert main(original) == 0
    capsys.readouterr()
    assert main(original + ["--resume", str(run)]) == 0  # the same command again: nothing differs
    assert json.loads((run / "results.json").read_text())["steps"] == 4
    # how (eval batch size, device) and when (steps) may change; the rest of the command is unchanged
    assert main(original + ["--resume", str(run), "--steps", "6", "--eval-batch-size", "8"]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 6
    capsys.readouterr()
    assert main(original + ["--resume", str(run), "--lr", "0.1", "--seed", "3", "-o", "n_bits=4"]) == 2
    err = capsys.readouterr().err
    assert "--resume continues a run with its own config" in err
    assert "lr: the run has 0.003, given 0.1" in err and "seed: the run has 0, given 3" in err
    assert "task_options" in err and "steps" not in err.split("Only")[0]
    assert main(["fit", "--resume", str(run), "--run-dir", str(tmp_path / "other")]) == 2
    assert "name different directories" in capsys.readouterr().err
    # a preset named with --config on resume is compared the same way
    assert main(["fit", "--resume", str(run), "--config", "bit-xor-small"]) == 2
    assert "these options differ from the run's" in capsys.readouterr().err


# -- the bad-input table, generated from the option declarations (fpt/config/, fpt/base/options.py) ------------
def bad_values(f) -> list:
    """Values option ``f`` must refuse, from what it declares: outside its bounds, not finite, not one of its
    choices, of the wrong type, too long. A new option gets its rows here without a line of test code."""
    from fpt.base.options import MAX_TEXT, base_kind

    kind, _ = base_kind(f.type)
    meta = f.metadata
    out = []
    if meta.get("choices"):
        out.append("not-a-choice")
    if meta.get("bounds") is not None:
        out += meta["bounds"].outside(integer=kind == "int")
    if kind == "float":
        out += ["inf", "-inf", "nan"]
    if kind == "int":
        out += ["1.5", "inf"]
    if kind in ("bool", "tristate"):
        out.append("maybe")
    if kind in ("str", "str_or_list") and not meta.get("choices"):
        out.append("x" * ((meta.get("max_length") or MAX_TEXT) + 1))
    if kind == "dict":
        out += ["not a mapping", {f"k{i}": i for i in range(300)}]
    if meta.get("convert") is not None:  # backbone_dropout: a probability or keep
        out += [2, "inf", "sometimes"]
    return out


def _declared():
    from fpt.config.run import FIELDS

    return FIELDS


def _table(flags_only: bool):
    from fpt.base.options import base_kind

    rows = []
    for name, f in _declared().items():
        if flags_only and (f.metadata.get("flag", True) is False or base_kind(f.type)[0] == "bool"):
            continue  # YAML-only keys; --flag/--no-flag takes no value (test_bool_flags_take_no_value)
        rows += [pytest.param(name, value, id=f"{name}={str(value)[:12]}") for value in bad_values(f)]
    return rows


def test_every_option_has_bad_values_and_every_number_declares_its_bounds():
    from fpt.base.options import base_kind

    for name, f in _declared().items():
        assert bad_values(f), f"{name}: nothing to refuse? declare bounds, choices or a max_length"
        kind, _ = base_kind(f.type)
        if kind in ("int", "float"):
            assert f.metadata.get("bounds") is not None, f"{name}: a numeric option declares bounds=..."


@pytest.mark.parametrize("name,value", _table(flags_only=False))
def test_every_config_key_refuses_bad_values_by_name(name, value):
    from fpt.config.files import build_config

    with pytest.raises(ValueError) as err:
        build_config({name: value})
    assert f"option {name!r}" in str(err.value), str(err.value)


@pytest.mark.parametrize("name,value", _table(flags_only=True))
def test_every_flag_refuses_bad_values_before_anything_is_built(name, value, tmp_path, tiny_dirs, capsys):
    """Exit 2 with the flag named, nothing created: the run directory does not exist afterwards."""
    run = tmp_path / "run"
    flag = "--" + name.replace("_", "-")
    args = fit_args(tiny_dirs["gpt2"], run)
    args = [a for i, a in enumerate(args) if a != flag and (i == 0 or args[i - 1] != flag)]  # SMALL sets a few
    try:
        code = main(args + [f"{flag}={value}"])
    except SystemExit as exit_info:  # argparse's own type check (an int flag given 1.5)
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert flag in err or f"'{name}'" in err, err
    assert "Traceback" not in err
    assert not run.exists()


def test_bool_flags_take_no_value(tmp_path, tiny_dirs, capsys):
    from fpt.base.options import base_kind

    for name, f in _declared().items():
        if base_kind(f.type)[0] == "bool" and f.metadata.get("flag", True):
            with pytest.raises(SystemExit) as exit_info:
                main(fit_args(tiny_dirs["gpt2"], tmp_path / "run") + [f"--{name.replace('_', '-')}=maybe"])
            assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()


def _task_table():
    import dataclasses

    from fpt.tasks.registry import registered_tasks as _registered

    rows = []
    for task_name, cls in sorted(_registered().items()):
        if not cls.__module__.startswith("fpt.tasks"):
            continue  # a task a test (or docs recipe) registered
        for f in dataclasses.fields(cls.Options):
            rows += [pytest.param(task_name, f.name, value, id=f"{task_name}-{f.name}={str(value)[:10]}")
                     for value in bad_values(f)]
    return rows


def test_every_numeric_task_option_declares_bounds():
    import dataclasses

    from fpt.base.options import base_kind
    from fpt.tasks.registry import registered_tasks as _registered

    for task_name, cls in _registered().items():
        if not cls.__module__.startswith("fpt.tasks"):
            continue
        for f in dataclasses.fields(cls.Options):
            if base_kind(f.type)[0] in ("int", "float"):
                assert f.metadata.get("bounds") is not None, f"task {task_name}: option {f.name} declares no bounds"


@pytest.mark.parametrize("task_name,option,value", _task_table())
def test_every_task_option_refuses_bad_values_by_name(task_name, option, value):
    from fpt.tasks.base import make_options
    from fpt.tasks.registry import registered_tasks as _registered

    with pytest.raises(ValueError, match=f"task '{task_name}': option '{option}'"):
        make_options(_registered()[task_name], {option: value})


# -- config files: bounded, never evaluated, no aliases; errors name the file -------------------------------
def test_config_files_that_are_not_configs_are_named(tmp_path, tiny_dirs, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    assert main(fit_args(tiny_dirs["gpt2"], tmp_path / "run", "--config", str(binary))) == 2
    assert f"config file {binary} is not a text file (not UTF-8" in capsys.readouterr().err
    assert main(fit_args(tiny_dirs["gpt2"], tmp_path / "run", "--config", "/dev/zero")) == 2  # would read forever
    assert "config file /dev/zero is larger than 1024 KB (or never ends)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_yaml_aliases_are_refused(tmp_path, tiny_dirs, capsys):
    laughs = ["task_options:", "  a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for name, previous in zip("bcdefghi", "abcdefgh"):
        laughs.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    laughs.append("label: *i")  # 10^9 strings once expanded
    config = tmp_path / "laughs.yaml"
    config.write_text("\n".join(laughs) + "\n")
    assert main(fit_args(tiny_dirs["gpt2"], tmp_path / "run", "--config", str(config))) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "found the alias *a: YAML aliases are not accepted" in err


def test_unknown_architecture_with_readme_freeze_rules_through_yaml(tmp_path, capsys):
    from transformers import OPTConfig

    OPTConfig(num_hidden_layers=2, hidden_size=64, ffn_dim=96, num_attention_heads=4, vocab_size=128,
              max_position_embeddings=64, word_embed_proj_dim=64).save_pretrained(str(tmp_path / "opt"))
    rules = "freeze_rules: {norm: [LayerNorm], attention: [OPTAttention], feedforward: [OPTDecoderLayer]}\n"
    (tmp_path / "rules.yaml").write_text(rules)  # as the README writes it
    args = ["fit", "--task", "bit-xor", "--backbone", str(tmp_path / "opt"), *SMALL, "--config", str(tmp_path / "rules.yaml")]
    assert main(args + ["--run-dir", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "embed_positions.weight (in OPTLearnedPositionalEmbedding)" in err
    assert "e.g. {positions: [OPTLearnedPositionalEmbedding]}" in err  # the rule to add, ready to paste
    (tmp_path / "rules.yaml").write_text(rules.replace("]}", "], positions: [OPTLearnedPositionalEmbedding]}"))
    assert main(args + ["--run-dir", str(tmp_path / "r2")]) == 0
    assert json.loads((tmp_path / "r2" / "results.json").read_text())["steps"] == 4
    # a module path names a module of a generic class (here: the position table, an Embedding subclass)
    (tmp_path / "rules.yaml").write_text(rules.replace("]}", "], positions: [decoder.embed_positions]}"))
    assert main(args + ["--run-dir", str(tmp_path / "r3")]) == 0


def test_bench_layers_zero_is_not_blamed_on_the_model_file(capsys):
    assert main(["bench", "--layers", "0", "--steps", "1", "--warmup", "0", "--profile", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--layers takes integers >= 1, got '0'" in err and "GGUF" not in err
