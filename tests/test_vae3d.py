"""Stage 3: the 3-D KL-VAE, its patch discriminator and losses.

Sizes at `base` are checked with jax.eval_shape (nothing allocated); the
numerics on a model small enough to compile in seconds on 2 CPU cores.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from cardionets_jax import losses
from cardionets_jax.models import conv3d
from cardionets_jax.models import discriminator
from cardionets_jax.models import vae3d
from cardionets_jax.train.state import param_count as count
from cardionets_jax_configs import common
from cardionets_jax_configs import vae as vae_configs

BASE = vae_configs.MODELS["base"]
TINY = vae_configs.MODELS["tiny"]
# Small enough to compile and run in a second or two: (4, 8, 8) -> (2, 4, 4, 4).
SMALL = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, decoder_res_blocks=2,
             latent_channels=4, temporal_down=(True,), mid_attention_heads=2, quant_convs=True,
             latent_norm="layer_norm")
SMALL_VIDEO = (4, 8, 8)


# --- parameter counts by hand --------------------------------------------------------------


def conv_params(k3, c_in, c_out):
  return k3 * c_in * c_out + c_out


def res_params(c_in, c_out):
  """GroupNorm(c_in), 3x3x3 c_in->c_out, GroupNorm(c_out), 3x3x3 c_out->c_out, 1x1x1 skip."""
  skip = conv_params(1, c_in, c_out) if c_in != c_out else 0
  return 2 * c_in + conv_params(27, c_in, c_out) + 2 * c_out + conv_params(27, c_out, c_out) + skip


def attention_params(c):
  """GroupNorm(c), 1x1x1 q, k, v and output projections."""
  return 2 * c + 4 * conv_params(1, c, c)


def vae_params(base_channels, channel_mult, num_res_blocks, decoder_res_blocks, latent_channels,
               temporal_down, mid_attention_heads, quant_convs, latent_norm, cyclic_context=0):
  """(encoder, decoder, quant convs) parameter counts of the layout in vae3d's docstring."""
  del latent_norm, cyclic_context
  chans = [base_channels * m for m in channel_mult]
  mid = lambda c: 2 * res_params(c, c) + (attention_params(c) if mid_attention_heads else 0)
  enc, c = conv_params(27, 1, base_channels), base_channels
  for level, out in enumerate(chans):
    for _ in range(num_res_blocks):
      enc, c = enc + res_params(c, out), out
    if level < len(chans) - 1:       # strided down-sampling: (3, 3, 3) if it halves time, else (1, 3, 3)
      enc += conv_params(27 if temporal_down[level] else 9, c, c)
  enc += mid(c) + 2 * c + conv_params(27, c, 2 * latent_channels)
  dec = conv_params(27, latent_channels, c) + mid(c)
  for level in reversed(range(len(chans))):
    for _ in range(decoder_res_blocks):
      dec, c = dec + res_params(c, chans[level]), chans[level]
    if level > 0:
      dec += conv_params(27, c, c)                      # up-sampling conv
  dec += 2 * c + conv_params(27, c, 1)
  quant = conv_params(1, 2 * latent_channels, 2 * latent_channels) + conv_params(
      1, latent_channels, latent_channels) if quant_convs else 0
  return enc, dec, quant


def vae_flops(video_shape, base_channels, channel_mult, num_res_blocks, decoder_res_blocks,
              latent_channels, temporal_down, mid_attention_heads, quant_convs, latent_norm,
              cyclic_context=0):
  """Forward FLOPs by hand: 2 * out voxels * kernel volume * c_in * c_out per conv, plus
  2 * 2 * N^2 * C per attention; the cyclic context frames are run like the cine's own."""
  del latent_norm
  size, flops = list(video_shape), []
  size[0] += 2 * cyclic_context
  voxels = lambda: int(np.prod(size))
  conv = lambda k, ci, co: flops.append(2 * voxels() * k * ci * co)

  def res(ci, co):
    conv(27, ci, co), conv(27, co, co)
    if ci != co:
      conv(1, ci, co)

  def mid(c):
    res(c, c)
    if mid_attention_heads:
      [conv(1, c, c) for _ in range(4)]
      flops.append(4 * voxels() ** 2 * c)
    res(c, c)

  chans = [base_channels * m for m in channel_mult]
  conv(27, 1, chans[0])
  c = chans[0]
  for level, out in enumerate(chans):
    for _ in range(num_res_blocks):
      res(c, out)
      c = out
    if level < len(chans) - 1:
      size = [size[0] // (2 if temporal_down[level] else 1), size[1] // 2, size[2] // 2]
      conv(27 if temporal_down[level] else 9, c, c)
  mid(c)
  conv(27, c, 2 * latent_channels)
  if quant_convs:
    conv(1, 2 * latent_channels, 2 * latent_channels), conv(1, latent_channels, latent_channels)
  conv(27, latent_channels, c)
  mid(c)
  for level in reversed(range(len(chans))):
    for _ in range(decoder_res_blocks):
      res(c, chans[level])
      c = chans[level]
    if level > 0:
      size = [size[0] * (2 if temporal_down[level - 1] else 1), size[1] * 2, size[2] * 2]
      conv(27, c, c)
  conv(27, c, 1)
  return sum(flops)


def init_shapes(model, video_shape, batch=2, dtype=jnp.uint8):
  x = jax.ShapeDtypeStruct((batch,) + tuple(video_shape), dtype)
  rngs = {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}
  return jax.eval_shape(lambda x: model.init_with_output(rngs, x), x)


def test_base_maps_50x96x96_to_25x12x12x16_and_back():
  model = vae3d.VAE3D(**BASE)
  (recon, posterior), variables = init_shapes(model, (50, 96, 96))
  assert posterior.mean.shape == posterior.logvar.shape == (2, 25, 12, 12, 16)
  assert posterior.mean.dtype == jnp.float32
  assert recon.shape == (2, 50, 96, 96) and recon.dtype == jnp.float32
  params = variables["params"]
  z = jax.ShapeDtypeStruct((2, 25, 12, 12, 16), jnp.float32)
  decoded = jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method=model.decode),
                           params, z)
  assert decoded.shape == (2, 50, 96, 96) and decoded.dtype == jnp.float32

  # By hand (the release's vae_kl_ft2_fs8_z16): encoder 98,859,936 = conv_in 3,584 + level 0
  # (2 x 885,504 + a (1, 3, 3) down 147,584) + level 1 (2,688,512 + 3,540,480 + down 590,080) +
  # level 2 (10,750,976 + 14,158,848 + a 3x3x3 down 7,078,400) + level 3 (2 x 14,158,848) +
  # middle (2 x 14,158,848 + attention 1,051,648) + norm 1,024 + conv 442,400; decoder
  # 178,872,833 = conv_in 221,696 + middle 29,369,344 + levels 3 and 2 (each 4 x 14,158,848 +
  # up 7,078,400) + level 1 (5,441,792 + 3 x 3,540,480 + up 1,769,728) + level 0 (1,361,024 +
  # 3 x 885,504) + norm 256 + conv 3,457; quant convs 1,056 + 272. The release's state_dict
  # holds the same 277,734,097 (without its discriminator).
  enc, dec, quant = vae_params(**BASE)
  assert (enc, dec, quant) == (98_859_936, 178_872_833, 1_328)
  assert count(params["encoder"]) == enc
  assert count(params["decoder"]) == dec
  assert count(params) == 277_734_097
  print(f"VAE3D base: {count(params):,} params (encoder {enc:,}, decoder {dec:,})")

  # Every parameter is float32 and carries logical names; conv kernels shard output channels.
  boxed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(b, nn.LogicallyPartitioned) for b in boxed)
  assert all(b.value.dtype == jnp.float32 for b in boxed)
  kernel = params["encoder"]["down0_block0"]["conv1"]["kernel"]
  assert kernel.names == ("conv_t", "conv_h", "conv_w", "conv_in", "mlp")
  assert kernel.value.shape == (3, 3, 3, 128, 128)
  rules = common.LOGICAL_AXIS_RULES
  assert nn.logical_to_mesh_axes(kernel.names, rules) == P(None, None, None, None, "tensor")
  out = params["decoder"]["conv_out"]["kernel"]
  assert out.value.shape == (3, 3, 3, 128, 1)
  assert nn.logical_to_mesh_axes(out.names, rules) == P(None, None, None, None, None)
  norm = params["encoder"]["mid_block1"]["norm1"]["scale"]
  assert nn.logical_to_mesh_axes(norm.names, rules) == P(None)

  flops = model.flops((50, 96, 96))
  assert flops == vae_flops((50, 96, 96), **BASE)
  assert 20.0e12 < flops < 20.1e12   # ~20.05 TFLOPs forward (encode + decode) per example


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = vae3d.VAE3D(**SMALL, dtype=jnp.bfloat16)
  (recon, posterior), variables = init_shapes(model, SMALL_VIDEO)
  assert recon.dtype == posterior.mean.dtype == posterior.logvar.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(variables["params"])))


@pytest.mark.parametrize("sizes,video,expected", [
    (TINY, (16, 32, 32), (16, 8, 8, 4)),
    (dict(channel_mult=(1, 2), temporal_down=(False,), latent_channels=3), (6, 8, 12),
     (6, 4, 6, 3)),
    (dict(channel_mult=(1, 1, 1, 1), temporal_down=(True, True, False), latent_channels=2),
     (8, 16, 8), (2, 2, 1, 2)),
    (dict(channel_mult=(1,), temporal_down=(), latent_channels=5), (5, 7, 9), (5, 7, 9, 5)),
])
def test_latent_shape_agrees_with_eval_shape(sizes, video, expected):
  kw = dict(sizes, base_channels=4, num_res_blocks=1)
  kw.setdefault("mid_attention_heads", 1)
  model = vae3d.VAE3D(**kw)
  shape = vae3d.latent_shape(video, kw["channel_mult"], kw["temporal_down"], kw["latent_channels"])
  assert shape == expected == model.latent_shape(video)
  (recon, posterior), _ = init_shapes(model, video, batch=1)
  assert posterior.mean.shape == (1,) + expected
  assert recon.shape == (1,) + tuple(video)


def test_sizes_that_do_not_divide_raise():
  mult, td = BASE["channel_mult"], BASE["temporal_down"]
  assert vae3d.latent_shape((50, 96, 96), mult, td, 16) == (25, 12, 12, 16)
  for bad in ((50, 100, 96), (50, 96, 90), (25, 96, 96)):
    with pytest.raises(ValueError, match="divisible"):
      vae3d.latent_shape(bad, mult, td, 16)
  model = vae3d.VAE3D(**BASE)
  with pytest.raises(ValueError, match="divisible"):
    init_shapes(model, (50, 100, 96), batch=1)
  with pytest.raises(ValueError, match="temporal_down"):
    vae3d.latent_shape((50, 96, 96), mult, (True, False), 16)
  with pytest.raises(ValueError, match="temporal_down"):
    init_shapes(vae3d.VAE3D(base_channels=4, channel_mult=(1, 2), temporal_down=()), (4, 8, 8))


def test_vae_flops_counts_every_conv_and_attention_by_hand():
  for sizes, video in ((SMALL, SMALL_VIDEO), (TINY, (16, 32, 32)), (BASE, (50, 96, 96)),
                       (dict(SMALL, mid_attention_heads=0, quant_convs=False), SMALL_VIDEO),
                       (dict(SMALL, cyclic_context=2), SMALL_VIDEO)):
    assert vae3d.VAE3D(**sizes).flops(video) == vae_flops(video, **sizes)


@pytest.mark.parametrize("strides,kernel", [((1, 1, 1), 3), ((2, 2, 2), 3), ((1, 2, 2), 3),
                                            ((2, 1, 1), 3), ((1, 1, 1), 1)])
def test_conv_taps_equals_lax_3d_conv(strides, kernel):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 8, 10, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(kernel,) * 3 + (3, 5)), jnp.float32)
  want = conv3d.conv3d_apply(x, k, strides, impl="lax")
  cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)

  def grads(impl):
    return jax.grad(lambda x, k: jnp.sum(conv3d.conv3d_apply(x, k, strides, impl=impl) * cotangent),
                    argnums=(0, 1))(x, k)

  want_grads = grads("lax")
  for impl in ("taps", "auto"):
    got = conv3d.conv3d_apply(x, k, strides, impl=impl)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for g, w in zip(grads(impl), want_grads):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)
  if kernel == 3 and strides != (1, 1, 1):
    assert want.shape[1:4] == tuple(-(-n // s) for n, s in zip(x.shape[1:4], strides))
  with pytest.raises(ValueError, match="impl"):
    conv3d.conv3d_apply(x, k, strides, impl="fft")


# --- numerics on a small model -------------------------------------------------------------


def moving_disc_batch(batch, shape, seed=0):
  """Bright discs on a dark field, moving and pulsing through the frames: uint8 (B, F, H, W)."""
  f, h, w = shape
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  out = np.zeros((batch, f, h, w), np.float32)
  for b in range(batch):
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.35) * h
    for t in range(f):
      rt = r * (1 + 0.2 * np.sin(2 * np.pi * t / f))
      out[b, t] = 40 + 180 * ((yy - cy - t * 0.5) ** 2 + (xx - cx) ** 2 < rt ** 2)
  return out.astype(np.uint8)


def rbg_key(seed):
  # Parameter init compiles one threefry per parameter tensor: ~20 s for this small model on
  # 2 busy CPU cores, against ~3 s with the RngBitGenerator-backed "rbg" keys.
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def small():
  """The small model, its params, a fixed batch, and jitted forward / train-step functions.

  Convs run as lax 3-D convs here: at these shapes they compile in about half the time of
  the CPU default ("taps"), which test_conv_taps_equals_lax_3d_conv checks against lax.
  """
  model = vae3d.VAE3D(**SMALL, conv_impl="lax")
  video = jnp.asarray(moving_disc_batch(4, SMALL_VIDEO))
  target = vae3d.cmr_to_float(video)
  params = jax.jit(model.init)({"params": rbg_key(0), "sample": rbg_key(1)}, video)["params"]
  tx = optax.adam(3e-3)

  @jax.jit
  def forward(params, rng):
    mode, post = model.apply({"params": params}, video, sample=False)   # no "sample" rng needed
    decoded = model.apply({"params": params}, vae3d.latent_layer_norm(post.mean), method=model.decode)
    sampled, _ = model.apply({"params": params}, video, rngs={"sample": rng})
    return mode, decoded, sampled, post

  @jax.jit
  def step(params, opt_state, rng):
    def loss_fn(p):
      recon, post = model.apply({"params": p}, video, rngs={"sample": rng})
      return losses.vae_loss(recon, target, post.mean, post.logvar, 1e-6)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics, grads

  return dict(model=model, video=video, target=target, params=params, forward=forward,
              step=step, opt_state=tx.init(params))


def test_forward_backward_finite_and_sample_false_is_deterministic(small):
  video = small["video"]
  mode, decoded, s1, post = small["forward"](small["params"], jax.random.PRNGKey(1))
  again, _, s2, _ = small["forward"](small["params"], jax.random.PRNGKey(2))
  np.testing.assert_array_equal(mode, again)                        # whatever the rng
  assert mode.shape == video.shape and mode.dtype == jnp.float32 and np.isfinite(mode).all()
  np.testing.assert_allclose(decoded, mode, rtol=1e-5, atol=1e-5)   # sample=False decodes the normed mode
  assert np.abs(np.asarray(s1) - np.asarray(s2)).max() > 1e-4     # sample=True draws
  assert post.mean.shape == (4, 2, 4, 4, 4)

  _, _, metrics, grads = small["step"](small["params"], small["opt_state"], jax.random.PRNGKey(0))
  leaves = jax.tree.leaves(nn.unbox(grads))
  assert np.isfinite(float(metrics["loss"])) and all(np.isfinite(g).all() for g in leaves)
  assert all(float(jnp.abs(g).max()) > 0 for g in leaves)   # every parameter gets a gradient


def test_cyclic_context_gives_the_first_frame_the_cycles_last_as_neighbours():
  sizes = dict(base_channels=4, channel_mult=(1, 2), num_res_blocks=1, decoder_res_blocks=1,
               latent_channels=2, temporal_down=(True,), mid_attention_heads=0)
  video = jax.random.uniform(jax.random.PRNGKey(0), (1, 12, 8, 8), minval=-1.0, maxval=1.0)
  with pytest.raises(ValueError, match="multiple of the temporal down-sampling factor 2"):
    vae3d.VAE3D(**sizes, cyclic_context=3).init(jax.random.PRNGKey(0), video, sample=False)
  zeros, cyclic = vae3d.VAE3D(**sizes), vae3d.VAE3D(**sizes, cyclic_context=2)
  init = jax.jit(lambda r: cyclic.init(r, video, sample=False)["params"])   # one program, not op by op
  params = {"params": init(jax.random.PRNGKey(0))}
  mean = jax.jit(lambda m, v: m.apply(params, v, method=m.encode).mean, static_argnums=0)
  decode = jax.jit(lambda m, z: m.apply(params, z, method=m.decode), static_argnums=0)
  # The same weights; the cine's frames 10, 11 before frame 0 and 0, 1 after frame 11, in place
  # of zeros, cut back out (1 latent frame each side at time halved).
  z = mean(cyclic, video)
  assert z.shape == (1, 6, 4, 4, 2) and decode(cyclic, z).shape == video.shape
  wrapped = video[:, np.arange(-2, 14) % 12]
  np.testing.assert_allclose(z, mean(zeros, wrapped)[:, 1:-1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(decode(cyclic, z), decode(zeros, z[:, np.arange(-1, 7) % 6])[:, 2:-2],
                             rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(z - mean(zeros, video)).max()) > 1e-3
  # A whole cine is the training window of itself wrapped by its own frames.
  recon, post = jax.jit(lambda v: cyclic.apply(params, v, False, method=cyclic.window))(wrapped)
  np.testing.assert_allclose(post.mean, z, rtol=1e-5, atol=1e-6)
  whole = jax.jit(lambda v: cyclic.apply(params, v, sample=False)[0])(video)
  np.testing.assert_allclose(recon, whole, rtol=1e-5, atol=1e-6)
  assert recon.shape == video.shape


def kl_reference(mean, logvar):
  mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
  per = mean ** 2 + np.exp(logvar) - 1.0 - logvar
  return 0.5 * per.reshape(per.shape[0], -1).sum(-1)


def test_kl_and_vae_loss_match_float64(small):
  recon, _, _, post = small["forward"](small["params"], jax.random.PRNGKey(1))
  target = np.asarray(small["target"], np.float64)
  # KL of the model's own posterior, and of a random wide one.
  rng = np.random.default_rng(0)
  cases = [(post.mean, post.logvar),
           (rng.normal(size=(3, 2, 4, 4, 4)) * 2, rng.uniform(-6, 4, size=(3, 2, 4, 4, 4)))]
  for mean, logvar in cases:
    np.testing.assert_allclose(losses.kl_divergence(mean, logvar), kl_reference(mean, logvar),
                               rtol=1e-5)
  np.testing.assert_allclose(post.kl(), kl_reference(post.mean, post.logvar), rtol=1e-5)
  abs_err = np.abs(np.asarray(recon, np.float64) - target)
  kl = kl_reference(post.mean, post.logvar).mean()
  for w in (0.0, 1e-6, 0.5):
    loss, metrics = losses.vae_loss(recon, target, post.mean, post.logvar, w)
    np.testing.assert_allclose(metrics["l1"], abs_err.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(loss, abs_err.mean() + w * kl, rtol=1e-5)
    loss_sum, _ = losses.vae_loss(recon, target, post.mean, post.logvar, w, recon_reduction="sum")
    np.testing.assert_allclose(loss_sum, abs_err.sum() / abs_err.shape[0] + w * kl, rtol=1e-5)
  with pytest.raises(ValueError):
    losses.vae_loss(recon, target, post.mean, post.logvar, 1.0, recon_reduction="max")


def test_latent_layer_norm_normalises_each_example_over_all_its_axes():
  z = np.random.default_rng(0).normal(3.0, 2.0, (3, 2, 4, 4, 5)).astype(np.float32)
  z[1] *= 10.0
  got = np.asarray(vae3d.latent_layer_norm(jnp.asarray(z)))
  flat = z.reshape(3, -1).astype(np.float64)
  want = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(got.reshape(3, -1), want, rtol=1e-5, atol=1e-5)


def test_posterior_clips_logvar_and_splits_channels():
  logvar = jnp.broadcast_to(jnp.asarray([100.0, -100.0, 1.0]), (1, 2, 2, 2, 3))
  post = vae3d.DiagonalGaussian.from_moments(
      jnp.concatenate([jnp.full((1, 2, 2, 2, 3), 0.5), logvar], axis=-1))
  np.testing.assert_array_equal(post.mean, 0.5)
  np.testing.assert_array_equal(post.logvar[..., 0], 20.0)
  np.testing.assert_array_equal(post.logvar[..., 1], -30.0)
  np.testing.assert_array_equal(post.logvar[..., 2], 1.0)
  np.testing.assert_array_equal(post.mode(), post.mean)
  # Samples have the posterior's moments.
  post = vae3d.DiagonalGaussian(jnp.full((20000, 2), 1.5), jnp.log(jnp.full((20000, 2), 0.25)))
  z = np.asarray(post.sample(jax.random.PRNGKey(0)))
  np.testing.assert_allclose(z.mean(), 1.5, atol=0.01)
  np.testing.assert_allclose(z.std(), 0.5, atol=0.01)


def test_adam_overfits_one_batch(small):
  params, opt_state = small["params"], small["opt_state"]
  l1 = []
  for i in range(30):
    params, opt_state, metrics, _ = small["step"](params, opt_state, jax.random.PRNGKey(i))
    l1.append(float(metrics["l1"]))
  print("L1 over 30 Adam steps:", [round(v, 3) for v in l1[::5]], round(l1[-1], 3))
  assert np.isfinite(l1).all()
  assert l1[-1] < 0.4 * l1[0]


# --- discriminator and adversarial losses --------------------------------------------------


def _ceil_halved(shape, times):
  """The size after `times` stride-2, padded 3x3x3 convs: each maps n to ceil(n / 2)."""
  for _ in range(times):
    shape = tuple(-(-s // 2) for s in shape)
  return shape


def test_discriminator_patch_logits():
  disc = discriminator.PatchDiscriminator3D(channels=8, num_layers=3)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(2, 10, 16, 16)), jnp.float32)
  variables = jax.jit(disc.init)(rbg_key(0), x)
  u8 = jnp.asarray(np.random.default_rng(1).integers(0, 256, (1, 10, 16, 16)), jnp.uint8)

  @jax.jit
  def score(variables):
    return (disc.apply(variables, x), disc.apply(variables, x[:1]), disc.apply(variables, u8),
            disc.apply(variables, vae3d.cmr_to_float(u8)))

  logits, one, from_u8, from_float = score(variables)
  # Three stride-2 convs: 10 -> 5 -> 3 -> 2 frames, 16 -> 2 pixels.
  assert logits.shape == (2, 2, 2, 2) == (2,) + _ceil_halved((10, 16, 16), 3)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
  # Each example is scored on its own (GroupNorm, no batch statistics).
  np.testing.assert_allclose(one, logits[:1], rtol=1e-5, atol=1e-5)
  # uint8 cines are scaled to [-1, 1] first.
  np.testing.assert_allclose(from_u8, from_float, rtol=1e-6)
  # Base-size shapes: (50, 96, 96) -> (7, 12, 12) logits; 64 -> 512 channels.
  base = discriminator.PatchDiscriminator3D()
  xs = jax.ShapeDtypeStruct((2, 50, 96, 96), jnp.float32)
  out, v = jax.eval_shape(lambda x: base.init_with_output(jax.random.PRNGKey(0), x), xs)
  assert out.shape == (2, 7, 12, 12) == (2,) + _ceil_halved((50, 96, 96), 3)
  p = v["params"]
  # conv0 1->64 (+bias), conv1 64->128, conv2 128->256, conv3 256->512 (no bias, GroupNorm),
  # conv_out 512->1 (+bias).
  by_hand = (27 * 64 + 64) + 27 * (64 * 128 + 128 * 256 + 256 * 512) + 2 * (128 + 256 + 512) + (
      27 * 512 + 1)
  assert count(p) == by_hand == 4_662_273


def test_hinge_and_generator_losses_match_numpy():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(3, 2, 4, 4)).astype(np.float32) * 2
  fake = rng.normal(size=(3, 2, 4, 4)).astype(np.float32) * 2
  r, f = real.astype(np.float64), fake.astype(np.float64)
  want = 0.5 * (np.maximum(0, 1 - r).mean() + np.maximum(0, 1 + f).mean())
  np.testing.assert_allclose(losses.hinge_d_loss(real, fake), want, rtol=1e-6)
  np.testing.assert_allclose(losses.generator_adv_loss(fake), -f.mean(), rtol=1e-5, atol=1e-7)
  # A perfect discriminator (real >= 1, fake <= -1) has zero hinge loss.
  assert float(losses.hinge_d_loss(np.full(4, 2.0), np.full(4, -3.0))) == 0.0
  assert losses.hinge_d_loss(real.astype(jnp.bfloat16), fake).dtype == jnp.float32
