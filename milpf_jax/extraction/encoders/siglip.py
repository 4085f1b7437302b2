"""SigLIP vision towers (MedSigLIP, SigLIP 2 fixed-resolution): the pooler output.

`SiglipVisionModel.from_pretrained` takes both a vision-only checkpoint and a full image-text
SiglipModel (as google/medsiglip-448 is); the text tower's weights are simply not loaded. The
embedding is `pooler_output`, the attention-pooling head over the post-norm patch tokens, which
is the image embedding SigLIP was trained to align with text.
"""

from __future__ import annotations

from milpf_jax.extraction.encoders import EncoderSpec
from milpf_jax.extraction.encoders.base import Encoder


class SiglipEncoder(Encoder):
    """Pooler-output embedding of a SigLIP vision tower."""

    def features(self, pixels):
        """[n, 3, S, S] -> [n, D]: the vision tower's attention-pooled output."""
        return self.model(pixel_values=pixels).pooler_output


def check_model(spec: EncoderSpec, config) -> None:
    """Refuses a checkpoint that cannot give `spec`'s embedding at `spec`'s input size."""
    if config.hidden_size != spec.dim:
        raise ValueError(
            f"encoder {spec.name!r} expects embeddings of dim {spec.dim}, the checkpoint's "
            f"hidden_size is {config.hidden_size}; is model_dir the right model?"
        )
    # SigLIP's position embeddings are a fixed grid; another size would need interpolation
    # the model was not trained with.
    if config.image_size != spec.input_size:
        raise ValueError(
            f"encoder {spec.name!r} is registered for {spec.input_size} px input, the "
            f"checkpoint was trained at {config.image_size} px; is model_dir the right model?"
        )
    if not getattr(config, "vision_use_head", True):
        raise ValueError(
            f"encoder {spec.name!r} needs the attention-pooling head, but the checkpoint has "
            "vision_use_head=False (no pooler output)"
        )


def load(spec: EncoderSpec, *, model_dir=None, device="cpu", precision="auto") -> SiglipEncoder:
    """Builds the SiglipEncoder for `spec`; see `get_encoder`."""
    from transformers import SiglipVisionModel

    from milpf_jax.extraction.encoders.hub import load_hf_model

    model, revision = load_hf_model(SiglipVisionModel, spec, model_dir)
    check_model(spec, model.config)
    return SiglipEncoder(spec, model, device=device, precision=precision, model_revision=revision)
