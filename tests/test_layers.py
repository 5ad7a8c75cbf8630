"""The transformer stack's compile-time and memory options change nothing in the numbers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardionets_jax.models import layers

DEPTH = 3


def _loss_and_grads(model, params, x, mask):
  loss = lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, mask=mask)))
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("scan,remat", [(True, "none"), (True, "full"), (False, "dots")])
def test_scanned_and_rematted_stacks_equal_the_unrolled_one(scan, remat):
  kwargs = dict(depth=DEPTH, num_heads=2, mlp_dim=32)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 7, 16))
  mask = jnp.arange(7)[None, :] < jnp.array([[7], [4], [0]])   # one example with no key at all
  unrolled = layers.Transformer(**kwargs)
  params = nn.meta.unbox(unrolled.init(jax.random.PRNGKey(0), x)["params"])
  loss, grads = _loss_and_grads(unrolled, params, x, mask)

  other = layers.Transformer(**kwargs, stack=layers.Stack(scan, remat))
  other_params = layers.stack_blocks(params, DEPTH) if scan else params
  shapes = jax.eval_shape(lambda: nn.meta.unbox(other.init(jax.random.PRNGKey(0), x)["params"]))
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, other_params)
  other_loss, other_grads = _loss_and_grads(other, other_params, x, mask)

  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  if scan:
    grads = layers.stack_blocks(grads, DEPTH)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), other_grads,
               grads)
  assert np.abs(grads["ln_final"]["scale"]).max() > 0   # the gradients are not trivially zero


def test_masked_keys_get_no_weight_and_no_gradient():
  q, k, v = (jax.random.normal(key, (2, 5, 2, 4)) for key in jax.random.split(jax.random.PRNGKey(0), 3))
  mask = jnp.array([[True] * 3 + [False] * 2, [False] * 5])
  out = layers.dot_product_attention(q, k, v, mask)
  expected = jax.nn.dot_product_attention(q[:1, :, :, :], k[:1, :3], v[:1, :3])
  np.testing.assert_allclose(out[:1], expected, atol=1e-6)
  np.testing.assert_allclose(out[1], jnp.broadcast_to(v[1].mean(0), (5, 2, 4)), atol=1e-6)
  dk, dv = jax.grad(lambda k, v: jnp.sum(jnp.sin(layers.dot_product_attention(q, k, v, mask))),
                    argnums=(0, 1))(k, v)
  assert not np.any(dk[0, 3:]) and not np.any(dv[0, 3:]) and not np.any(dk[1])
  ref_dk = jax.grad(lambda k: jnp.sum(jnp.sin(jax.nn.dot_product_attention(
      q, k, v, mask=mask[:, None, None, :]))))(k)
  np.testing.assert_allclose(dk, ref_dk, atol=1e-5)


def test_rematted_vae_equals_the_plain_one():
  from cardionets_jax.models import vae3d
  sizes = dict(base_channels=4, channel_mult=(1, 2), num_res_blocks=1, decoder_res_blocks=2,
               latent_channels=2, temporal_down=(True,), mid_attention_heads=2)
  video = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 8, 8), minval=-1, maxval=1)
  plain = vae3d.VAE3D(**sizes)
  # Init as one program: op by op, a VAE's init costs the suite seconds.
  params = nn.meta.unbox(jax.jit(lambda r: plain.init(r, video, sample=False))(
      jax.random.PRNGKey(0))["params"])

  def loss_and_grads(model):
    loss = lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, video, sample=False)[0] - video))
    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = loss_and_grads(plain)
  remat = vae3d.VAE3D(**sizes, remat="full")
  remat_loss, remat_grads = loss_and_grads(remat)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads,
               grads)
  assert np.abs(grads["decoder"]["conv_out"]["kernel"]).max() > 0
  assert remat.flops((4, 8, 8)) == plain.flops((4, 8, 8))
