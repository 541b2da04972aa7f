"""Issue 23's minimal-script variants of one FPT training step on a CPU, timed in alternation.

    python benchmarks/cpu_bf16_variants.py [TOKENS] [BATCH] [VARIANTS] [STEPS]
    python benchmarks/cpu_bf16_variants.py 49 32 fp32-sdpa,ac-sdpa,ac-eager,bf16w-eager,bf16w-sdpa 8
    python benchmarks/cpu_bf16_variants.py 49 32 bf16w-eager,c-bf16w-eager 12     # torch.compile

fpt's own FPT model on SmolLM2-135M's architecture (4 layers, random weights: step time does not depend on
their values), freeze ``fpt`` (gradient to the input layer, the norms, positions and head), continuous
input of TOKENS x 16, Adam, gradient clipping; one thread. Variants: ``fp32-*`` fp32; ``ac-*`` bf16 autocast
over fp32 weights; ``bf16w-*`` frozen matmul weights stored in bf16 + autocast (fpt's bf16 path);
``*-sdpa`` / ``*-eager`` the attention; a ``c-`` prefix compiles the backbone. The steps of all variants
alternate, so a machine whose load changes slows them alike; prints best and median ms per step, and the
warm-up seconds (compilation happens there). Measurements: docs/performance.md, "bf16 on the CPU".
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn

from fpt.backbones import load_backbone
from fpt.data.splits import TaskSpec
from fpt.model import FPT, ModelConfig


def build(name: str, spec: TaskSpec, batch: dict[str, torch.Tensor]):
    bb = load_backbone("smollm2-135m", init="random", layers=4, seed=0,
                       attn_implementation="eager" if "eager" in name else "sdpa")
    torch.manual_seed(1)
    model = FPT(bb, spec, ModelConfig(freeze="fpt")).train()
    if "bf16w" in name:
        model.store_frozen_weights(torch.bfloat16)
    if name.startswith("c-"):
        model.backbone.compile()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    autocast = not name.removeprefix("c-").startswith("fp32")

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(batch["x"])
            loss = nn.functional.cross_entropy(logits.float().reshape(-1, 2), batch["y"].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    for _ in range(2):
        step()
    return step, time.perf_counter() - t


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    tokens = int(argv[0]) if argv else 49
    batch_size = int(argv[1]) if len(argv) > 1 else 32
    names = argv[2].split(",") if len(argv) > 2 else ["fp32-sdpa", "ac-sdpa", "ac-eager", "bf16w-eager", "bf16w-sdpa"]
    steps = int(argv[3]) if len(argv) > 3 else 8
    spec = TaskSpec(input_type="continuous", input_dim=16, max_tokens=tokens, num_classes=2, num_labels=1,
                    readout="last")
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(batch_size, tokens, 16, generator=g), "y": torch.randint(0, 2, (batch_size, 1), generator=g)}
    built = {n: build(n, spec, batch) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(steps):
        for n in names:
            t = time.perf_counter()
            built[n][0]()
            times[n].append(time.perf_counter() - t)
    print(f"tokens {tokens}, batch {batch_size}, 1 thread, {steps} steps each; ms per step")
    print(f"{'variant':16s} {'best':>8s} {'median':>8s}  warm-up s")
    for n in names:
        print(f"{n:16s} {1000 * min(times[n]):8.1f} {1000 * statistics.median(times[n]):8.1f}  {built[n][1]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
