"""Tiny random ViT encoders built from their configs (no download)."""

from __future__ import annotations

import torch

from milpf_jax.extraction import encoders
from milpf_jax.extraction.encoders import EncoderSpec


def tiny_spec(name, family, input_size, dim, output, **kw):
    return EncoderSpec(
        name=name,
        family=family,
        model_id=f"milpf-tests/{name}",
        input_size=input_size,
        dim=dim,
        mean=encoders.IMAGENET_MEAN,
        std=encoders.IMAGENET_STD,
        output=output,
        **kw,
    )


def save_tiny_dinov2(path, seed=0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # a non-trivial final norm, so pre- and post-norm CLS differ clearly
        model.layernorm.weight.uniform_(0.5, 2.0)
        model.layernorm.bias.normal_(0.0, 0.5)
    model.save_pretrained(path)
    return model

