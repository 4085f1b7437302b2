"""The Encoder contract: grey tiles [N, S, S] in [0, 1] -> L2-normalised embeddings [N, D].

A family subclasses `Encoder` and implements only `features` (normalised RGB pixels -> raw
embedding); checking, batching, normalisation, precision and the L2 norm live here, so every
family treats its input the same way.
"""

from __future__ import annotations

import contextlib

import numpy as np

from milpf_jax.extraction.encoders import PRECISIONS, EncoderSpec
from milpf_jax.runtime import cpu_has_fast_bf16

# Tiles come from a float resize of [0, 1] images; bicubic or Lanczos kernels overshoot a
# little, so allow that much before calling the input out of range (0-255 data fails loudly).
RANGE_TOLERANCE = 0.05


def resolve_precision(precision: str, device_type: str) -> str:
    """Maps "auto" | "float32" | "bfloat16" to the compute precision used on `device_type`.

    "auto" is bf16 autocast on CUDA (when the GPU supports bf16) and on CPUs with native bf16,
    float32 elsewhere (MPS, older CPUs).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; expected one of {PRECISIONS}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device_type == "cpu" and cpu_has_fast_bf16():
        return "bfloat16"
    return "float32"


def check_images(images, input_size: int):
    """Validates `images` and returns them as a float32 CPU torch tensor [N, S, S].

    Raises ValueError naming what was found: wrong rank or size, non-float dtype, values outside
    [0, 1] (e.g. 0-255 data), NaN.
    """
    import torch

    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if tensor.ndim != 3 or tuple(tensor.shape[1:]) != (input_size, input_size):
        raise ValueError(
            f"images must be [N, {input_size}, {input_size}] grey tiles, got shape "
            f"{tuple(tensor.shape)}; resize before embedding (the encoder does not resize)"
        )
    if not tensor.is_floating_point():
        raise ValueError(
            f"images must be floating point in [0, 1], got dtype {tensor.dtype}; "
            "divide integer images by their maximum value first"
        )
    tensor = tensor.detach().to("cpu", torch.float32)
    if tensor.numel():
        lo, hi = float(tensor.min()), float(tensor.max())
        # `not (a <= b)` also catches NaN, for which every comparison is False.
        if not (-RANGE_TOLERANCE <= lo and hi <= 1 + RANGE_TOLERANCE):
            raise ValueError(
                f"images must be grey values in [0, 1], got min {lo:.4g} and max {hi:.4g}"
            )
    return tensor


def grey_to_model_input(grey, mean, std):
    """[n, S, S] grey in [0, 1] -> [n, 3, S, S] normalised, channels-last.

    The grey image is replicated to the 3 channels the encoders were trained on, then each
    channel is standardised with the encoder's own mean/std.
    """
    import torch

    mean_t = torch.tensor(mean, dtype=grey.dtype, device=grey.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=grey.dtype, device=grey.device).view(1, 3, 1, 1)
    rgb = grey[:, None].expand(-1, 3, -1, -1)  # [n, 3, S, S]
    return ((rgb - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


class Encoder:
    """A frozen image encoder: `embed(images [N, S, S]) -> [N, D]` float32, unit-norm rows.

    Attributes:
      spec: the registry row this encoder was built from.
      device: torch.device the model runs on.
      precision: "float32" or "bfloat16" (autocast), "auto" already resolved.
      model_revision: commit hash of the Hugging Face snapshot, or the weights package version;
        None when unknown (e.g. a hand-made model_dir).
      batch_size: tiles per forward pass in `embed`.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        model,
        *,
        device="cpu",
        precision: str = "auto",
        model_revision: str | None = None,
        batch_size: int = 32,
    ):
        import torch

        self.spec = spec
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch finds no CUDA device")
        self.precision = resolve_precision(precision, self.device.type)
        self.model_revision = model_revision
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        # Weights stay float32; autocast picks bf16 per op, keeping norms and softmax in f32.
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.model.requires_grad_(False)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.spec.name!r}, model_id={self.spec.model_id!r}, "
            f"device={str(self.device)!r}, precision={self.precision!r})"
        )

    def features(self, pixels):
        """[n, 3, S, S] normalised pixels -> [n, D] raw embedding (the spec's `output`)."""
        raise NotImplementedError

    def embed(self, images, *, batch_size: int | None = None) -> np.ndarray:
        """Embeds grey tiles.

        Args:
          images: np.ndarray or torch.Tensor [N, S, S], float grey in [0, 1],
            S = spec.input_size (callers resize; the encoder does not).
          batch_size: tiles per forward pass; default self.batch_size.

        Returns:
          [N, D] float32 numpy array, each row L2-normalised.
        """
        import torch

        step = self.batch_size if batch_size is None else batch_size
        if step < 1:
            raise ValueError(f"batch_size must be >= 1, got {step}")
        grey = check_images(images, self.spec.input_size)  # [N, S, S]
        out = np.empty((grey.shape[0], self.spec.dim), np.float32)  # [N, D]
        for start in range(0, grey.shape[0], step):
            chunk = grey[start : start + step].to(self.device, non_blocking=True)
            pixels = grey_to_model_input(chunk, self.spec.mean, self.spec.std)  # [n, 3, S, S]
            with torch.inference_mode(), self._autocast():
                feats = self.features(pixels)
            out[start : start + len(chunk)] = self._finish(feats, start)
        return out

    def _autocast(self):
        import torch

        if self.precision == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _finish(self, feats, start: int) -> np.ndarray:
        """Checks the raw batch [n, D] and L2-normalises it in float32."""
        import torch

        feats = feats.float()
        if feats.ndim != 2 or feats.shape[1] != self.spec.dim:
            raise ValueError(
                f"encoder {self.spec.name!r} produced features of shape {tuple(feats.shape)}; "
                f"the registry expects [n, {self.spec.dim}]"
            )
        bad = (~torch.isfinite(feats).all(dim=1)).nonzero().flatten()
        if len(bad):
            rows = (bad + start).tolist()[:10]
            raise ValueError(
                f"encoder {self.spec.name!r} ({self.precision}) gave non-finite embeddings "
                f"for input rows {rows}"
            )
        return torch.nn.functional.normalize(feats, dim=1).cpu().numpy()
