"""fpt: Frozen Pretrained Transformers (Lu, Grover, Abbeel, Mordatch 2021) as a library."""

__version__ = "0.1.0"
