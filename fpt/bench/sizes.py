"""Trainable / total parameters of real-size backbones, built from their configs on the meta device.

No weights are read or allocated: each model is built from a config holding the sizes of its hub
checkpoint (the values of its ``config.json``), on PyTorch's meta device, wrapped and frozen exactly
as ``fpt fit`` does (``load_backbone`` + ``FPT``), and its parameters are counted per group::

    python -m fpt.bench.sizes                 # the table below, for --freeze fpt
    python -m fpt.bench.sizes --freeze full

The task shape is the paper's CIFAR-10 one (4x4 RGB patches: 48 values per token, 64 tokens, 10
classes); Swin takes its whole patch grid instead (224x224 images: 56x56 = 3136 tokens of 48).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

# name: (transformers config class, sizes of the hub checkpoint's config.json, its hub id)
REAL_CONFIGS = {
    "GPT-2 small": ("GPT2Config", dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
                    "openai-community/gpt2"),
    "LLaMA-2-7B": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                       max_position_embeddings=4096, rms_norm_eps=1e-5), "meta-llama/Llama-2-7b-hf"),
    "RoBERTa-base": ("RobertaConfig", dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                                           num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                           layer_norm_eps=1e-5), "FacebookAI/roberta-base"),
    "Swin-T": ("SwinConfig", dict(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2],
                                  num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4.0),
               "microsoft/swin-tiny-patch4-window7-224"),
    "T5-base encoder": ("T5Config", dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, vocab_size=32128,
                                         relative_attention_num_buckets=32, feed_forward_proj="relu"),
                        "google-t5/t5-base"),
}


def count(name: str, freeze: str = "fpt") -> dict:
    """``{"trainable", "total", "groups", "rules_from"}`` of one real-size backbone under ``freeze``."""
    import transformers

    from fpt.backbones import load_backbone
    from fpt.model import FPT, ModelConfig
    from fpt.data.splits import TaskSpec

    cls, values, _ = REAL_CONFIGS[name]
    directory = tempfile.mkdtemp(prefix="fpt-sizes-")
    getattr(transformers, cls)(**values).save_pretrained(directory)
    with torch.device("meta"):
        backbone = load_backbone(directory, init="random")
    tokens = backbone.sequence_length or 64
    spec = TaskSpec(input_type="continuous", input_dim=48, max_tokens=tokens, num_classes=10)
    readout = "mean" if backbone.sequence_length else None
    model = FPT(backbone, spec, ModelConfig(freeze=freeze, readout=readout))
    return {**model.parameter_counts(), "groups": model.group_counts, "rules_from": model.freeze_source,
            "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freeze", default="fpt", help="a freeze preset (default fpt)")
    args = parser.parse_args(argv)
    print(f"| backbone (hub config) | rules | tokens | trainable under {args.freeze} | total | % | norm | positions |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (_, _, hub) in REAL_CONFIGS.items():
        c = count(name, args.freeze)
        groups = c["groups"]
        print(f"| {name} (`{hub}`) | {c['rules_from']} | {c['tokens']} | {c['trainable']:,} | {c['total']:,} | "
              f"{100 * c['trainable'] / c['total']:.3f} | {groups.get('norm', {}).get('total', 0):,} | "
              f"{groups.get('positions', {}).get('total', 0):,} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
