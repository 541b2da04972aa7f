"""What ``fpt bench`` measures besides time: memory, matmul FLOPs, the GPU's bf16 peak, host syncs."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Memory:
    """Peak memory a path adds: CUDA allocator peak, or on CPU the resident-set high-water mark."""

    def __init__(self, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def start(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()  # what earlier paths still hold
        else:
            _malloc_trim()  # hand freed heap back to the OS, so this path's growth is its own
            self.hwm_reset = _reset_peak_rss()
            self.base = _proc_status_kb("VmRSS") or 0

    def peak_mb(self) -> float | None:
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        peak = _proc_status_kb("VmHWM") if self.hwm_reset else _proc_status_kb("VmRSS")
        return None if peak is None else max(0, peak - self.base) / 1024


def matmul_params(model) -> tuple[int, int]:
    """(all, trained) matmul weights of the backbone: Linear / Conv1D weights, embedding tables excluded."""
    total = trained = 0
    for module in model.backbone.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            n = module.weight.numel()
            total += n
            trained += n if module.weight.requires_grad else 0
        elif isinstance(module, nn.LSTM):
            for name, p in module.named_parameters():
                if name.startswith("weight"):
                    total += p.numel()
                    trained += p.numel() if p.requires_grad else 0
    return total, trained


def gradients_enter_backbone(model) -> bool:
    """True when something at or before the blocks trains (input layer, positions, norms...)."""
    return any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("head."))


def flops_per_step(model, batch_size: int, tokens: int) -> float:
    p_all, p_trained = matmul_params(model)
    per_token = 2 * p_all + (2 * p_all if gradients_enter_backbone(model) else 0) + 2 * p_trained
    return float(per_token) * batch_size * tokens


def measured_bf16_peak_tflops(device, n: int = 8192, iters: int = 10) -> float:
    """Throughput of a large bf16 matmul on this GPU, measured now (the practical peak)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1000 / iters
    del a, b
    return 2 * n**3 / seconds / 1e12


def count_host_syncs(step, device) -> int | None:
    """Host synchronisations in one call of ``step`` (CUDA's sync debug mode; None on CPU)."""
    if device.type != "cuda":
        return None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def throughput(step_s: float, batch_size: int, tokens: int, flops: float,
                breakdown: dict[str, Any] | None) -> dict[str, Any]:
    """The rate columns of every path, from its step time and its matmul work per step."""
    matmul_ms = (breakdown or {}).get("ms_per_step", {}).get("matmul")
    return {
        "step_ms": step_s * 1000, "samples_per_s": batch_size / step_s, "tokens_per_s": batch_size * tokens / step_s,
        "matmul_tflop_per_step": flops / 1e12, "tflops": flops / step_s / 1e12,
        # the matmul work over the time of the matmul kernels (operators on CPU) alone
        "matmul_kernel_tflops": flops / (matmul_ms / 1000) / 1e12 if flops and matmul_ms else None,
    }


