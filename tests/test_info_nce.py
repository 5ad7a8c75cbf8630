"""Weighted InfoNCE (stage 2) against a float64 transcription of the formula in docs/method.md (Stage 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cardionets_jax import losses


def reference_loss(e, c, phi, tau, sigma, weighted=True):
  """docs/method.md, Stage 2, written out with plain exp/log in float64 (no log-space tricks).

  Returns (loss, loss_ecg_to_cmr, loss_cmr_to_ecg).
  """
  e, c = np.asarray(e, np.float64), np.asarray(c, np.float64)
  e = e / np.linalg.norm(e, axis=1, keepdims=True)
  c = c / np.linalg.norm(c, axis=1, keepdims=True)
  s = e @ c.T / tau
  b = s.shape[0]
  if weighted:
    phi = np.asarray(phi, np.float64)
    d2 = ((phi[:, None, :] - phi[None, :, :]) ** 2).sum(-1)
    w = 1.0 - np.exp(-d2 / sigma ** 2)
  else:
    w = np.ones((b, b))
  rows, cols = [], []
  for i in range(b):
    neg_row = sum(w[i, k] * np.exp(s[i, k]) for k in range(b) if k != i)
    rows.append(-np.log(np.exp(s[i, i]) / (np.exp(s[i, i]) + neg_row)))
    neg_col = sum(w[k, i] * np.exp(s[k, i]) for k in range(b) if k != i)
    cols.append(-np.log(np.exp(s[i, i]) / (np.exp(s[i, i]) + neg_col)))
  rows, cols = np.mean(rows), np.mean(cols)
  return 0.5 * (rows + cols), rows, cols


def random_batch(seed, b=8, d=16, p=4, phi_scale=0.3):
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(b, d)).astype(np.float32)
  c = (0.5 * e + rng.normal(size=(b, d))).astype(np.float32)   # correlated pairs
  phi = (phi_scale * rng.normal(size=(b, p))).astype(np.float32)
  return e, c, phi


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("weighted", [True, False])
def test_matches_float64_formula(seed, weighted):
  e, c, phi = random_batch(seed)
  loss, metrics = losses.weighted_info_nce(e, c, phi, tau=0.05, sigma=0.5, weighted=weighted)
  want, rows, cols = reference_loss(e, c, phi, 0.05, 0.5, weighted)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_ecg_to_cmr"], rows, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_cmr_to_ecg"], cols, rtol=1e-5)
  if weighted:   # the weights are not trivially all 1 here: the test can tell
    assert 0.3 < float(metrics["mean_weight"]) < 0.95
    assert abs(want - reference_loss(e, c, phi, 0.05, 0.5, False)[0]) > 1e-2


def test_other_tau_sigma_and_a_removed_negative():
  e, c, phi = random_batch(7, phi_scale=1.0)
  phi[3] = phi[5]                       # identical descriptors: W_35 = W_53 = 0
  loss, _ = losses.weighted_info_nce(e, c, phi, tau=0.2, sigma=1.3)
  np.testing.assert_allclose(loss, reference_loss(e, c, phi, 0.2, 1.3)[0], rtol=1e-5)
  grads = jax.grad(lambda e, c: losses.weighted_info_nce(e, c, phi, tau=0.2, sigma=1.3)[0],
                   argnums=(0, 1))(e, c)
  assert all(np.isfinite(g).all() for g in grads)


def test_weighting_only_lowers_the_loss():
  for seed in range(3):
    e, c, phi = random_batch(seed)
    weighted = losses.weighted_info_nce(e, c, phi)[0]
    plain = losses.weighted_info_nce(e, c, phi, weighted=False)[0]
    assert weighted < plain


def test_unit_weights_give_plain_infonce_and_plain_is_clip_cross_entropy():
  e, c, _ = random_batch(11)
  b = e.shape[0]
  far = 100.0 * np.eye(b, dtype=np.float32)   # pairwise distances 141 = 283 sigma: W = 1
  weighted = losses.weighted_info_nce(e, c, far, tau=0.05, sigma=0.5)
  plain = losses.weighted_info_nce(e, c, None, tau=0.05)
  np.testing.assert_allclose(weighted[1]["mean_weight"], 1.0)
  np.testing.assert_allclose(weighted[0], plain[0], rtol=1e-6)
  np.testing.assert_allclose(losses.weighted_info_nce(e, c, far, weighted=False)[0], plain[0],
                             rtol=1e-6)

  # The internal log-space form with log W = 0 off the diagonal is exactly the plain form.
  s = losses.cosine_logits(e, c, 0.05)
  log_w = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, 0.0)
  np.testing.assert_allclose(losses.info_nce_from_logits(s, log_w)[0],
                             losses.info_nce_from_logits(s, None)[0], rtol=1e-6)

  labels = jnp.arange(b)
  clip = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(s, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(s.T, labels).mean())
  np.testing.assert_allclose(plain[0], clip, rtol=1e-5)


def test_metrics():
  rng = np.random.default_rng(3)
  e = rng.normal(size=(6, 16)).astype(np.float32)
  c = e.copy()
  c[[0, 1]] = c[[1, 0]]                       # two pairs swapped: 4 of 6 retrieve correctly
  _, m = losses.weighted_info_nce(e, c, rng.normal(size=(6, 4)))
  np.testing.assert_allclose(m["top1_ecg_to_cmr"], 4 / 6)
  np.testing.assert_allclose(m["top1_cmr_to_ecg"], 4 / 6)
  en = e / np.linalg.norm(e, axis=1, keepdims=True)
  cn = c / np.linalg.norm(c, axis=1, keepdims=True)
  cos = en @ cn.T
  np.testing.assert_allclose(m["pos_cos"], np.diag(cos).mean(), rtol=1e-5)
  np.testing.assert_allclose(m["neg_cos"], (cos.sum() - np.trace(cos)) / 30, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e30, 1e-20])
def test_bfloat16_tau_005_stays_finite(scale):
  e, c, phi = random_batch(5, b=16, d=32)
  c[:4] = e[:4]                               # perfectly aligned pairs: s_ii = 1 / tau = 20
  c[4:8] = -e[4:8]                            # and anti-aligned ones
  e = jnp.asarray(e * scale, jnp.bfloat16)
  c = jnp.asarray(c * scale, jnp.bfloat16)
  assert np.isfinite(np.asarray(e, np.float32)).all()

  def loss_fn(e, c):
    return losses.weighted_info_nce(e, c, phi, tau=0.05, sigma=0.5)[0]

  loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1))(e, c)
  assert loss.dtype == jnp.float32 and np.isfinite(loss)
  ref = reference_loss(np.asarray(e, np.float32), np.asarray(c, np.float32), phi, 0.05, 0.5)[0]
  np.testing.assert_allclose(loss, ref, rtol=1e-4)
  for g in grads:
    g = np.asarray(g, np.float32)
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_gradients_stop_at_phi_and_reach_both_embeddings():
  e, c, phi = random_batch(9)
  grads = jax.grad(lambda e, c, phi: losses.weighted_info_nce(e, c, phi)[0], argnums=(0, 1, 2))(
      e, c, phi)
  np.testing.assert_array_equal(grads[2], np.zeros_like(phi))
  for g in grads[:2]:
    assert np.isfinite(g).all()
    assert np.abs(g).max() > 1e-3


def test_gradient_matches_finite_differences():
  e, c, phi = random_batch(4, b=4, d=6)
  e, c, phi = (np.asarray(a, np.float64) for a in (e, c, phi))
  ge = jax.grad(lambda e: losses.weighted_info_nce(e, c, phi, tau=0.5)[0])(e.astype(np.float32))
  h = 1e-4
  for idx in [(0, 0), (2, 3), (3, 5)]:
    up, down = e.copy(), e.copy()
    up[idx] += h
    down[idx] -= h
    fd = (reference_loss(up, c, phi, 0.5, 0.5)[0] - reference_loss(down, c, phi, 0.5, 0.5)[0]) / (2 * h)
    np.testing.assert_allclose(ge[idx], fd, rtol=1e-3, atol=1e-5)


def test_clip_weights_against_numpy():
  rng = np.random.default_rng(0)
  phi = rng.normal(scale=0.4, size=(10, 4)).astype(np.float32)
  w = np.asarray(losses.clip_weights(phi, 0.5))
  p = phi.astype(np.float64)
  want = 1.0 - np.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / 0.25)
  np.fill_diagonal(want, 0.0)
  assert w.dtype == np.float32
  np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(w, w.T)
  np.testing.assert_array_equal(np.diag(w), 0.0)
  assert 0.0 < want[~np.eye(10, dtype=bool)].min() and want.max() < 1.0

  log_w = np.asarray(losses.log_clip_weights(phi, 0.5))
  assert np.all(np.isneginf(np.diag(log_w)))
  off = ~np.eye(10, dtype=bool)
  np.testing.assert_allclose(np.exp(log_w[off]), want[off], rtol=1e-5)


def test_log_clip_weights_is_accurate_for_close_pairs():
  # Exactly representable descriptors 2^-13 apart: W = 1 - exp(-2^-26 / 0.25) ~ 6e-8,
  # which 1 - exp(.) in float32 would round to 0 or to a multiple of 6e-8.
  phi = np.array([[0.5, 0.25], [0.5 + 2.0 ** -13, 0.25], [3.0, -1.0]], np.float32)
  x = (2.0 ** -13) ** 2 / 0.25
  log_w = np.asarray(losses.log_clip_weights(phi, 0.5))
  np.testing.assert_allclose(log_w[0, 1], np.log(-np.expm1(-x)), rtol=1e-6)
  np.testing.assert_allclose(losses.clip_weights(phi, 0.5)[0, 1], -np.expm1(-x), rtol=1e-6)
  assert np.isfinite(log_w[0, 1]) and log_w[0, 2] <= 0.0
