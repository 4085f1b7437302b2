"""Training: one pure function of (key, hparams), vmapped over runs, one compiled program.

`train(key, hparams, data, cfg)` initialises a head, runs `cfg.epochs` full-batch Adam steps in
a `lax.scan`, and after each step computes the validation AUC, keeping each run's best
parameters and patience count inside the scan (a stopped run stops changing). It is meant to be
run as

    run = jax.jit(jax.vmap(train, in_axes=(0, 0, None, None)), static_argnames="cfg")
    result = run(keys, hparams, data, cfg)   # keys [R], hparams leaves [R]: R = seeds x grid

`fit` is the host loop around the same pieces: it compiles one chunk of epochs, runs chunks
until every run has stopped (early exit) and shows progress. The defaults the paper leaves out
follow the original code (DESIGN.md, "Training").
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax

from milpf_jax.config import check, check_choices, option
from milpf_jax.data.labels import class_weights
from milpf_jax.learning.auc import auc_jax
from milpf_jax.learning.batches import BagBatch, TrainData, as_instances, bag_batch
from milpf_jax.learning.head import HeadConfig, MILPFHead, init_params

Mode = Literal["mil", "instance"]
MODES = get_args(Mode)


@dataclass(frozen=True)
class TrainConfig:
    """Static settings of a training run (the traced ones, lr and weight decay, are Hparams).

    epochs, patience, min_delta: original code (at most 700 epochs, patience 20, min delta
    0.001). mode: "mil" trains on bags; "instance" trains each image (or tile) with its bag's
    label and pools only at inference (paper, Table 4, "inf. only"). chunk_epochs: epochs per
    compiled call of the host loop in `fit` (progress and early exit granularity).
    """

    head: HeadConfig = option(HeadConfig())
    epochs: int = option(700, "at most this many epochs (one full-batch Adam step each)")
    patience: int = option(20, "stop a run after this many epochs without a validation AUC "
                               "gain above --min-delta")
    min_delta: float = option(1e-3, "a validation AUC gain this large resets the patience")
    mode: Mode = option("mil", "mil, or instance (Table 4 'inf. only')")
    chunk_epochs: int = option(25, cli=False)

    def __post_init__(self):
        check_choices(self)
        check(self, self.mode != "instance" or "none" in (self.head.global_pool,
                                                          self.head.local_pool),
              ("mode", "global_pool", "local_pool"),
              "mode 'instance' trains one stream per image or tile: set global_pool or "
              "local_pool to 'none'")
        for name in ("epochs", "patience", "chunk_epochs"):
            check(self, getattr(self, name) >= 1, name, f"{getattr(self, name)}; expected >= 1")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


class Hparams(NamedTuple):
    """Traced hyperparameters: arrays, with a leading run axis when vmapped."""

    learning_rate: jax.Array  # original code: Adam, lr 2e-3
    weight_decay: jax.Array  # coupled L2, as torch Adam's weight_decay: 1e-4


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    best_params: dict
    best_val_auc: jax.Array  # [] float32, -inf before the first epoch
    best_epoch: jax.Array  # [] int32, 1-based epoch of best_params (0: none yet)
    patience_count: jax.Array  # [] int32, epochs since the last improvement > min_delta
    stopped: jax.Array  # [] bool
    epoch: jax.Array  # [] int32, epochs run so far


class History(NamedTuple):
    loss: jax.Array  # [E] training loss of each epoch's step
    val_auc: jax.Array  # [E] validation AUC after each epoch's step
    active: jax.Array  # [E] bool, the run had not stopped before this epoch


class TrainResult(NamedTuple):
    state: TrainState
    history: History


def adam_l2(learning_rate, weight_decay):
    """torch.optim.Adam(weight_decay=wd): the L2 term joins the gradient before the moments."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def _optimizer(hparams: Hparams):
    return optax.inject_hyperparams(adam_l2)(
        learning_rate=hparams.learning_rate, weight_decay=hparams.weight_decay
    )


def forward(params, batch: BagBatch, head: HeadConfig):
    """Logits [B] and aux of a head on a batch (one run; vmap for many)."""
    return MILPFHead(head).apply(
        {"params": params}, batch.views, batch.views_mask, batch.tiles, batch.tile_bag,
        batch.tile_valid, batch.block_bag,
    )


def weighted_bce(logits, batch: BagBatch):
    """BCE with per-sample weights, mean over real samples (torch's weighted 'mean')."""
    bce = optax.sigmoid_binary_cross_entropy(logits, batch.labels)
    n = jnp.maximum(jnp.sum(batch.weights > 0), 1)
    return jnp.sum(batch.weights * bce) / n


def loss_fn(params, batch: BagBatch, head: HeadConfig):
    logits, _ = forward(params, batch, head)
    return weighted_bce(logits, batch)


def val_auc(params, batch: BagBatch, head: HeadConfig):
    logits, _ = forward(params, batch, head)
    return auc_jax(logits, batch.labels, batch.weights > 0)


def init_state(key, hparams: Hparams, data: TrainData, cfg: TrainConfig) -> TrainState:
    params = init_params(key, cfg.head)
    opt_state = _optimizer(hparams).init(params)
    return TrainState(
        params=params,
        opt_state=opt_state,
        best_params=params,
        best_val_auc=jnp.float32(-jnp.inf),
        best_epoch=jnp.int32(0),
        patience_count=jnp.int32(0),
        stopped=jnp.bool_(False),
        epoch=jnp.int32(0),
    )


def _select(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def epoch_step(state: TrainState, data: TrainData, cfg: TrainConfig):
    """One full-batch Adam step, then validation AUC, keep-best and patience, as array ops."""
    loss, grads = jax.value_and_grad(loss_fn)(state.params, data.train, cfg.head)
    tx = optax.inject_hyperparams(adam_l2)(learning_rate=0.0, weight_decay=0.0)  # reads state
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    auc = val_auc(params, data.val, cfg.head)

    active = ~state.stopped & (state.epoch < cfg.epochs)
    epoch = state.epoch + active.astype(jnp.int32)
    # The best parameters follow any strict improvement; patience resets only on an
    # improvement larger than min_delta (original code's early stopping).
    improved = active & (auc > state.best_val_auc)
    significant = active & (auc > state.best_val_auc + cfg.min_delta)
    count = jnp.where(significant, 0, state.patience_count + active.astype(jnp.int32))
    new_state = TrainState(
        params=_select(active, params, state.params),
        opt_state=_select(active, opt_state, state.opt_state),
        best_params=_select(improved, params, state.best_params),
        best_val_auc=jnp.where(improved, auc, state.best_val_auc),
        best_epoch=jnp.where(improved, epoch, state.best_epoch),
        patience_count=count,
        stopped=state.stopped | (count >= cfg.patience) | (epoch >= cfg.epochs),
        epoch=epoch,
    )
    return new_state, History(loss=loss, val_auc=auc, active=active)


def run_epochs(state: TrainState, data: TrainData, cfg: TrainConfig, n_epochs: int):
    """`n_epochs` epoch steps in a lax.scan; returns (state, History with [n_epochs] leaves)."""
    return jax.lax.scan(lambda s, _: epoch_step(s, data, cfg), state, None, length=n_epochs)


def train(key, hparams: Hparams, data: TrainData, cfg: TrainConfig) -> TrainResult:
    """A whole run as one pure function: init, then cfg.epochs epochs (early stop inside)."""
    state = init_state(key, hparams, data, cfg)
    state, history = run_epochs(state, data, cfg, cfg.epochs)
    return TrainResult(state, history)


# -- host side: data preparation and the chunked loop ---------------------------------------


def _split_origin(packed) -> str:
    """Which data and settings gave these splits, so an error says what to change."""
    info = packed.info
    sizes = "/".join(str(int(np.sum(packed.splits == i))) for i in range(3))
    return (f"store {info.get('store')}, mapping {info.get('mapping')!r}, split seed "
            f"{info.get('split_seed')}: bags train/val/test = {sizes}, left out by the mapping "
            f"{info.get('excluded', {})}")


def make_train_data(packed, cfg: TrainConfig, *, dtype=None, block: int | None = None
                    ) -> TrainData:
    """Train and validation bags of a PackedBags (the test split never enters training).

    dtype: the embeddings' dtype in memory; by default bfloat16 when the head's first layer
    computes in bfloat16 (it rounds them to that anyway: half the memory, no cast per step),
    else float32. block: see `bag_batch` (default: the head's `impl.tile_block`).
    """
    head = cfg.head.resolved()
    block = head.impl.tile_block if block is None else block
    if dtype is None:
        dtype = jnp.bfloat16 if head.first_layer_dtype == "bfloat16" else jnp.float32
    tr, va = packed.split("train", tiles_dtype=dtype), packed.split("val", tiles_dtype=dtype)
    if tr.n_bags == 0:
        raise ValueError(f"the training split is empty: no bags to train on "
                         f"({_split_origin(packed)})")
    if va.n_bags == 0 or len(np.unique(va.labels)) < 2:
        raise ValueError(
            f"the validation split has {va.n_bags} bags with labels "
            f"{sorted(set(va.labels.tolist()))}: validation AUC needs both classes "
            f"(try another --split-seed, or give splits in the manifest; "
            f"{_split_origin(packed)})"
        )
    if packed.dim != cfg.head.dim:
        raise ValueError(f"embeddings have D={packed.dim} but the head expects "
                         f"dim={cfg.head.dim}")
    train_batch = bag_batch(tr, weights=class_weights(tr.labels), dtype=dtype, block=block)
    if cfg.mode == "instance":
        train_batch = as_instances(train_batch, cfg.head)
    return TrainData(train=train_batch, val=bag_batch(va, dtype=dtype, block=block))



def hparam_grid(seeds: int, learning_rates, weight_decays, *, seed: int = 0):
    """Keys and Hparams for every (lr, wd, seed) combination, run axis first.

    Returns (keys [R], Hparams with [R] leaves, table: list of dicts with seed, lr, wd).
    Run r uses key fold_in(key(seed), seed_index), so seed s gets the same initialisation
    whatever the grid around it.
    """
    table = [dict(seed=s, lr=float(lr), weight_decay=float(wd))
             for lr in learning_rates for wd in weight_decays for s in range(seeds)]
    base = jax.random.key(seed)
    keys = jnp.stack([jax.random.fold_in(base, t["seed"]) for t in table])
    hp = Hparams(
        learning_rate=jnp.array([t["lr"] for t in table], jnp.float32),
        weight_decay=jnp.array([t["weight_decay"] for t in table], jnp.float32),
    )
    return keys, hp, table


class FitResult(NamedTuple):
    state: TrainState  # leaves with a leading run axis
    history: History  # leaves [R, epochs_run]
    compile_seconds: float
    train_seconds: float
    epochs_run: int


def fit(keys, hparams: Hparams, data: TrainData, cfg: TrainConfig, *, progress=True,
        shard: str = "auto", devices=None) -> FitResult:
    """The host loop: compile one chunk of epochs once, run chunks until every run stopped.

    Equal to `train` vmapped (a stopped run no longer changes), but it stops early, shows
    progress, and reports compile and training time apart. Raises if a loss goes non-finite,
    naming the runs and the epoch.

    shard: how to use several devices (`devices`, default all; see milpf_jax.learning.sharding):
    "runs" splits the runs over them, "tiles" splits the tiles, "none" stays on one device,
    "auto" splits the runs when there are several devices and they divide the runs evenly.
    """
    t0 = time.perf_counter()
    n = min(cfg.chunk_epochs, cfg.epochs)
    init = jax.jit(jax.vmap(partial(init_state, cfg=cfg), in_axes=(0, 0, None)))
    chunk = jax.jit(jax.vmap(partial(run_epochs, cfg=cfg, n_epochs=n), in_axes=(0, None)))
    state = init(keys, hparams, data)
    axis = _shard_axis(shard, len(keys), devices)
    if axis is not None:
        from milpf_jax.learning.sharding import place

        state, data = place(state, data, devices, axis)
    compiled = chunk.lower(state, data).compile()
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - t0

    bar = _progress_bar(cfg.epochs, len(keys), progress)
    histories = []
    t1 = time.perf_counter()
    done = 0
    while done < cfg.epochs:
        state, hist = compiled(state, data)
        hist = jax.device_get(hist)
        histories.append(hist)
        _check_finite(hist, done)
        done += n
        stopped = np.asarray(state.stopped)
        if bar is not None:
            bar.update(min(n, cfg.epochs - bar.n))
            bar.set_postfix(best_val_auc=f"{float(np.max(state.best_val_auc)):.3f}",
                            running=f"{int((~stopped).sum())}/{len(stopped)}")
        if stopped.all():
            break
    jax.block_until_ready(state)
    train_seconds = time.perf_counter() - t1
    if bar is not None:
        bar.close()
    history = History(*(np.concatenate([getattr(h, f) for h in histories], axis=1)
                        for f in History._fields))
    epochs_run = min(done, cfg.epochs)
    history = History(*(a[:, :epochs_run] for a in history))
    return FitResult(state, history, compile_seconds, train_seconds, epochs_run)


def _shard_axis(shard: str, runs: int, devices) -> str | None:
    if shard not in ("auto", "runs", "tiles", "none"):
        raise ValueError(f"shard {shard!r}: choose auto, runs, tiles or none")
    n_devices = len(jax.devices() if devices is None else devices)
    if shard == "none" or n_devices == 1:
        return None
    if shard == "auto":
        return "runs" if runs % n_devices == 0 else None
    return shard


def _check_finite(hist: History, first_epoch: int):
    bad = ~np.isfinite(hist.loss) & hist.active
    if bad.any():
        runs, epochs = np.nonzero(bad)
        raise FloatingPointError(
            f"training loss became non-finite in run(s) {sorted(set(runs.tolist()))[:10]} at "
            f"epoch {first_epoch + int(epochs.min()) + 1}: lower the learning rate or check the "
            "embeddings for extreme values"
        )


def _progress_bar(total: int, runs: int, enabled: bool):
    if not enabled:
        return None
    from milpf_jax.progress import progress_bar

    return progress_bar(total=total, desc=f"train {runs} runs", unit="epoch", leave=False)


def predict_runs(params, batch: BagBatch, head: HeadConfig) -> np.ndarray:
    """Probabilities [R, B] of every run (params with a leading run axis) on a batch, in f32."""
    head = head.replace(first_layer_dtype="float32")
    fn = jax.jit(jax.vmap(lambda p: jax.nn.sigmoid(forward(p, batch, head)[0])))
    return np.asarray(fn(params))


def predict_head(head, packed) -> np.ndarray:
    """Probabilities [B] of one trained head (`inference.Head`) on every bag of `packed`, in f32:
    `predict_runs` with a run axis of one, in the tile layout the head was trained with."""
    params = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], head.params)
    return predict_runs(params, bag_batch(packed, block=head.config.impl.tile_block),
                        head.config)[0]
