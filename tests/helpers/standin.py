"""A deterministic stand-in encoder for extraction tests, and how to read a store back.

Block means of the input, a fixed random projection, rows L2-normalised: it follows the Encoder
contract and is registered by monkeypatching the registry and `get_encoder` (`install_standin`,
or the `standin` and `coupled` fixtures). With `coupling` > 0 each row also depends on the batch
it sits in, as a real network's kernels may: that is what makes a resume test able to fail.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from milpf_jax.data.store import Store
from milpf_jax.extraction import encoders
from milpf_jax.extraction.config import ExtractConfig
from milpf_jax.reading.imaging import read_image
from milpf_jax.reading.tiling import area_resize, cut_tiles, global_view, plan_view

STANDIN = "standin-proj"


ARRAYS = ("global", "global_mask", "tiles", "tiles_mask", "tile_boxes", "view_path", "view_name",
          "view_flipped", "view_shape", "raw_label", "split_given", "bag_id", "patient_id",
          "exam_id", "laterality", "status")  # fmt: skip


def standin_spec(input_size: int = 16, dim: int = 8) -> encoders.EncoderSpec:
    return encoders.EncoderSpec(
        name=STANDIN, family="efficientnet", model_id="test/standin-proj", input_size=input_size,
        dim=dim, mean=(0.5,) * 3, std=(0.5,) * 3, output="avgpool",
    )  # fmt: skip


class StandIn:
    """Encoder contract: embed([N, S, S] in [0, 1]) -> [N, D] float32, unit rows."""

    def __init__(self, spec, coupling=0.0, kill_at_call=None, sleep=0.0, precision="float32"):
        self.spec, self.coupling, self.kill_at_call, self.sleep = (
            spec,
            coupling,
            kill_at_call,
            sleep,
        )
        self.precision, self.model_revision, self.device = precision, "standin-1", "cpu"
        self.calls = self.rows = 0
        side = spec.input_size // 4
        self.w = np.random.default_rng(0).standard_normal((side * side, spec.dim))  # [K, D]

    def embed(self, images, *, batch_size=None):
        x = np.asarray(images, np.float64)
        s = self.spec.input_size
        if x.ndim != 3 or x.shape[1:] != (s, s) or x.min(initial=0) < 0 or x.max(initial=0) > 1:
            raise ValueError(f"stand-in got {x.shape} in [{x.min()}, {x.max()}]")
        self.calls += 1
        self.rows += len(x)
        if self.kill_at_call == self.calls:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.sleep)
        feats = x.reshape(len(x), s // 4, 4, s // 4, 4).mean(axis=(2, 4)).reshape(len(x), -1)
        if self.coupling:
            feats = feats + self.coupling * feats.mean(axis=0, keepdims=True)
        # Row by row, so a row's value never depends on how many rows a BLAS call saw.
        emb = (
            np.stack([f @ self.w for f in feats]) + 0.1 if len(x) else np.zeros((0, self.spec.dim))
        )
        return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def install_standin(setitem, setattr_, *, input_size=16, **kwargs) -> list[StandIn]:
    """Register the stand-in; returns the list every loaded instance is appended to."""
    spec = standin_spec(input_size)
    made: list[StandIn] = []
    real = encoders.get_encoder

    def get_encoder(name, **kw):
        if name != STANDIN:
            return real(name, **kw)
        made.append(StandIn(spec, **kwargs))
        return made[-1]

    setitem(encoders.ENCODERS, STANDIN, spec)
    setattr_(encoders, "get_encoder", get_encoder)
    return made


@pytest.fixture
def standin(monkeypatch):
    return install_standin(monkeypatch.setitem, monkeypatch.setattr)


@pytest.fixture
def coupled(monkeypatch):
    return install_standin(monkeypatch.setitem, monkeypatch.setattr, coupling=0.5)


def extract_cfg(**changes) -> ExtractConfig:
    base = {"encoder": STANDIN, "batch_size": 8, "workers": 0, "device": "cpu"}
    return ExtractConfig(**{**base, **changes})


def read_arrays(path) -> dict:
    store = Store.open(path)
    return {name: store.array(name) for name in ARRAYS}


def assert_same_store(a, b):
    for name in ARRAYS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def expected_bag(paths, views, tiling, encoder):
    """What the store should hold for one bag: boxes [T, 5] and embeddings [V + T, D]."""
    boxes, inputs, tiles = [], [], []
    size = encoder.spec.input_size
    for j, (path, view) in enumerate(zip(paths, views, strict=True)):
        plan, work = plan_view(read_image(path, view=view), tiling)
        boxes.append(np.concatenate([np.full((plan.n_tiles, 1), j), plan.source_boxes], 1))
        inputs.append(global_view(work, size)[None])
        cut = cut_tiles(work, plan)
        scale = tiling.tile_size / size
        tiles += [area_resize(t, (size, size), scale) for t in cut] if scale != 1 else list(cut)
    stack = np.concatenate([*inputs, np.asarray(tiles).reshape(-1, size, size)])
    return np.concatenate(boxes), encoder.embed(stack)


class Patch:
    """setitem/setattr without undo, for the child process."""

    @staticmethod
    def setitem(mapping, key, value):
        mapping[key] = value

