"""Model shapes and sizes, checked with jax.eval_shape (nothing allocated)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardionets_jax.models import vit
from cardionets_jax.stages import mae
from cardionets_jax.train import state as state_lib
from cardionets_jax_configs import mae as mae_config


def vit_block_params(width, mlp):
  attention = 4 * width * width + 4 * width
  mlp_block = 2 * width * mlp + mlp + width
  norms = 2 * 2 * width
  return attention + mlp_block + norms


def abstract_params(config):
  model = mae.build_model(config)
  return jax.eval_shape(lambda r: mae.init_params(model, config, r), jax.random.PRNGKey(0))


def test_base_is_vit_b16_over_50_frames_as_channels():
  config = mae_config.get_config("variant=base")
  params = jax.tree.map(lambda x: x, abstract_params(config))
  enc = state_lib.param_count(params["encoder"])
  transformer = 12 * vit_block_params(768, 3072) + 2 * 768
  patch_embed = (50 * 16 * 16) * 768 + 768
  tokens = (96 // 16) ** 2
  assert tokens == 36
  assert enc == transformer + patch_embed + tokens * 768 + 768
  assert state_lib.param_count(params["encoder"]["transformer"]) == transformer
  # ViT-B/16's transformer is the familiar ~85M.
  assert 85.0e6 < transformer < 85.2e6


def test_base_features_shape_and_tube_variant_tokens():
  config = mae_config.get_config("variant=base")
  encoder = mae.build_encoder(config)
  video = jax.ShapeDtypeStruct((2, 50, 96, 96), jnp.uint8)
  feats = jax.eval_shape(lambda v: encoder.init_with_output(jax.random.PRNGKey(0), v)[0], video)
  assert encoder.pool == "tokens"
  assert feats.shape == (2, 36 * 768) == (2, encoder.feature_dim)
  release = encoder.clone(pool="cls_prenorm")
  assert release.feature_dim == 768
  assert jax.eval_shape(lambda v: release.init_with_output(jax.random.PRNGKey(0), v)[0],
                        video).shape == (2, 768)

  tube = mae_config.get_config("variant=base,tube=true")
  encoder = mae.build_encoder(tube)
  assert encoder.patch == (10, 16, 16)
  assert encoder.num_patches == 5 * 6 * 6
  params = jax.eval_shape(lambda v: encoder.init(jax.random.PRNGKey(0), v), video)["params"]
  assert params["patch_embed"]["kernel"].value.shape == (10 * 16 * 16, 768)


def test_poolings_are_views_of_one_forward_pass():
  """`tokens` is the normed patch grid in patch order; `mean` its mean; `cls` the normed CLS;
  `cls_prenorm` the CLS before the final norm (its output, normed, is `cls`)."""
  config = mae_config.get_config("variant=test")
  encoder = mae.build_encoder(config)
  video = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3,) + mae.cmr_shape(config)),
                      jnp.uint8)
  params = encoder.init(jax.random.PRNGKey(0), video)["params"]
  out = {pool: encoder.clone(pool=pool).apply({"params": params}, video) for pool in vit.POOLS}
  hidden = encoder.apply({"params": params}, video,
                         method=lambda m, v: m.encode(m.embed(v), normalize=False))
  normed = nn.LayerNorm(epsilon=encoder.norm_eps).apply(
      {"params": params["transformer"]["ln_final"]}, hidden)
  grid = out["tokens"].reshape(3, encoder.num_patches, encoder.width)
  np.testing.assert_allclose(grid, normed[:, 1:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["mean"], grid.mean(1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["cls"], normed[:, 0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["cls_prenorm"], hidden[:, 0], rtol=1e-6, atol=1e-6)
  assert not np.allclose(out["cls"], out["cls_prenorm"], atol=1e-3)


@pytest.mark.parametrize("patch", [(10, 4, 4), (5, 8, 4)])
def test_patchify_round_trip_and_token_content(patch):
  video = np.random.default_rng(0).normal(size=(2, 10, 16, 8)).astype(np.float32)
  tokens = vit.patchify(video, patch)
  assert tokens.shape == (2, vit.num_tokens((10, 16, 8), patch), int(np.prod(patch)))
  np.testing.assert_array_equal(vit.unpatchify(tokens, patch, (10, 16, 8)), video)
  # Token 1 is the patch at (t=0, h=0, w=1).
  pt, ph, pw = patch
  np.testing.assert_array_equal(tokens[0, 1], video[0, :pt, :ph, pw:2 * pw].reshape(-1))


def test_mae_masks_the_configured_ratio(tiny_config):
  model = mae.build_model(tiny_config)
  video = jnp.zeros((3, 8, 16, 16), jnp.uint8)
  params = jax.jit(lambda r: mae.init_params(model, tiny_config, r))(jax.random.PRNGKey(0))
  pred, mask = jax.jit(model.apply)({"params": params}, video, rngs={"mask": jax.random.PRNGKey(1)})
  n = model.encoder.num_patches
  assert pred.shape == (3, n, 8 * 8 * 8)
  np.testing.assert_array_equal(mask.sum(axis=1), [n - round(n * 0.25)] * 3)
  assert not np.array_equal(mask[0], mask[1])  # an independent mask per example
