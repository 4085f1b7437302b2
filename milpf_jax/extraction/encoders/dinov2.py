"""DINOv2, RAD-DINO and DINOv3 ViTs from transformers: the CLS token after the final layer norm.

All three load through `AutoModel` (Dinov2Model; DINOv3ViTModel) and share one output rule:
both models apply their final layer norm to the whole sequence, so `last_hidden_state[:, 0]`
is the CLS token after the norm (DINOv3's register tokens come after CLS, at 1..R).
"""

from __future__ import annotations

from milpf_jax.extraction.encoders import EncoderSpec
from milpf_jax.extraction.encoders.base import Encoder

# The transformers `model_type` each registry family must load as.
MODEL_TYPES = {"dinov2": "dinov2", "dinov3": "dinov3_vit"}


class DinoEncoder(Encoder):
    """CLS-after-final-norm embedding of a DINOv2-style ViT."""

    def features(self, pixels):
        """[n, 3, S, S] -> [n, D]: CLS token of the post-norm last hidden state."""
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]


def check_model(spec: EncoderSpec, config) -> None:
    """Refuses a checkpoint whose architecture or width does not match the registry row."""
    expected = MODEL_TYPES[spec.family]
    if config.model_type != expected:
        raise ValueError(
            f"encoder {spec.name!r} expects a {expected!r} model, the checkpoint is a "
            f"{config.model_type!r}; is model_dir the right folder?"
        )
    if config.hidden_size != spec.dim:
        raise ValueError(
            f"encoder {spec.name!r} expects embeddings of dim {spec.dim}, the checkpoint's "
            f"hidden_size is {config.hidden_size}; is model_dir the right model size?"
        )


def load(spec: EncoderSpec, *, model_dir=None, device="cpu", precision="auto") -> DinoEncoder:
    """Builds the DinoEncoder for `spec` (family "dinov2" or "dinov3"); see `get_encoder`."""
    from transformers import AutoModel

    from milpf_jax.extraction.encoders.hub import load_hf_model

    model, revision = load_hf_model(AutoModel, spec, model_dir)
    check_model(spec, model.config)
    return DinoEncoder(spec, model, device=device, precision=precision, model_revision=revision)
