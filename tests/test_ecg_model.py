"""The ST-MEM style ECG encoder: sizes (jax.eval_shape), normalisation, lead masking."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardionets_jax.models import ecg, layers
from cardionets_jax.train.state import param_count as count
from tests.test_models import vit_block_params


def small_encoder(**kw):
  sizes = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=150, num_samples=1500)
  sizes.update(kw)
  return ecg.EcgEncoder(**sizes)


def test_base_is_vit_b_over_12_leads_of_30_patches():
  model = ecg.EcgEncoder(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=75,
                         num_samples=2250)
  x = jax.ShapeDtypeStruct((2, 12, 2250), jnp.float32)
  feats, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x), x)
  assert feats.shape == (2, 768) and feats.dtype == jnp.float32
  (tokens, mask), _ = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x, method=model.tokens), x)
  assert model.num_tokens == 384 == 12 * (30 + 2)
  assert tokens.shape == (2, 384, 768) and mask.shape == (2, 384)

  params = variables["params"]
  transformer = 12 * vit_block_params(768, 3072)
  patch_embed = 2 * 75 + 75 * 768 + 768 + 2 * 768     # LayerNorm(75), Linear, LayerNorm(768)
  position = (30 + 2) * 768
  leads = 12 * 768
  sep = 768
  final_norm = 2 * 768
  assert count(params["transformer"]) == transformer
  assert count(params) == transformer + patch_embed + position + leads + sep + final_norm
  assert 85.0e6 < transformer < 85.2e6
  # Every parameter carries logical axis names; the patch embedding is (patch, embed).
  boxed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(b, nn.LogicallyPartitioned) for b in boxed)
  assert params["patch_embed"]["kernel"].names == ("patch", "embed")
  assert params["pos_embed"].value.shape == (1, 32, 768)
  assert params["lead_embed"].value.shape == (12, 768)

  fwd = ecg.ecg_flops(2250, 75, 768, 12, 3072)
  assert fwd == 2 * 360 * 75 * 768 + layers.transformer_flops(384, 768, 12, 3072)
  assert 70e9 < fwd < 71e9   # ~70.7 GFLOPs per example


def test_flops_match_xla_cost_analysis():
  model = small_encoder(width=64, depth=2, num_heads=2, mlp_dim=256)
  x = jnp.zeros((1, 12, 1500))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  compiled = jax.jit(model.apply).lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = ecg.ecg_flops(1500, 150, 64, 2, 256)
  # XLA also counts element-wise work (softmax, norms, GELU); matmuls dominate.
  assert analytic <= cost["flops"] < 1.3 * analytic


def test_normalize_ecg_over_present_leads():
  rng = np.random.default_rng(0)
  x = (3.0 + 2.5 * rng.normal(size=(3, 12, 500))).astype(np.float32)
  x[1] *= 0.01
  mask = np.ones((3, 12), np.float32)
  mask[0, [2, 7]] = 0
  mask[2, :11] = 0
  x[0, 2] = 1e6          # absent leads hold anything: huge values, NaN
  x[0, 7] = np.nan
  z = np.asarray(ecg.normalize_ecg(x, mask))
  assert z.dtype == np.float32 and np.isfinite(z).all()
  for i in range(3):
    present = z[i][mask[i] > 0]
    np.testing.assert_allclose(present.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(present.std(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(z[i][mask[i] == 0], 0.0)
    xi = x[i][mask[i] > 0].astype(np.float64)
    np.testing.assert_allclose(present, (xi - xi.mean()) / xi.std(), rtol=1e-4, atol=1e-4)
  # No mask: every lead counts. A flat record gives zeros, not NaN.
  z = np.asarray(ecg.normalize_ecg(x[1:2]))
  np.testing.assert_allclose(z.std(), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(ecg.normalize_ecg(np.ones((1, 12, 10))), 0.0)


@pytest.fixture(scope="module")
def small():
  model = small_encoder()
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 12, 1500)).astype(np.float32)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"])
  return model, jax.jit(model.apply), params, x


def test_an_absent_lead_does_not_influence_the_features(small):
  model, apply, params, x = small
  mask = np.ones((2, 12), np.float32)
  mask[0, 3] = 0
  mask[0, 9] = 0
  base = np.asarray(apply({"params": params}, x, mask))
  assert base.shape == (2, 32) and np.isfinite(base).all()

  changed = x.copy()
  changed[0, 3] = 50.0 * np.random.default_rng(2).normal(size=1500)
  changed[0, 9] = np.nan
  np.testing.assert_array_equal(apply({"params": params}, changed, mask), base)

  # The absent lead's own tokens (its SEPs and lead embedding) are never attended to either:
  # without the attention key mask this would change the features.
  moved = jax.tree.map(lambda p: p, params)
  moved["lead_embed"] = moved["lead_embed"].at[3].add(
      jnp.asarray(np.random.default_rng(4).normal(size=32), jnp.float32))
  out = np.asarray(apply({"params": moved}, x, mask))
  np.testing.assert_array_equal(out[0], base[0])
  assert np.abs(out[1] - base[1]).max() > 1e-3      # example 1 has lead 3 present

  changed = x.copy()
  # A present lead (a ramp: the patch LayerNorm removes a constant offset within a patch).
  changed[0, 4, :300] += np.linspace(0.0, 3.0, 300)
  out = np.asarray(apply({"params": params}, changed, mask))
  assert np.abs(out[0] - base[0]).max() > 1e-4
  np.testing.assert_array_equal(out[1], base[1])     # examples are independent

  # Masking a lead changes the features; an all-ones mask equals no mask.
  assert np.abs(np.asarray(apply({"params": params}, x, np.ones((2, 12)))) - base).max() > 1e-4
  np.testing.assert_allclose(apply({"params": params}, x, np.ones(12)), apply({"params": params}, x),
                             rtol=1e-5, atol=1e-6)


def test_transformer_key_mask_hides_masked_tokens():
  model = layers.Transformer(depth=2, num_heads=2, mlp_dim=32)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 16)).astype(np.float32)
  mask = np.ones((2, 7), bool)
  mask[0, [1, 5]] = False
  params = model.init(jax.random.PRNGKey(0), x)
  y = model.apply(params, x, mask=mask)
  x2 = x.copy()
  x2[0, [1, 5]] += 3.0 * rng.normal(size=(2, 16))
  y2 = model.apply(params, x2, mask=mask)
  keep = mask[0]
  np.testing.assert_array_equal(y2[0, keep], y[0, keep])
  assert np.abs(np.asarray(model.apply(params, x2) - model.apply(params, x)))[0, keep].max() > 1e-3
  # An all-True mask is the unmasked computation.
  np.testing.assert_allclose(model.apply(params, x, mask=np.ones((2, 7), bool)),
                             model.apply(params, x), rtol=1e-6, atol=1e-6)


def test_input_length_checks_and_shorter_input(small):
  model, apply, params, x = small
  with pytest.raises(ValueError, match="more than the encoder's num_samples"):
    model.apply({"params": params}, np.zeros((1, 12, 1650), np.float32))
  with pytest.raises(ValueError, match="multiple of patch_size"):
    model.apply({"params": params}, np.zeros((1, 12, 1400), np.float32))
  with pytest.raises(ValueError, match="12"):
    model.apply({"params": params}, np.zeros((1, 8, 1500), np.float32))
  # A shorter crop uses the first position embeddings.
  h, mask = model.apply({"params": params}, x[:, :, :900], method=model.tokens)
  assert h.shape == (2, 12 * (6 + 2), 32) and mask.shape == (2, 12 * 8)
  assert model.num_tokens == 12 * (10 + 2)


def test_bfloat16_compute_and_dropout_training():
  model = small_encoder(depth=1, dropout=0.1, dtype=jnp.bfloat16)
  x = np.random.default_rng(3).normal(size=(2, 12, 1500)).astype(np.float32)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"])
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  apply = jax.jit(model.apply, static_argnames="train")
  feats = apply({"params": params}, x)
  assert feats.dtype == jnp.float32 and np.isfinite(feats).all()
  train = [apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(i)})
           for i in (1, 2)]
  assert np.abs(np.asarray(train[0] - train[1])).max() > 0
  np.testing.assert_array_equal(apply({"params": params}, x), feats)   # eval: deterministic
