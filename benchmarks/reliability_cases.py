"""Bad input and faults, tried as a user would: one ``fpt`` command per case, its exit status and message.

    python benchmarks/reliability_cases.py > cases.md             # this checkout
    PYTHONPATH=/path/to/other/checkout python benchmarks/reliability_cases.py --json before.json

Each case runs ``python -m fpt.cli ...`` in a subprocess, on tiny backbones built from configs in a
temporary directory (nothing is downloaded; the hub is unreachable or ``FPT_OFFLINE=1``), and
prints one markdown row: the command, the exit status, the first line of the error (or, for a
command that exits 0, what it left behind: ``observe``). docs/reliability.md holds the table of
the last run next to the one before issue 15. Cases that need a read-only or full file system
mount a small tmpfs, which needs root; without it they are reported as skipped. It is a report,
not a test: tests/ checks each behaviour (tests/test_reliability.py, tests/test_cli.py...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(tempfile.mkdtemp(prefix="fpt-cases-"))
RUNS = HERE / "runs"
PY = sys.executable
TINY = ["-o", "n_bits=3", "-o", "val_samples=16", "-o", "test_samples=16", "--init", "random", "--batch-size", "8",
        "--eval-batch-size", "16", "--device", "cpu", "--no-progress-bar", "--num-threads", "1"]


def fpt(*args: str, env: dict | None = None, timeout: float = 300, stdin=None) -> dict:
    start = time.time()
    try:
        done = subprocess.run([PY, "-m", "fpt.cli", *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, cwd=HERE, stdin=stdin)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else "", \
            f"killed after {timeout:.0f} s"
    return {"code": code, "out": out, "err": err, "seconds": time.time() - start}


def message(result: dict) -> str:
    """The line a user reads: the error line, else the last line of stderr, else the last of stdout."""
    err = [line for line in result["err"].splitlines() if line.strip()]
    if result["code"] == 0:  # what it printed last on stdout (warnings on stderr are not the result)
        out = [line for line in result["out"].splitlines() if line.strip()]
        return out[-1].strip() if out else ""
    for line in err:
        if "error:" in line or line.startswith(("Traceback", "fpt fit:", "fpt predict:", "fpt report:", "fpt bench:")):
            if line.startswith("Traceback"):
                return "Traceback ... " + err[-1].strip()
            return line.strip()
    if err:
        return err[-1].strip()
    out = [line for line in result["out"].splitlines() if line.strip()]
    return out[-1].strip() if out else ""


def fit(run: str, *extra: str, task: str = "bit-xor", backbone: str | None = None, **kw) -> dict:
    return fpt("fit", "--task", task, "--backbone", backbone or str(HERE / "gpt2"), "--run-dir", str(RUNS / run),
               *TINY, *extra, **kw)


# -- fixtures --------------------------------------------------------------------------------------
def fixtures() -> None:
    from transformers import GPT2Config, GPT2Model, OPTConfig

    GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=128, bos_token_id=0,
               eos_token_id=0).save_pretrained(str(HERE / "gpt2"))
    GPT2Model(GPT2Config.from_pretrained(str(HERE / "gpt2"))).save_pretrained(str(HERE / "gpt2-pretrained"))
    OPTConfig(num_hidden_layers=2, hidden_size=64, ffn_dim=96, num_attention_heads=4, vocab_size=128,
              max_position_embeddings=64, word_embed_proj_dim=64).save_pretrained(str(HERE / "opt"))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 240)
    x = np.where(y[:, None, None] == 1, rng.integers(128, 256, (240, 8, 8)), rng.integers(0, 128, (240, 8, 8)))
    np.savez(HERE / "images.npz", x=x.astype(np.uint8), y=y)
    np.savez(HERE / "images-float.npz", x=(x / 255.0).astype(np.float32), y=y)
    big_label = y.copy()
    big_label[3] = 10**9
    np.savez(HERE / "label-1e9.npz", x=x.astype(np.uint8), y=big_label)
    tokens = rng.integers(0, 10, (64, 12))
    tokens[5, 2] = 2**40
    np.savez(HERE / "token-2e40.npz", x=tokens, y=rng.integers(0, 2, 64))
    (HERE / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    laughs = ["task_options:", "  a: &a [" + ",".join(["x"] * 10) + "]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        laughs.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    (HERE / "laughs.yaml").write_text("\n".join(laughs) + "\nlabel: *i\n")  # 10^9 strings once expanded
    (HERE / "long-label.yaml").write_text("label: " + "x" * 1_000_000 + "\n")
    (HERE / "freeze-rules.yaml").write_text(
        "freeze_rules: {norm: [LayerNorm], attention: [OPTAttention], feedforward: [OPTDecoderLayer]}\n")
    (HERE / "freeze-rules-ok.yaml").write_text(
        "freeze_rules: {norm: [LayerNorm], attention: [OPTAttention], feedforward: [OPTDecoderLayer], "
        "positions: [OPTLearnedPositionalEmbedding]}\n")
    (HERE / "someone-else" / "exp1").mkdir(parents=True)
    (HERE / "someone-else" / "exp1" / "results.json").write_text(json.dumps({"accuracy": 0.9, "epochs": 3}))
    (HERE / "corrupt" / "run").mkdir(parents=True)
    (HERE / "corrupt" / "run" / "results.json").write_text('{"task": "bit-xor", "steps": ')
    (HERE / "a-file").write_text("not a directory\n")


# -- observations for commands that exit 0 ----------------------------------------------------------
def weights_finite(run: str) -> str:
    from safetensors.torch import load_file

    path = RUNS / run / "model.safetensors"
    if not path.exists():
        return "no model.safetensors"
    bad = [k for k, t in load_file(str(path)).items() if not t.isfinite().all()]
    return f"model.safetensors: {len(bad)} non-finite tensors" if bad else "model.safetensors finite"


def predictions(csv_path: Path) -> str:
    if not csv_path.exists():
        return "no predictions written"
    import csv

    rows = list(csv.DictReader(open(csv_path)))
    classes = {r["prediction"] for r in rows}
    return f"{len(rows)} predictions, classes {sorted(classes)}"


def run_dir_state(run: str) -> str:
    d = RUNS / run
    if not d.exists():
        return "no run directory"
    return "run directory holds: " + ", ".join(sorted(p.name for p in d.iterdir()))


# -- the cases -------------------------------------------------------------------------------------
def cases():  # (group, name, thunk) ; thunk -> (result, observation)
    out = []

    def case(group, name, run, observe=None):
        out.append((group, name, run, observe))

    # trained runs used by later cases
    def train_image_run():
        r = fpt("fit", "--task", "array", "-o", f"path={HERE / 'images.npz'}", "-o", "patch_size=4",
                "--backbone", str(HERE / "gpt2"), "--init", "random", "--steps", "60", "--eval-every", "30",
                "--batch-size", "16", "--lr", "3e-3", "--device", "cpu", "--no-progress-bar", "--num-threads", "1",
                "--run-dir", str(RUNS / "images"))
        return r

    g = "silent wrong result"
    case(g, "fpt fit --lr inf --steps 2", lambda: fit("lr-inf", "--lr", "inf", "--steps", "2"),
         lambda r: weights_finite("lr-inf"))
    case(g, "fpt fit --lr 1e38 --steps 12 --eval-every 4",
         lambda: fit("lr-huge", "--lr", "1e38", "--steps", "12", "--eval-every", "4"), lambda r: weights_finite("lr-huge"))
    case(g, "(setup: fpt fit --task array on uint8 images, 60 steps)", train_image_run)

    def copy_run():
        shutil.copytree(RUNS / "images", RUNS / "images-2")
        return {"code": 0, "out": "copied", "err": "", "seconds": 0}
    case(g, "(setup: a second copy of the images run)", copy_run)
    case(g, "fpt predict --run-dir images --data images.npz --out p.csv (same uint8 data)",
         lambda: fpt("predict", "--run-dir", str(RUNS / "images"), "--data", "images.npz", "--out", "p-uint8.csv"),
         lambda r: predictions(HERE / "p-uint8.csv"))
    case(g, "fpt predict --run-dir images --data images-float.npz (floats in [0, 1]) --out q.csv",
         lambda: fpt("predict", "--run-dir", str(RUNS / "images"), "--data", "images-float.npz", "--out", "p-float.csv"),
         lambda r: predictions(HERE / "p-float.csv"))
    case(g, "fpt report someone-else/ (a foreign results.json)",
         lambda: fpt("report", "someone-else", "--out", "report-foreign"),
         lambda r: "wrote: " + ", ".join(sorted(p.name for p in (HERE / "report-foreign").glob("*")))
         if (HERE / "report-foreign").exists() else "nothing written")
    case(g, "fpt report corrupt/ (a truncated results.json)", lambda: fpt("report", "corrupt", "--out", "report-corrupt"))
    case(g, "fpt fit --backbone lstm --layers 999", lambda: fit("lstm999", "--backbone", "lstm", "--layers", "999",
                                                               "--steps", "2", "--lstm-width", "8"),
         lambda r: run_dir_state("lstm999"))
    case(g, "fpt fit --max-bad-steps 0 --steps 4", lambda: fit("mbs0", "--max-bad-steps", "0", "--steps", "4"))

    g = "overwrite"
    case(g, "fpt predict --out RUN_DIR/model.safetensors",
         lambda: fpt("predict", "--run-dir", str(RUNS / "images"), "--data", "images.npz", "--out",
                     str(RUNS / "images" / "model.safetensors")),
         lambda r: "model.safetensors now " + ("a CSV" if (RUNS / "images" / "model.safetensors").read_bytes()[:5]
                                               == b"index" else "intact"))
    def out_is_input():
        shutil.copy(HERE / "images.npz", HERE / "copy.npz")
        return fpt("predict", "--run-dir", str(RUNS / "images-2"), "--data", "copy.npz", "--out", "copy.npz")

    case(g, "fpt predict --data copy.npz --out copy.npz", out_is_input,
         lambda r: "copy.npz now " + ("a CSV" if (HERE / "copy.npz").read_bytes()[:5] == b"index" else "intact"))

    def existing_out():
        (HERE / "notes.csv").write_text("my notes\n")
        return fpt("predict", "--run-dir", str(RUNS / "images-2"), "--data", "images.npz", "--out", "notes.csv")
    case(g, "fpt predict --out notes.csv (an existing file)", existing_out,
         lambda r: "notes.csv " + ("overwritten" if "my notes" not in (HERE / "notes.csv").read_text() else "intact"))
    case(g, "fpt predict --out notes.csv --overwrite",
         lambda: fpt("predict", "--run-dir", str(RUNS / "images-2"), "--data", "images.npz", "--out", "notes.csv",
                     "--overwrite"),
         lambda r: "notes.csv " + ("overwritten" if "my notes" not in (HERE / "notes.csv").read_text() else "intact"))

    g = "refused where it enters"
    case(g, "fpt fit --backbone opt --config freeze-rules.yaml (README's freeze_rules, positions missing)",
         lambda: fit("opt", "--config", str(HERE / "freeze-rules.yaml"), "--steps", "2", backbone=str(HERE / "opt")))
    case(g, "fpt fit --backbone opt --config freeze-rules-ok.yaml (with positions)",
         lambda: fit("opt-ok", "--config", str(HERE / "freeze-rules-ok.yaml"), "--steps", "2",
                     backbone=str(HERE / "opt")))
    for flag, value in (("--precision", "foo"), ("--num-workers", "-1"), ("--eval-batch-size", "0")):
        name = f"late{flag}"
        case(g, f"fpt fit {flag} {value}", lambda flag=flag, value=value, name=name: fit(name, flag, value, "--steps", "2"),
             lambda r, name=name: run_dir_state(name))
    case(g, "... then the corrected command (fpt fit --precision 32-true)",
         lambda: fit("late--precision", "--precision", "32-true", "--steps", "2"))
    for flag, value in (("--seed", "-1"), ("--lstm-width", "0"), ("--steps", "0"), ("--lr", "-1"), ("--lr", "nan"),
                        ("--weight-decay", "inf"), ("--grad-clip", "-1"), ("--target-accuracy", "2"),
                        ("--input-dropout", "1"), ("--backbone-dropout", "2"), ("--layers", "-1"),
                        ("--num-threads", "0"), ("--devices", "0"), ("--accumulate-grad-batches", "0"),
                        ("--cache-memory-mb", "-5"), ("--chance-warning-evals", "-1"), ("--eval-every", "0"),
                        ("--cache-train-samples", "-1"), ("--batch-size", "0"), ("--num-nodes", "0")):
        lstm = flag == "--lstm-width"
        case(g, f"fpt fit {flag} {value}" + (" --backbone lstm" if lstm else ""),
             lambda flag=flag, value=value, lstm=lstm: fit(f"bad{flag}{value}", "--steps", "2", flag, value,
                                                           backbone="lstm" if lstm else None))
    for option in ("n_bits=0", "n_bits=-3", "val_samples=0", "patch_size=0"):
        case(g, f"fpt fit -o {option}", lambda option=option: fit(f"bad-o-{option}", "--steps", "2", "-o", option))
    case(g, "fpt fit --task bit-memory -o mask_prob=2",
         lambda: fpt("fit", "--task", "bit-memory", "-o", "mask_prob=2", "-o", "n_bits=20", "-o", "patch_size=5",
                     "--backbone", str(HERE / "gpt2"), "--init", "random", "--steps", "2", "--device", "cpu",
                     "--run-dir", str(RUNS / "mask2"), "--no-progress-bar"))
    case(g, "fpt bench --layers 0 --backbone smollm2-135m",
         lambda: fpt("bench", "--layers", "0", "--steps", "1", "--warmup", "0", "--profile", "0", "--device", "cpu"))
    case(g, "fpt fit --run-dir a-file/run (under a regular file)",
         lambda: fpt("fit", "--task", "bit-xor", "--backbone", str(HERE / "gpt2"), "--run-dir", str(HERE / "a-file" / "run"),
                     *TINY, "--steps", "2"))

    def mounted(options: str):
        target = HERE / f"mnt-{options.replace(',', '-').replace('=', '')}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        return target if done.returncode == 0 else None

    def read_only():
        target = mounted("ro,size=1m")
        if target is None:
            return {"code": "skipped", "out": "", "err": "needs root (mount)", "seconds": 0}
        return fit("../mnt-ro-size1m/run", "--steps", "2")

    def full_disk():
        target = mounted("size=64k")
        if target is None:
            return {"code": "skipped", "out": "", "err": "needs root (mount)", "seconds": 0}
        (target / "filler").write_bytes(b"\0" * 60_000)
        return fit("../mnt-size64k/run", "--steps", "2")
    case(g, "fpt fit --run-dir on a read-only file system", read_only)
    case(g, "fpt fit --run-dir on a full file system", full_disk)
    case(g, "fpt fit --config binary.yaml", lambda: fit("binary", "--config", str(HERE / "binary.yaml")))
    case(g, "fpt fit --task array -o path=label-1e9.npz (one label of 1e9)",
         lambda: fpt("fit", "--task", "array", "-o", "path=label-1e9.npz", "--backbone", str(HERE / "gpt2"),
                     "--init", "random", "--steps", "2", "--device", "cpu", "--run-dir", str(RUNS / "l1e9"),
                     "--no-progress-bar"))
    case(g, "fpt fit --task array -o path=token-2e40.npz (one token id of 2^40)",
         lambda: fpt("fit", "--task", "array", "-o", "path=token-2e40.npz", "--backbone", str(HERE / "gpt2"),
                     "--init", "random", "--steps", "2", "--device", "cpu", "--run-dir", str(RUNS / "t2e40"),
                     "--no-progress-bar"))
    case(g, "fpt fit --config laughs.yaml (YAML aliases, 10^9 strings)",
         lambda: fit("laughs", "--config", str(HERE / "laughs.yaml"), timeout=120))
    case(g, "fpt fit --config /dev/zero", lambda: fit("zero", "--config", "/dev/zero", timeout=60))
    case(g, "fpt fit --config long-label.yaml (a 1 MB label)",
         lambda: fit("longlabel", "--config", str(HERE / "long-label.yaml"), "--steps", "2"),
         lambda r: run_dir_state("longlabel"))
    case(g, "FPT_OFFLINE=1 fpt fit --backbone gpt2 (pretrained, not cached)",
         lambda: fpt("fit", "--task", "bit-xor", "--backbone", "gpt2", "--run-dir", str(RUNS / "gpt2off"), "--steps", "2",
                     env={"FPT_OFFLINE": "1"}))
    case(g, "fpt fit --backbone smolm2 (a typo)",
         lambda: fpt("fit", "--task", "bit-xor", "--backbone", "smolm2", "--run-dir", str(RUNS / "typo"), "--steps", "2"))
    case(g, "FPT_OFFLINE=1 fpt fit --backbone EleutherAI/pythia-14m (a hub id, not cached)",
         lambda: fpt("fit", "--task", "bit-xor", "--backbone", "EleutherAI/pythia-14m", "--run-dir", str(RUNS / "pythia"),
                     "--steps", "2", env={"FPT_OFFLINE": "1"}))

    g = "bookkeeping"
    case(g, "fpt fit --steps 5 --eval-every 100",
         lambda: fit("noval", "--steps", "5", "--eval-every", "100"),
         lambda r: "val.best_accuracy " + str(json.loads((RUNS / "noval" / "results.json").read_text())["val"]
                                              ["best_accuracy"]) if (RUNS / "noval" / "results.json").exists() else "")

    def resumed_seconds():
        fit("timed", "--steps", "4", "--eval-every", "2")
        first = json.loads((RUNS / "timed" / "results.json").read_text())
        r = fpt("fit", "--resume", str(RUNS / "timed"), "--steps", "8", "--no-progress-bar")
        second = json.loads((RUNS / "timed" / "results.json").read_text())
        r["observe"] = (f"seconds after 4 steps {first['seconds']}, after resuming to 8: {second['seconds']}"
                        + (f", invocations {[i['seconds'] for i in second['invocations']]}" if "invocations" in second
                           else ""))
        return r
    case(g, "fpt fit --steps 4, then fpt fit --resume --steps 8: results.json seconds", resumed_seconds,
         lambda r: r.get("observe", ""))

    def step_labels():
        r = fit("steps", "--steps", "4", "--eval-every", "2")
        import csv

        rows = [row for row in csv.DictReader(open(RUNS / "steps" / "metrics.csv")) if row.get("val/accuracy")]
        console = [line.split()[1] for line in r["out"].splitlines() if line.startswith("step ")]
        r["observe"] = f"console: validations at steps {console}; metrics.csv: at steps {[row['step'] for row in rows]}"
        return r
    case(g, "fpt fit --steps 4 --eval-every 2: step labels", step_labels, lambda r: r.get("observe", ""))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--only", help="run only cases whose name contains this")
    args = parser.parse_args()
    fixtures()
    rows = []
    print("| case | command | exit | seconds | message / what it left |")
    print("|---|---|---|---|---|")
    for group, name, run, observe in cases():
        if args.only and args.only not in name and not name.startswith("(setup"):
            continue
        result = run()
        seen = message(result)
        if observe is not None:
            try:
                note = observe(result)
            except Exception as err:  # noqa: BLE001  (an observation must not end the report)
                note = f"(could not observe: {err})"
            if note:
                seen = f"{seen} -> {note}" if seen else note
        row = {"group": group, "command": name, "exit": result["code"], "seconds": round(result["seconds"], 1),
               "message": seen[:400]}
        rows.append(row)
        cell = row["message"].replace("|", "/")
        print(f"| {group} | `{name}` | {row['exit']} | {row['seconds']} | {cell} |", flush=True)
    for target in HERE.glob("mnt-*"):
        subprocess.run(["umount", str(target)], capture_output=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    shutil.rmtree(HERE, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
