"""The ``fpt`` command line, in process (``fpt.cli.main``), on tiny runs; one real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from fpt.backbones.freeze import PRESETS
from fpt.cli import main

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
    assert main(fit_args(tiny_dirs["gpt2"], run)) == 2
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
    (["--layers", "0"], ["layers must be"]),
    (["-o", "nbits=3"], ["no option 'nbits'", "Did you mean 'n_bits'"]),
    (["-o", "n_bits=three"], ["option 'n_bits' must be int"]),
    (["--readout", "cls"], ["readout must be"]),
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
    ({"max_bad_steps": "ten"}, "option 'max_bad_steps' must be an integer"),
    ({"lr": "fast"}, "option 'lr' must be a number"),
    ({"task_options": 5}, "option 'task_options' must be a mapping"),  # merged with -o n_bits=3
    ({"stesp": 3}, "unknown option 'stesp'. Did you mean 'steps'"),
    ({"freeze": 3}, "option 'freeze' must be a preset name or a list of groups"),
    ({"learned_positions": "maybe"}, "option 'learned_positions' must be true or false"),
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
    from fpt.config import build_config, merge

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
