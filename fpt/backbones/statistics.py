"""The statistics-only initialisation: a backbone with the pretrained weights' statistics and nothing else.

Lu et al. 2021 ask whether FPT's advantage over a random transformer is only a better-scaled initialisation;
they compare with a transformer initialised from the pretrained weights' statistics. fpt's reading of that
(``--init statistics``; the paper's exact wording could not be read here, so this is the definition as
understood, not verified): every weight tensor of the pretrained backbone is redrawn, elementwise, from a
normal distribution with that tensor's own mean and standard deviation, seeded by the run's seed. What the
pretrained model learned beyond those two numbers per tensor (which weight goes where) is gone; the scale of
every layer, the layer norms' gains near 1, the embedding scale are kept. Parameters only (buffers such as
RoPE's frequencies stay); a tensor of one element, or with no spread, keeps its value.
"""

from __future__ import annotations

import torch


def statistics_only(backbone, seed: int):
    """``backbone`` (a pretrained :class:`fpt.backbones.Backbone`) with each weight tensor redrawn from
    N(mean, std) of itself; its ``init`` becomes ``"statistics"`` and its fingerprint is taken again."""
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        # parameters only (buffers such as RoPE's frequencies are not weights); a tied tensor is drawn once
        for _, tensor in sorted(backbone.model.named_parameters(), key=lambda item: item[0]):
            if not torch.is_floating_point(tensor) or tensor.numel() < 2:
                continue
            # numpy's single-threaded float64 sums: the same statistics whatever torch's thread count (a parallel
            # reduction's last bits depend on it, and the rebuilt weights must match the run's fingerprint)
            values = tensor.detach().double().cpu().numpy()
            mean, std = float(values.mean()), float(values.std(ddof=1))
            if std == 0.0:
                continue
            drawn = torch.randn(tensor.shape, generator=generator) * std + mean
            tensor.copy_(drawn.to(tensor.dtype))
    backbone.init = "statistics"
    backbone.weights_fingerprint = backbone._fingerprint()
    return backbone
