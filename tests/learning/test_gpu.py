"""GPU checks (`python -m pytest -m gpu`): the trainer and the hand-written gradient on a GPU
give what they give on the CPU. Skipped without a GPU.

Nothing here imports zarr, pydicom or torch (the lent GPU machines lack the first two): the
cohort comes from `synthetic_packed`, in memory. f32 comparisons run with the highest
matmul precision, since XLA runs f32 dots on GPUs as TF32 by default.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from milpf_jax.learning import train as T
from milpf_jax.learning.head import HeadConfig, init_params
from milpf_jax.synthetic.embeddings import SyntheticConfig, synthetic_packed

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("no GPU visible to JAX")


@pytest.fixture(scope="module")
def cpu():
    return jax.devices("cpu")[0]


@pytest.fixture(scope="module")
def packed():
    # ~1,500 training tiles per 16 bags: enough for several backward chunks of 8,192 tiles.
    return synthetic_packed(SyntheticConfig(n_bags=600, dim=64, max_tiles=120, seed=3))


def _fit(device, packed, first_layer_dtype, precision="highest"):
    cfg = T.TrainConfig(head=HeadConfig(dim=packed.dim, first_layer_dtype=first_layer_dtype),
                        epochs=40, patience=40, chunk_epochs=20)
    with jax.default_device(device), jax.default_matmul_precision(precision):
        data = T.make_train_data(packed, cfg)
        keys, hp, _ = T.hparam_grid(4, [2e-3], [1e-4])
        result = T.fit(keys, hp, data, cfg, progress=False, shard="none")
    return jax.device_get(result.history), jax.device_get(result.state)


def test_gpu_fit_equals_cpu_fit_in_float32(gpu, cpu, packed):
    hist_gpu, state_gpu = _fit(gpu, packed, "float32")
    hist_cpu, state_cpu = _fit(cpu, packed, "float32")
    np.testing.assert_allclose(hist_gpu.val_auc, hist_cpu.val_auc, atol=1e-3)
    np.testing.assert_allclose(hist_gpu.loss, hist_cpu.loss, rtol=1e-3)
    assert np.ptp(hist_cpu.val_auc) > 0.01  # the runs learn: the comparison is not of constants
    np.testing.assert_array_equal(state_gpu.best_epoch, state_cpu.best_epoch)


def test_gpu_bf16_first_layer_stays_near_float32(gpu, packed):
    hist_bf16, _ = _fit(gpu, packed, "bfloat16", precision="default")
    hist_f32, _ = _fit(gpu, packed, "float32")
    assert np.abs(hist_bf16.val_auc[:, -1] - hist_f32.val_auc[:, -1]).max() < 0.02


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_attention_stream_gradient_equals_cpu(gpu, cpu, dtype):
    """The custom VJP, in chunks of 8,192 tiles (36,000 tiles here), on both devices."""
    from milpf_jax.learning.attention import attention_stream
    from milpf_jax.learning.batches import _in_blocks

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 300, 240)
    tile_bag = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    tiles = (3 * rng.standard_normal((len(tile_bag), 32))).astype(np.float32)
    x, _, valid, block_bag = _in_blocks(tiles, tile_bag, len(counts), 16)
    params = init_params(jax.random.key(1), HeadConfig(dim=32))
    cot = rng.standard_normal((len(counts), 8)).astype(np.float32)

    def grads(device):
        with jax.default_device(device), jax.default_matmul_precision("highest"):
            def loss(proj, attn):
                local, w = attention_stream(proj, attn, jnp.asarray(x), jnp.asarray(block_bag),
                                            jnp.asarray(valid), len(counts), dtype)
                return jnp.sum(jnp.tanh(local) * cot) + jnp.sum(w ** 2)

            return jax.device_get(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
                params["local_proj"], params["local_attn"]))

    (v_gpu, g_gpu), (v_cpu, g_cpu) = grads(gpu), grads(cpu)
    np.testing.assert_allclose(v_gpu, v_cpu, rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(g_gpu), jax.tree_util.tree_leaves(g_cpu),
                    strict=True):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3 * max(scale, 1e-6))


def test_gpu_predict_equals_cpu(gpu, cpu, packed):
    from milpf_jax.learning.inference import Bag, Head, predict

    cfg = HeadConfig(dim=packed.dim)
    head = Head(config=cfg, params=init_params(jax.random.key(4), cfg))
    b = packed.split("test")
    n = int(b.tiles_per_bag()[:8].sum())
    starts = np.concatenate([[0], np.cumsum(b.tiles_per_bag()[:8])])
    t_max = int(b.tiles_per_bag()[:8].max())
    tiles = np.zeros((8, t_max, packed.dim), np.float32)
    mask = np.zeros((8, t_max), bool)
    for i in range(8):
        k = starts[i + 1] - starts[i]
        tiles[i, :k] = np.asarray(b.tiles[starts[i]:starts[i + 1]], np.float32)
        mask[i, :k] = True
    assert n == mask.sum()
    bag = Bag(views=np.asarray(b.views[:8], np.float32), views_mask=np.asarray(b.views_mask[:8]),
              tiles=tiles, tiles_mask=mask)
    out = {}
    for name, device in (("gpu", gpu), ("cpu", cpu)):
        with jax.default_device(device), jax.default_matmul_precision("highest"):
            out[name] = np.asarray(predict(head, bag))
    np.testing.assert_allclose(out["gpu"], out["cpu"], atol=1e-5)
