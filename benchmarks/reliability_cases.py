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
import re
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
    round3_fixtures(rng)


def write_ts(path: Path, rows: list[tuple[list[float], str]], classes=("a", "b"), regression: bool = False) -> None:
    """A univariate .ts file of equal-length series (the aeon format)."""
    length = len(rows[0][0])
    head = ["@problemName tiny", "@timeStamps false", "@missing false", "@univariate true", "@equalLength true",
            f"@seriesLength {length}", "@targetLabel true" if regression else f"@classLabel true {' '.join(classes)}",
            "@data"]
    path.write_text("\n".join(head + [",".join(repr(float(v)) for v in x) + f":{y}" for x, y in rows]) + "\n")


def round3_fixtures(rng) -> None:
    """Issue 20's inputs: overflowing values, series of other lengths, a base config for sweeps."""
    def series(n, length, big=None):
        out = []
        for _ in range(n):
            shift = rng.normal() * 2
            x = list(rng.normal(size=length) * 0.3 + shift)
            out.append((x, "ab"[int(shift > 0)]))
        if big is not None:
            out[1][0][3] = big
        return out
    (HERE / "big").mkdir()
    write_ts(HERE / "big" / "big_TRAIN.ts", series(40, 16, big=1e300))
    write_ts(HERE / "big" / "big_TEST.ts", series(20, 16))
    (HERE / "lengths").mkdir()
    write_ts(HERE / "lengths" / "lengths_TRAIN.ts", series(40, 16))
    write_ts(HERE / "lengths" / "lengths_TEST.ts", series(20, 40))
    (HERE / "ok").mkdir()
    write_ts(HERE / "ok" / "ok_TRAIN.ts", series(40, 16))
    write_ts(HERE / "ok" / "ok_TEST.ts", series(20, 16))
    write_ts(HERE / "short.ts", series(20, 8))
    x = rng.normal(size=(120, 8, 3))
    x[7, 2, 1] = 1e300
    np.savez(HERE / "f1e300.npz", x=x, y=rng.integers(0, 2, 120))
    (HERE / "base.yaml").write_text(
        f"task: bit-xor\nbackbone: {HERE / 'gpt2-pretrained'}\ninit: random\nsteps: 2\nbatch_size: 8\neval_batch_size: 16\n"
        "task_options: {n_bits: 3, val_samples: 16, test_samples: 16}\ndevice: cpu\nnum_threads: 1\n"
        "label: tiny base\n")
    (HERE / "init.yaml").write_text("variants:\n  pretrained: {init: pretrained}\n  random: {init: random}\n")


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


def mounted(options: str):
    target = HERE / f"mnt-{options.replace(',', '-').replace('=', '')}"
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return target if done.returncode == 0 else None


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
    out += round3_cases()
    return out


def _file_kind(path: Path) -> str:
    import stat

    if not os.path.lexists(path):
        return "gone"
    mode = os.lstat(path).st_mode
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a regular file" if stat.S_ISREG(mode) else "something else")


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _last_err(r: dict) -> str:
    lines = [ln for ln in r["err"].splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def round3_cases():
    """Issue 20: nothing a user owns is replaced, no exit 0 with a misleading result, the README's commands."""
    out = []

    def case(group, name, run, observe=None):
        out.append((group, name, run, observe))

    g = "files a user owns"
    ARRAY = ["--task", "array", "--backbone", str(HERE / "gpt2"), "--init", "random", "--steps", "2", "--device", "cpu",
             "--no-progress-bar", "--num-threads", "1", "--batch-size", "8"]

    def fifo():
        os.mkfifo(HERE / "pipe.csv")
        return fpt("predict", "--run-dir", str(RUNS / "images-2"), "--data", "images.npz", "--out", "pipe.csv",
                   "--overwrite", timeout=60)
    case(g, "fpt predict --out a-fifo --overwrite", fifo, lambda r: "pipe.csv is now " + _file_kind(HERE / "pipe.csv"))

    def char_device():
        done = subprocess.run(["mknod", str(HERE / "full.csv"), "c", "1", "7"], capture_output=True)
        if done.returncode:
            return {"code": "skipped", "out": "", "err": "needs root (mknod)", "seconds": 0}
        return fpt("predict", "--run-dir", str(RUNS / "images-2"), "--data", "images.npz", "--out", "full.csv",
                   "--overwrite")
    case(g, "fpt predict --out a-char-device (mknod c 1 7, as /dev/full) --overwrite", char_device,
         lambda r: "full.csv is now " + _file_kind(HERE / "full.csv"))

    def two_sweeps():
        first = fpt("sweep", "base.yaml", "--grid", "init=pretrained,random")
        r = fpt("sweep", "base.yaml", "--experiment", str(HERE / "init.yaml"))
        plan = _json(HERE / "runs" / "sweeps" / "base-init" / "plan.json")
        r["observe"] = (f"first sweep exit {first['code']}; base-init/plan.json now holds "
                        f"{sorted({t['setting'] for t in plan.get('trials', [])})}; sweeps: "
                        f"{sorted(p.name for p in (HERE / 'runs' / 'sweeps').iterdir())}")
        return r
    case(g, "fpt sweep base.yaml --grid init=pretrained,random, then fpt sweep base.yaml --experiment init.yaml",
         two_sweeps, lambda r: r.get("observe", ""))

    def report_full_disk():
        target = mounted("size=64k")
        if target is None:
            return {"code": "skipped", "out": "", "err": "needs root (mount)", "seconds": 0}
        (target / "report").mkdir()
        fd = os.open(target / "filler", os.O_WRONLY | os.O_CREAT)  # fill it up
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        r = fpt("report", str(RUNS / "steps"), "--out", str(target / "report"), "--no-attention")
        pngs = sorted(f"{p.name} {p.stat().st_size} B" for p in (target / "report").glob("*.png"))
        r["observe"] = "PNGs left: " + (", ".join(pngs) or "none")
        return r
    case(g, "fpt report RUN --out DIR (DIR on a full file system)", report_full_disk, lambda r: r.get("observe", ""))

    g = "README's commands collide"

    def protocol_collision():
        first = fpt("fit", "--config", "bit-xor-demo", "--backbone", str(HERE / "gpt2"), "--layers", "2",
                    "--protocol", "paper", *TINY, "--steps", "2")
        r = fpt("fit", "--config", "bit-xor-demo", "--backbone", str(HERE / "gpt2"), "--layers", "2", *TINY, "--steps", "2")
        r["observe"] = f"first: {message(first)}"
        return r
    case(g, "fpt fit --config bit-xor-demo --protocol paper, then fpt fit --config bit-xor-demo (default run dirs)",
         protocol_collision, lambda r: r.get("observe", ""))

    def resume_paper():
        d = next((p for p in (HERE / "runs").iterdir() if p.name.startswith("bit-xor-gpt2")), None)
        if d is None:
            return {"code": "skipped", "out": "", "err": "no paper run", "seconds": 0}
        return fpt("fit", "--config", "bit-xor-demo", "--backbone", str(HERE / "gpt2"), "--layers", "2", *TINY,
                   "--steps", "2", "--resume", str(d.relative_to(HERE)))
    case(g, "... the suggested fpt fit --config bit-xor-demo --resume RUN (a paper-protocol run)", resume_paper)

    def ts_collision():
        base = ["--task", "timeseries", "--backbone", str(HERE / "gpt2"), "--init", "random", "--steps", "2",
                "--device", "cpu", "--no-progress-bar", "--num-threads", "1", "--batch-size", "8"]
        first = fpt("fit", *base, "-o", "name=GunPoint", "-o", "patch_size=16")
        r = fpt("fit", *base, "-o", "name=ItalyPowerDemand", "-o", "patch_size=16")
        r["observe"] = f"first: {message(first)}"
        return r
    case(g, "fpt fit --task timeseries -o name=GunPoint, then -o name=ItalyPowerDemand (default run dirs)",
         ts_collision, lambda r: r.get("observe", ""))

    g = "exit 0, misleading result"
    ts_fit = ["--task", "timeseries", "--backbone", str(HERE / "gpt2"), "--init", "random", "--steps", "2",
              "--device", "cpu", "--no-progress-bar", "--num-threads", "1", "--batch-size", "8", "-o", "patch_size=4"]

    def ts_result(run: str) -> str:
        r = _json(RUNS / run / "results.json")
        return f"test accuracy {r['test']['accuracy']:.3f}" if r.get("test") else run_dir_state(run)
    case(g, "fpt fit --task timeseries -o path=big (one value 1e300 in TRAIN)",
         lambda: fpt("fit", *ts_fit, "-o", "path=big", "--run-dir", str(RUNS / "ts-big")), lambda r: ts_result("ts-big"))
    case(g, "fpt fit --task array -o path=f1e300.npz (float64, one value 1e300)",
         lambda: fpt("fit", *ARRAY, "-o", "path=f1e300.npz", "--run-dir", str(RUNS / "npz-big")),
         lambda r: run_dir_state("npz-big"))
    case(g, "fpt fit --task timeseries -o path=lengths (TRAIN length 16, TEST length 40)",
         lambda: fpt("fit", *ts_fit, "-o", "path=lengths", "--run-dir", str(RUNS / "ts-lengths")),
         lambda r: ts_result("ts-lengths"))
    case(g, "(setup: fpt fit --task timeseries -o path=ok, length 16)",
         lambda: fpt("fit", *ts_fit, "-o", "path=ok", "--run-dir", str(RUNS / "ts-ok")))
    case(g, "fpt predict --run-dir ts-ok (length 16) --data short.ts (length 8)",
         lambda: fpt("predict", "--run-dir", str(RUNS / "ts-ok"), "--data", "short.ts", "--out", "short.csv"),
         lambda r: predictions(HERE / "short.csv"))
    case(g, "fpt fit --precision 16-mixed --device cpu",
         lambda: fit("fp16", "--precision", "16-mixed", "--steps", "2"),
         lambda r: "results.json precision: " + str(_json(RUNS / "fp16" / "results.json").get("precision")))
    case(g, "fpt fit --task timeseries -o name=Covid3Month (regression) --stop-at-target --target-accuracy 0.5",
         lambda: fpt("fit", *ts_fit, "-o", "name=Covid3Month", "--stop-at-target", "--target-accuracy", "0.5",
                     "--run-dir", str(RUNS / "ts-reg")),
         lambda r: "results.json val.target_accuracy: "
         + str(_json(RUNS / "ts-reg" / "results.json").get("val", {}).get("target_accuracy", "-")))
    case(g, "fpt sweep base.yaml --threads 0 --dry-run",
         lambda: fpt("sweep", "base.yaml", "--threads", "0", "--dry-run", "--sweep-dir", "sw-t0"))
    case(g, "fpt sweep base.yaml --threads -3 --dry-run",
         lambda: fpt("sweep", "base.yaml", "--threads", "-3", "--dry-run", "--sweep-dir", "sw-t3"))
    case(g, "fpt sweep base.yaml --grid run_dir=A,B --dry-run",
         lambda: fpt("sweep", "base.yaml", "--grid", "run_dir=A,B", "--dry-run", "--sweep-dir", "sw-rd"))
    case(g, "fpt fit --task timeseries -o name=GunPoint --data-dir /nonexistent",
         lambda: fpt("fit", *ts_fit, "-o", "name=GunPoint", "--data-dir", "/nonexistent", "--run-dir",
                     str(RUNS / "ts-nodir")),
         lambda r: "results.json data.files: " + str(_json(RUNS / "ts-nodir" / "results.json").get("data", {})
                                                    .get("files", "-")))

    def resume_fewer_steps():
        r = fpt("fit", "--resume", str(RUNS / "timed"), "--steps", "3", "--no-progress-bar")
        conf = (RUNS / "timed" / "config.yaml").read_text()
        steps = next((ln for ln in conf.splitlines() if ln.startswith("steps:")), "")
        r["observe"] = f"config.yaml {steps}; results.json steps: {_json(RUNS / 'timed' / 'results.json').get('steps')}"
        return r
    case(g, "fpt fit --resume RUN --steps 3 (RUN is at step 8)", resume_fewer_steps, lambda r: r.get("observe", ""))

    def pipe_label():
        fit("pipe-label", "--label", "a | b\nc", "--steps", "2")
        r = fpt("report", str(RUNS / "pipe-label"), "--out", "report-pipe", "--no-attention")
        md = (HERE / "report-pipe" / "report.md").read_text() if (HERE / "report-pipe" / "report.md").exists() else ""
        head = next((ln for ln in md.splitlines() if ln.startswith("| task")), "")
        row = next((ln for ln in md.splitlines() if ln.startswith("| bit-xor")), "")
        r["observe"] = f"header {head.count('|')} bars, the run's row {row.count('|')}"
        return r
    case(g, "fpt fit --label 'a | b<newline>c', then fpt report", pipe_label, lambda r: r.get("observe", ""))

    def plot_no_val():
        d = RUNS / "noval-plot"
        d.mkdir()
        shutil.copy(RUNS / "steps" / "config.yaml", d / "config.yaml")
        (d / "metrics.csv").write_text("epoch,step,train/loss\n0,0,0.7\n0,1,0.69\n")
        r = fpt("plot", str(d))
        r["observe"] = "wrote: " + ", ".join(sorted(p.name for p in (d / "figures").glob("*"))) \
            if (d / "figures").exists() else "no figure"
        return r
    case(g, "fpt plot RUN (killed before its first validation)", plot_no_val, lambda r: r.get("observe", ""))

    def plot_cut():
        d = RUNS / "cut-plot"
        shutil.copytree(RUNS / "steps", d)
        text = (d / "metrics.csv").read_text()
        (d / "metrics.csv").write_text(text[: len(text) - 12])
        return fpt("plot", str(d))
    case(g, "fpt plot RUN (metrics.csv cut mid-row)", plot_cut)

    g = "tracebacks, hangs, advice"
    case(g, "OMP_NUM_THREADS=0 fpt fit --steps 2",
         lambda: fpt("fit", "--task", "bit-xor", "--backbone", str(HERE / "gpt2"), "--run-dir", str(RUNS / "omp0"),
                     *[a for a in TINY if a not in ("--num-threads", "1")], "--steps", "2", env={"OMP_NUM_THREADS": "0"}))
    case(g, "fpt sweep base.yaml --seeds 100000000 --dry-run",
         lambda: fpt("sweep", "base.yaml", "--seeds", "100000000", "--dry-run", "--sweep-dir", "sw-huge", timeout=60))

    def unstarted():
        d = RUNS / "unstarted"
        d.mkdir()
        shutil.copy(RUNS / "steps" / "config.yaml", d / "config.yaml")
        return fpt("test", "--run-dir", str(d))
    case(g, "fpt test --run-dir RUN (killed before its first checkpoint)", unstarted)
    case(g, "... the advised fpt fit --resume RUN",
         lambda: fpt("fit", "--resume", str(RUNS / "unstarted"), "--no-progress-bar"))
    case(g, "fpt fit --strategy fsdp --device cpu", lambda: fit("fsdp", "--strategy", "fsdp", "--steps", "2"),
         lambda r: run_dir_state("fsdp"))
    case(g, "fpt fit --task array -o path=ok/ok_TRAIN.ts (a .ts where an npz is expected)",
         lambda: fpt("fit", *ARRAY, "-o", "path=ok/ok_TRAIN.ts", "--run-dir", str(RUNS / "ts-as-npz")))

    def list_head():
        start = time.time()
        done = subprocess.run(f"{PY} -m fpt.cli list | head -1", shell=True, capture_output=True, text=True, cwd=HERE)
        return {"code": done.returncode, "out": done.stdout, "err": done.stderr, "seconds": time.time() - start,
                "observe": "stderr: " + (_last_err({"err": done.stderr}) or "(nothing)")}
    case(g, "fpt list | head -1", list_head, lambda r: r.get("observe", ""))

    g = "what users see"

    def predict_columns():
        header = (HERE / "p-uint8.csv").read_text().splitlines()[0] if (HERE / "p-uint8.csv").exists() else "?"
        r = fpt("predict", "--help")
        r["observe"] = f"CSV header: {header}; --help: " + " ".join(
            ln.strip() for ln in r["out"].splitlines() if "CSV" in ln or "index" in ln)
        r["out"] = ""
        return r
    case(g, "fpt predict --help vs the CSV it writes", predict_columns, lambda r: r.get("observe", ""))

    def sweep_help():
        r = fpt("sweep", "--help")
        text = " ".join(r["out"].split())
        r["observe"] = "says 'mean validation accuracy'" if "validation accuracy over seeds" in text \
            else "names the regression metric" if "rmse" in text.lower() else "?"
        r["out"] = ""
        return r
    case(g, "fpt sweep --help (regression wording)", sweep_help, lambda r: r.get("observe", ""))
    case(g, "fpt sweep base.yaml --num-threads 1 --dry-run (fit's name)",
         lambda: fpt("sweep", "base.yaml", "--num-threads", "1", "--dry-run", "--sweep-dir", "sw-nt"))
    case(g, "fpt fit --threads 1 (sweep's name)", lambda: fit("threads1", "--threads", "1", "--steps", "2"))
    return out


# cases whose runs later cases use
NEEDED = ("fpt fit --steps 4 --eval-every 2: step labels",
          "fpt predict --run-dir images --data images.npz --out p.csv (same uint8 data)",
          "fpt fit --steps 4, then fpt fit --resume --steps 8: results.json seconds")


def before_after(befores: list[str], after: str) -> str:
    """The markdown table of each case's exit and message before and after (setup cases left out)."""
    def rows(path: str) -> list[dict]:  # --json output, or the printed markdown rows (of a run cut short)
        if path.endswith(".json"):
            return json.loads(Path(path).read_text())
        out = []
        for line in Path(path).read_text().splitlines():
            m = re.match(r"\| (.*?) \| `(.*)` \| (\S+) \| (\S+) \| (.*) \|$", line)
            if m:
                out.append({"group": m[1], "command": m[2], "exit": m[3], "seconds": m[4], "message": m[5]})
        return out

    old: dict[str, dict] = {}
    for path in befores:
        old.update({r["command"]: r for r in rows(path)})
    lines = ["| group | command | before: exit | before: message (or what it left) | after: exit | after: message (or "
             "what it left) |", "|---|---|---|---|---|---|"]
    for r in rows(after):
        if r["command"].startswith("(setup") or r["command"] in NEEDED:
            continue
        b = old.get(r["command"], {"exit": "-", "seconds": 0, "message": "(not run)"})

        def cell(x):
            text = re.sub(r"/tmp/fpt-cases-[^/ ]+/", "", str(x["message"])).replace("|", "/")
            return " ".join(text.split())[:300]
        lines.append(f"| {r['group']} | `{r['command'].replace('|', '/')}` | {b['exit']} ({b['seconds']} s) | {cell(b)} | "
                     f"{r['exit']} ({r['seconds']} s) | {cell(r)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--only", action="append", help="run only cases whose name contains this (repeatable)")
    parser.add_argument("--group", action="append", help="run only these groups (and the setup cases)")
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="print the before/after table of docs/reliability.md from --json files (BEFORE... AFTER; "
                             "a later BEFORE file replaces an earlier one's rows); runs nothing")
    args = parser.parse_args()
    if args.table:
        print(before_after(args.table[:-1], args.table[-1]))
        return 0
    fixtures()
    rows = []
    print("| case | command | exit | seconds | message / what it left |")
    print("|---|---|---|---|---|")
    for group, name, run, observe in cases():
        if args.only and not any(o in name for o in args.only) and not name.startswith("(setup") and name not in NEEDED:
            continue
        if args.group and group not in args.group and not name.startswith("(setup") and name not in NEEDED:
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
