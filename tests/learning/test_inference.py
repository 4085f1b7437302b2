
import jax
import numpy as np
import pytest

from milpf_jax.learning.head import HeadConfig, init_params
from milpf_jax.learning.inference import Bag, Head, predict, predict_logits


@pytest.fixture(scope="module")
def head():
    cfg = HeadConfig(dim=16)
    return Head(params=init_params(jax.random.key(0), cfg), config=cfg)


def random_bag(t, seed=0, d=16, v=2):
    rng = np.random.default_rng(seed)
    return Bag(rng.standard_normal((v, d)).astype(np.float32), np.ones(v, bool),
               rng.standard_normal((t, d)).astype(np.float32), np.ones(t, bool))


def test_single_and_batched_shapes_and_padding_invariance(head):
    bag = random_bag(10)
    p = predict(head, bag)
    assert p.shape == () and p.dtype == np.float32 and 0 < float(p) < 1
    # Same bag with 60 masked padding tiles of junk (pads to 128 instead of 64): same answer.
    junk = np.full((60, 16), 1e4, np.float32)
    padded = Bag(bag.views, bag.views_mask, np.concatenate([bag.tiles, junk]),
                 np.r_[np.ones(10, bool), np.zeros(60, bool)])
    np.testing.assert_allclose(predict(head, padded), p, rtol=1e-6)
    # Reference: the head on packed tiles directly.
    logit, _ = head.apply(bag.views[None], bag.views_mask[None], bag.tiles,
                          np.zeros(10, np.int32), np.ones(10, bool))
    np.testing.assert_allclose(p, jax.nn.sigmoid(logit[0]), rtol=1e-6)
    batch = Bag(np.stack([bag.views] * 3), np.ones((3, 2), bool), np.stack([bag.tiles] * 3),
                np.array([[True] * 10, [True] * 10, [False] * 10]))
    pb = predict(head, batch)
    assert pb.shape == (3,)
    np.testing.assert_allclose(pb[:2], [p, p], rtol=1e-6)
    assert abs(float(pb[2]) - float(p)) > 1e-6  # the tile-less bag differs


def test_zero_tile_bag_and_attention_in_aux(head):
    empty = random_bag(0)
    assert np.isfinite(float(predict(head, empty)))
    logit, aux = predict_logits(head, random_bag(5))
    assert aux["attn"].shape == (5,)
    np.testing.assert_allclose(float(np.sum(aux["attn"])), 1.0, rtol=1e-5)


def test_wrong_dimension_names_both(head):
    with pytest.raises(ValueError, match="D=32, but the head was trained on D=16"):
        predict(head, random_bag(3, d=32))
