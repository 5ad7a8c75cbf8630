"""The VAE stage's release loss preset: the pix2pix discriminator, the outlier penalty, the
adaptive GAN weight and the discriminator's own optimizer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardionets_jax import losses
from cardionets_jax.models import discriminator
from cardionets_jax.models import vae3d
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import state as state_lib
from cardionets_jax_configs import vae as vae_configs

count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_release_discriminator_shapes_and_parameters_at_base():
  disc = discriminator.PatchDiscriminator3D(style="release")
  xs = jax.ShapeDtypeStruct((2, 50, 96, 96), jnp.float32)
  out, v = jax.eval_shape(lambda x: disc.init_with_output(jax.random.PRNGKey(0), x), xs)
  # Time: 50 -k4 s2-> 25 -k4 s2-> 12 -k3 s2-> 6, then two (1, 4, 4) stride-1 convs keep it;
  # space: 96 -> 48 -> 24 -> 12 -> 11 -> 10.
  assert out.shape == (2, 6, 10, 10)
  # conv0 1->64 (4^3, +bias); conv1 64->128 (4^3); conv2 128->256 (3x4x4); conv3 256->512
  # (1x4x4), each with a BatchNorm affine; conv_out 512->1 (1x4x4, +bias).
  by_hand = (64 * 64 + 64) + 64 * 64 * 128 + 48 * 128 * 256 + 16 * 256 * 512 + 2 * (
      128 + 256 + 512) + (16 * 512 + 1)
  assert count(v["params"]) == by_hand == 4_208_449
  assert nn.unbox(v["params"])["conv2"]["kernel"].shape == (3, 4, 4, 128, 256)


def test_batch_stat_norm_is_torch_batchnorm_in_training():
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 3, 5, 5, 6)).astype(np.float32)
  norm = discriminator.BatchStatNorm()
  params = norm.init(jax.random.PRNGKey(0), x)
  y = np.asarray(norm.apply(params, x))
  p = nn.unbox(params)["params"]
  mean, var = x.mean((0, 1, 2, 3)), x.var((0, 1, 2, 3))   # biased, as torch normalises
  want = (x - mean) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
  assert abs(float(np.mean(p["scale"])) - 1.0) < 0.02 and np.std(p["scale"]) > 0  # N(1, 0.02)
  # Batch statistics: one example's output depends on the others in its batch.
  assert not np.allclose(norm.apply(params, x[:1]), y[:1], atol=1e-3)


def test_outlier_penalty_matches_numpy():
  x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
  x[0, 1, 2, 2] = 9.0
  mean = x.mean((-2, -1), keepdims=True)
  std = x.std((-2, -1), ddof=1, keepdims=True)
  want = np.maximum(x - mean - 3.0 * std, 0).mean()
  assert want > 0
  np.testing.assert_allclose(losses.outlier_penalty(x, 3.0), want, rtol=1e-5)
  assert float(losses.outlier_penalty(np.zeros((1, 2, 4, 4)))) == 0.0


def _small_vae(cyclic_context=0):
  return vae3d.VAE3D(base_channels=4, channel_mult=(1, 2), num_res_blocks=1, decoder_res_blocks=1,
                     latent_channels=2, temporal_down=(False,), mid_attention_heads=0,
                     cyclic_context=cyclic_context)


def test_last_layer_gradient_equals_autodiff_through_the_whole_vae():
  # With cyclic context the last conv also runs on the context frames, which the loss ignores.
  vae = _small_vae(cyclic_context=2)
  video = jnp.asarray(np.random.default_rng(2).integers(0, 256, (2, 4, 8, 8)), jnp.uint8)
  target = vae3d.cmr_to_float(video)[:, ::-1]
  params = nn.unbox(jax.jit(vae.init)({"params": jax.random.PRNGKey(0),
                                       "sample": jax.random.PRNGKey(1)}, video)["params"])
  loss = lambda recon: jnp.mean(jnp.abs(recon - target)) + jnp.mean(recon ** 3)

  def whole(p):
    return loss(vae.apply({"params": p}, video, sample=False)[0])

  @jax.jit
  def both(params):
    (recon, _), sown = vae.apply({"params": params}, video, sample=False, mutable=["intermediates"])
    last_input = sown["intermediates"]["decoder"]["last_layer_input"][0]
    return (vae_stage.last_layer_grad(params, last_input, jax.grad(loss)(recon)),
            jax.grad(whole)(params)["decoder"]["conv_out"]["kernel"])

  got, want = both(params)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  # The adaptive weight: the ratio of the two gradients' norms, clamped, no gradient.
  w = losses.adaptive_weight(2 * want, want)
  assert float(w) == pytest.approx(2 * float(jnp.linalg.norm(want)) /
                                   (float(jnp.linalg.norm(want)) + 1e-4), rel=1e-5)
  assert float(losses.adaptive_weight(want, 0 * want)) == pytest.approx(1e4)


def test_release_preset_trains_the_discriminator_at_a_tenth_of_the_lr():
  config = vae_configs.get_config("variant=test")
  assert (config.vae.adv_weighting, config.vae.disc_style) == ("adaptive", "release")
  groups = vae_stage.optimizer_groups(config)
  assert groups == {"disc": dict(lr_scale=0.1, b1=0.5, b2=0.9)}
  assert vae_stage.optimizer_groups(vae_configs.get_config("variant=test,loss=ours")) is None
  config.train.update(warmup_steps=0, weight_decay=0.0)
  tx, _ = state_lib.make_optimizer(config.train, groups=groups)
  params = {"vae": jnp.zeros(3), "disc": jnp.zeros(3)}
  grads = {"vae": jnp.ones(3), "disc": jnp.ones(3)}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves each param by the LR (bias-corrected m / sqrt(v) = 1).
  np.testing.assert_allclose(updates["disc"], 0.1 * updates["vae"], rtol=1e-5)
  with pytest.raises(ValueError, match="loss must be one of"):
    vae_configs.get_config("loss=lpips")


def test_release_loss_step_reports_its_terms_and_the_weight_switches_on():
  config = vae_configs.get_config("variant=test")
  config.model.update(mid_attention_heads=0, decoder_res_blocks=1)   # less to compile
  vae, task = vae_stage.make_task(config)
  params = nn.unbox(task.init_params(jax.random.PRNGKey(0)))
  assert set(params) == {"vae", "disc"} and "norm1" in params["disc"]
  video = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2,) + task.spec["cmr"][0]),
                      jnp.uint8)
  run = jax.jit(lambda step: task.loss_fn(params, {}, {"cmr": video}, jax.random.PRNGKey(1), step))
  (before, m_before), (after, m_after) = run(0), run(config.vae.adv_start)
  assert {"outlier_penalty", "g_loss", "d_loss", "adv_weight"} <= set(m_after)
  assert float(m_after["adv_weight"]) > 0 and np.isfinite(float(after))
  # Before adv_start only the reconstruction terms count (the GAN terms are not computed); after
  # it the weighted GAN terms join.
  assert all(float(m_before[k]) == 0 for k in ("g_loss", "d_loss", "adv_weight"))
  np.testing.assert_allclose(before, m_before["loss"] + m_before["outlier_penalty"], rtol=1e-5)
  np.testing.assert_allclose(
      after - before, m_after["adv_weight"] * m_after["g_loss"] + m_after["d_loss"], rtol=1e-4)
