"""Import of original PyTorch MIL-PF heads: parity with a PyTorch forward written here."""

import math

import jax
import numpy as np
import pytest
import torch
from torch import nn

from milpf_jax.learning.convert import from_torch_state_dict
from milpf_jax.learning.head import HeadConfig, count_params, init_params
from milpf_jax.learning.inference import Bag, predict


class OriginalHead(nn.Module):
    """The original MILPFAttnTrexModel's parameter names and forward, one bag at a time."""

    def __init__(self, dim: int):
        super().__init__()
        self.global_proj_0 = nn.Sequential(nn.Linear(dim, 16), nn.ReLU())
        self.global_proj_1 = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.local_proj_0 = nn.Sequential(nn.Linear(dim, 16), nn.ReLU())
        self.local_proj_1 = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.k = nn.Linear(8, 8)
        self.v = nn.Linear(8, 8)
        self.latent = nn.Parameter(torch.randn(1, 8))
        self.linear_out = nn.Linear(16, 1)

    def forward(self, views, tiles):
        """views [V, D], tiles [T, D] (T >= 1) -> probability []."""
        g = self.global_proj_1(self.global_proj_0(views)).max(dim=0).values  # [8]
        h = self.local_proj_1(self.local_proj_0(tiles))  # [T, 8]
        scores = (self.k(h) @ self.latent.t()) / math.sqrt(8)  # [T, 1]
        attn = torch.softmax(scores, dim=0)
        local = (attn * self.v(h)).sum(dim=0)  # [8]
        return torch.sigmoid(self.linear_out(torch.cat([g, local])))[0]


def make_torch_head(dim, seed):
    """A random original head with weights large enough that probabilities spread out."""
    torch.manual_seed(seed)
    model = OriginalHead(dim)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape) * 0.1)
            else:  # 1.5x the std of a unit-variance-preserving init
                fan_in = 8 if name == "latent" else p.shape[-1]
                p.copy_(torch.randn(p.shape) * 1.5 / math.sqrt(fan_in))
    return model.eval()


def make_bags(dim, n_views, n_tiles, seed):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((v, dim)).astype(np.float32),
            rng.standard_normal((t, dim)).astype(np.float32),
        )
        for v, t in zip(n_views, n_tiles)
    ]


def pad_batch(bags, dim):
    """Bags of different sizes -> one padded Bag with masks."""
    vmax = max(v.shape[0] for v, _ in bags)
    tmax = max(t.shape[0] for _, t in bags)
    b = len(bags)
    views, tiles = np.zeros((b, vmax, dim), np.float32), np.zeros((b, tmax, dim), np.float32)
    views_mask, tiles_mask = np.zeros((b, vmax), bool), np.zeros((b, tmax), bool)
    for i, (v, t) in enumerate(bags):
        views[i, : len(v)], views_mask[i, : len(v)] = v, True
        tiles[i, : len(t)], tiles_mask[i, : len(t)] = t, True
    # Padding holds garbage, not zeros: it must be ignored, not merely harmless.
    views[~views_mask] = 7.0
    tiles[~tiles_mask] = -5.0
    return Bag(views, views_mask, tiles, tiles_mask)


def torch_probs(model, bags):
    with torch.no_grad():
        return np.array([model(torch.from_numpy(v), torch.from_numpy(t)).item() for v, t in bags])


@pytest.mark.parametrize("dim", [32, 1152])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_matches_torch_forward(dim, seed):
    model = make_torch_head(dim, seed)
    head = from_torch_state_dict(model.state_dict())
    bags = make_bags(dim, n_views=[4, 1, 2, 3, 2], n_tiles=[12, 3, 1, 7, 20], seed=seed)
    expected = torch_probs(model, bags)
    assert expected.std() > 0.02, "weights too small for a meaningful comparison"
    got = np.asarray(predict(head, pad_batch(bags, dim)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dim", [32, 1152])
def test_single_bag_with_one_view(dim):
    model = make_torch_head(dim, seed=5)
    head = from_torch_state_dict(model.state_dict())
    ((views, tiles),) = make_bags(dim, n_views=[1], n_tiles=[6], seed=9)
    p = predict(head, Bag(views, np.ones(1, bool), tiles, np.ones(6, bool)))
    assert p.shape == ()
    np.testing.assert_allclose(float(p), torch_probs(model, [(views, tiles)])[0], atol=1e-5)


def test_config_and_parameter_tree_are_the_papers_head():
    head = from_torch_state_dict(make_torch_head(1152, seed=0).state_dict())
    assert head.config == HeadConfig(dim=1152, global_pool="max", local_pool="attn")
    assert count_params(head.params) == 37_337  # paper, section 3.1 / DESIGN.md
    template = jax.eval_shape(lambda: init_params(jax.random.key(0), head.config))
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), head.params)
    assert got == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), template)


def test_nested_model_state_dict_with_numpy_values_gives_the_same_head():
    model = make_torch_head(32, seed=3)
    direct = from_torch_state_dict(model.state_dict())
    numpy_sd = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
    nested = from_torch_state_dict({"model_state_dict": numpy_sd, "epoch": 12})
    jax.tree_util.tree_map(np.testing.assert_array_equal, direct.params, nested.params)
    np.testing.assert_array_equal(
        nested.params["global_proj"]["0"]["kernel"], model.global_proj_0[0].weight.detach().T
    )
    np.testing.assert_array_equal(nested.params["local_attn"]["latent"], model.latent[0].detach())


@pytest.mark.parametrize("nest", [False, True])
def test_loads_pt_file(tmp_path, nest):
    model = make_torch_head(32, seed=4)
    sd = model.state_dict()
    path = tmp_path / "head.pth"
    torch.save({"model_state_dict": sd, "epoch": 3, "val_auc": 0.8} if nest else sd, path)
    head = from_torch_state_dict(path)
    bags = make_bags(32, n_views=[2, 3], n_tiles=[4, 9], seed=1)
    np.testing.assert_allclose(
        np.asarray(predict(head, pad_batch(bags, 32))), torch_probs(model, bags), atol=1e-5
    )


def test_missing_extra_and_misshaped_keys_are_all_listed():
    sd = dict(make_torch_head(32, seed=0).state_dict())
    del sd["k.bias"]
    sd["temperature"] = torch.ones(1)
    sd["v.weight"] = torch.zeros(8, 4)
    with pytest.raises(ValueError) as err:
        from_torch_state_dict(sd)
    msg = str(err.value)
    assert "missing k.bias (expected shape (8,))" in msg
    assert "unexpected temperature (shape (1,))" in msg
    assert "v.weight: shape (8, 4), expected (8, 8)" in msg


def test_mlp_out_and_multi_latent_variants_are_refused():
    sd = dict(make_torch_head(32, seed=0).state_dict())
    sd["latent"] = torch.zeros(2, 8)
    w, b = sd.pop("linear_out.weight"), sd.pop("linear_out.bias")
    sd.update(
        {
            "linear_out.0.weight": torch.zeros(8, 16),
            "linear_out.0.bias": torch.zeros(8),
            "linear_out.2.weight": w[:, :8],
            "linear_out.2.bias": b,
        }
    )
    with pytest.raises(ValueError, match="missing linear_out.weight") as err:
        from_torch_state_dict(sd)
    assert "latent: shape (2, 8), expected (1, 8)" in str(err.value)
    assert "unexpected linear_out.0.weight" in str(err.value)


def test_state_dict_of_something_else_is_refused():
    with pytest.raises(ValueError, match="cannot read D"):
        from_torch_state_dict({"fc.weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="expected a state dict"):
        from_torch_state_dict([1, 2, 3])


def test_non_finite_weights_are_refused():
    sd = dict(make_torch_head(32, seed=0).state_dict())
    sd["k.weight"] = sd["k.weight"].clone()
    sd["k.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values in \['k.weight'\]"):
        from_torch_state_dict(sd)


def test_missing_or_unloadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no PyTorch checkpoint file"):
        from_torch_state_dict(tmp_path / "absent.pth")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt is not a loadable PyTorch checkpoint"):
        from_torch_state_dict(junk)
