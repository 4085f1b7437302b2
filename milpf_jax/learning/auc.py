"""The exact ROC AUC inside compiled programs (the validation AUC of every epoch of every run).

Equal to `sklearn.metrics.roc_auc_score` on the rows a mask keeps (the numpy metrics of
`milpf_jax.evaluation.metrics` report it outside training).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def auc_jax(scores, labels, mask=None) -> jax.Array:
    """Exact ROC AUC in JAX: jit- and vmap-able, O(N log N).

    Mann-Whitney statistic: each positive scores the fraction of negatives below it, plus one
    half of the negatives tied with it. Equals `sklearn.metrics.roc_auc_score` on the rows where
    `mask` is True. Scores must be finite.

    Args:
      scores: [N] float.
      labels: [N] in {0, 1} (int, float or bool).
      mask: [N] bool, rows to use; None uses all rows.

    Returns:
      [] float32 AUC; 0.5 (not NaN) when the masked rows lack a class.

    Example:
      aucs = jax.vmap(auc_jax, in_axes=(0, None, None))(scores_per_run, labels, val_mask)
    """
    scores = jnp.asarray(scores)
    labels = jnp.asarray(labels)
    n = scores.shape[0]
    valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
    pos = (labels == 1) & valid
    neg = (labels == 0) & valid

    # Valid rows first, ascending score; masked rows sort last so they never share a rank.
    order = jnp.lexsort((scores, ~valid))
    s, v = scores[order], valid[order]
    is_pos, is_neg = pos[order], neg[order].astype(jnp.int32)

    idx = jnp.arange(n)
    starts_group = jnp.concatenate(
        [jnp.ones((1,), bool), (s[1:] != s[:-1]) | (v[1:] != v[:-1])]
    )  # [N]
    group_id = jnp.cumsum(starts_group) - 1  # [N]
    group_start = jax.lax.cummax(jnp.where(starts_group, idx, 0))  # [N]
    neg_below = (jnp.cumsum(is_neg) - is_neg)[group_start]  # negatives strictly lower, [N]
    neg_tied = jax.ops.segment_sum(is_neg, group_id, num_segments=n)[group_id]  # [N]

    n_pos = is_pos.sum()
    n_neg = is_neg.sum()
    # Normalise per positive before summing: every term is in [0, 1], so float32 stays exact
    # enough for large N where raw rank sums would not.
    per_pos = (neg_below + 0.5 * neg_tied) / jnp.maximum(n_neg, 1)  # [N]
    auc = jnp.where(is_pos, per_pos, 0.0).sum() / jnp.maximum(n_pos, 1)
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, 0.5).astype(jnp.float32)

