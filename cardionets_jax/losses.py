"""Losses: pure functions of arrays, computed in float32."""

import jax.numpy as jnp


def mae_loss(pred, target, mask, norm_pix=True, eps=1e-6):
  """Mean squared error over masked patches (He et al., MAE).

  pred, target: (B, N, D); mask: (B, N), 1 where the patch was hidden.
  With norm_pix the target is each patch normalised by its own mean and std.
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  if norm_pix:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True)
    target = (target - mean) / jnp.sqrt(var + eps)
  per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
