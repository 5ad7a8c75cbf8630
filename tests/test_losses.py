import numpy as np

from cardionets_jax import losses


def mae_loss_reference(pred, target, mask, norm_pix):
  pred, target, mask = (np.asarray(a, np.float64) for a in (pred, target, mask))
  if norm_pix:
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
  per_patch = ((pred - target) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


def test_mae_loss_matches_float64_formula():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 4, 9, 12)).astype(np.float32)
  mask = (rng.uniform(size=(4, 9)) < 0.75).astype(np.float32)
  for norm_pix in (False, True):
    np.testing.assert_allclose(losses.mae_loss(pred, target, mask, norm_pix),
                               mae_loss_reference(pred, target, mask, norm_pix), rtol=1e-5)


def test_mae_loss_ignores_visible_patches():
  rng = np.random.default_rng(1)
  pred, target = rng.normal(size=(2, 2, 5, 3)).astype(np.float32)
  mask = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]], np.float32)
  changed = pred.copy()
  changed[mask == 0] += 100.0
  assert losses.mae_loss(pred, target, mask) == losses.mae_loss(changed, target, mask)
