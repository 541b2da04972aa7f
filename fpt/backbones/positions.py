"""Growing a backbone's learned position table, so that longer sequences feed whole.

GPT-2's table has 1024 rows, so GPT-2 sees at most 1024 tokens; LRA's ListOps expressions (with ``]``
kept) run to ~2000. FPT trains the position table anyway (the ``positions`` group), so fpt can give it
more rows: ``position_rows: 2048`` keeps the model's 1024 rows as they are and starts each new row from
N(0, s), s the std of the model's table, drawn from a generator seeded with the run's seed (the same
rows on every machine and thread count). Only GPT-2 is supported: its forward takes any length up to
its table, and its config's ``n_positions`` is the limit fpt reads; other families keep position ids
in buffers or masks of their own size and are refused, naming what to use instead.
"""

from __future__ import annotations

import torch
from torch import nn

from fpt.backbones.backbone import Backbone

GROWABLE = ("gpt2",)  # families whose learned position table can grow (see the module docstring)


def position_table(model: nn.Module) -> tuple[str, nn.Embedding]:
    """The path and module of a GPT-2 model's position table: its one ``nn.Embedding`` besides the token table."""
    tokens = model.get_input_embeddings()
    tables = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Embedding) and m is not tokens]
    if len(tables) != 1:
        raise ValueError(f"expected one position table besides the token table, found {len(tables)}: "
                         f"{', '.join(p for p, _ in tables) or 'none'}")
    return tables[0]


def grow_positions(backbone: Backbone, rows: int, seed: int) -> Backbone:
    """``backbone`` with its position table grown to ``rows`` rows (the first rows the model's), in place."""
    if backbone.arch not in GROWABLE:
        raise ValueError(
            f"position_rows grows a learned position table, which fpt supports for {', '.join(GROWABLE)} only; "
            f"backbone {backbone.name!r} is {backbone.arch!r}. Leave position_rows unset (a backbone without a "
            "position table of its own, e.g. SmolLM2, takes any length: fpt adds its own table to it)")
    path, table = position_table(backbone.model)
    old = table.num_embeddings
    if rows <= old:
        raise ValueError(f"position_rows {rows} must be above the {old} rows {backbone.name!r} already has "
                         "(leave it unset to keep them)")
    weight = table.weight.detach()
    grown = nn.Embedding(rows, table.embedding_dim, device=weight.device, dtype=weight.dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        grown.weight[:old] = weight
        std = float(weight.float().std()) if not weight.is_meta else 0.02
        new_rows = torch.randn(rows - old, table.embedding_dim, generator=generator) * std
        grown.weight[old:] = new_rows.to(grown.weight)
    grown.weight.requires_grad_(table.weight.requires_grad)
    parent, _, attr = path.rpartition(".")
    setattr(backbone.model.get_submodule(parent) if parent else backbone.model, attr, grown)
    backbone.model.config.n_positions = rows
    backbone.max_positions = rows
    backbone.build["positions"] = (f"learned (trains as positions), grown from {old} to {rows} rows: the model's "
                                   f"{old} kept, the rest N(0, {std:.4g}) seeded")
    backbone.weights_fingerprint = backbone._fingerprint()
    return backbone
