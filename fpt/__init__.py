"""fpt: Frozen Pretrained Transformers (Lu, Grover, Abbeel, Mordatch 2021) as a library."""

from fpt.base.cpu import configure_openmp

# Before anything imports torch: how OpenMP threads wait on a CPU shared with other jobs (fpt/base/cpu.py).
configure_openmp()

__version__ = "0.1.0"
