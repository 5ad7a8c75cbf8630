"""3-D conv primitives of the cine VAE and its discriminator: channels-last convs, GroupNorm, the
activation constraint, and the module base that carries the compute dtype and conv implementation.

Parameters carry logical axis names; a conv kernel is ("conv_t", "conv_h", "conv_w", "conv_in",
"mlp") and its bias ("mlp",), so the rule ("mlp" -> "tensor") shards output channels and the other
names, absent from the rules, are replicated. Convs whose output is a single channel use
"conv_out" there instead (a size-1 axis cannot be sharded). GroupNorm scale and bias are
("norm",). Activations are constrained to ("batch", "frames", "height", "width", "channels").

`conv_impl` picks how a 3-D conv is computed, never the parameters: "lax" (one 3-D
conv_general_dilated), "taps" (the time taps stacked on channels, one 2-D conv: ~5x faster on
XLA's CPU backend, forward and backward) or "auto" (taps on CPU, lax on GPU / TPU).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cardionets_jax.models import layers

Dtype = Any

ACTIVATION_AXES = ("batch", "frames", "height", "width", "channels")


def _triple(v):
  return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


CONV_IMPLS = ("auto", "lax", "taps")


def _conv_taps(x, kernel, strides, padding):
  """A 3-D conv as one 2-D conv: the kt time taps are stacked on the channel axis.

  The same sum of products as the 3-D conv (up to float summation order),
  but XLA's CPU backend runs 2-D convs several times faster than 3-D ones,
  forward and backward. Costs a kt-fold copy of the input.
  """
  kt, kh, kw, c_in, c_out = kernel.shape
  st, sh, sw = strides
  (p0, p1), ph, pw = padding
  b, t = x.shape[:2]
  xp = jnp.pad(x, ((0, 0), (p0, p1), (0, 0), (0, 0), (0, 0)))
  t_out = (t + p0 + p1 - kt) // st + 1
  taps = [jax.lax.slice_in_dim(xp, i, i + st * (t_out - 1) + 1, st, axis=1) for i in range(kt)]
  x2 = jnp.concatenate(taps, axis=-1) if kt > 1 else taps[0]
  x2 = x2.reshape((b * t_out,) + x2.shape[2:])
  k2 = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * c_in, c_out)
  y = jax.lax.conv_general_dilated(x2, k2, (sh, sw), (ph, pw),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape((b, t_out) + y.shape[1:])


def conv3d_apply(x, kernel, strides=(1, 1, 1), padding=None, impl="auto"):
  """(B, T, H, W, Cin) * (kt, kh, kw, Cin, Cout) -> (B, T', H', W', Cout).

  padding: ((lo, hi),) * 3, default kernel // 2 each side. impl: "lax" (one
  3-D conv_general_dilated), "taps" (`_conv_taps`) or "auto" (taps on the
  CPU backend, lax elsewhere, where cuDNN / the TPU run 3-D convs natively
  and the taps' 3x copy of the input would only cost memory). 1x1x1 convs
  are a plain channel contraction either way.
  """
  kernel_size = kernel.shape[:3]
  strides = tuple(strides)
  if padding is None:
    padding = tuple((k // 2, k // 2) for k in kernel_size)
  if impl not in CONV_IMPLS:
    raise ValueError(f"impl must be one of {CONV_IMPLS}, got {impl!r}")
  if kernel_size == (1, 1, 1) and strides == (1, 1, 1) and all(p == (0, 0) for p in padding):
    return jnp.einsum("bthwc,cd->bthwd", x, kernel[0, 0, 0])
  if impl == "auto":
    impl = "taps" if jax.default_backend() == "cpu" else "lax"
  if impl == "taps":
    return _conv_taps(x, kernel, strides, padding)
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


class Conv3D(nn.Module):
  """A 3-D conv (params "kernel", "bias"), padded by kernel // 2 on each side unless `padding`
  ((lo, hi),) * 3 says otherwise. Kernel axes ("conv_t", "conv_h", "conv_w", "conv_in",
  out_axis), bias (out_axis,).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  use_bias: bool = True
  out_axis: str = "mlp"
  impl: str = "auto"
  dtype: Dtype = jnp.float32
  padding: Any = None
  kernel_init: Any = None          # default: LeCun normal

  @nn.compact
  def __call__(self, x):
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    axes = ("conv_t", "conv_h", "conv_w", "conv_in", self.out_axis)
    kernel_init = nn.with_logical_partitioning(self.kernel_init or nn.initializers.lecun_normal(),
                                               axes)
    kernel = self.param("kernel", kernel_init, shape, jnp.float32)
    y = conv3d_apply(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding,
                     impl=self.impl)
    if self.use_bias:
      bias_init = nn.with_logical_partitioning(nn.initializers.zeros, (self.out_axis,))
      bias = self.param("bias", bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def conv3d(features, kernel=3, strides=1, *, dtype, name, out_axis="mlp", use_bias=True,
           impl="auto", padding=None, kernel_init=None):
  return Conv3D(features, _triple(kernel), _triple(strides), use_bias, out_axis, impl, dtype,
                padding, kernel_init, name=name)


def conv(module, features, kernel=3, strides=1, *, name, **kw):
  """`conv3d` with the calling module's dtype and conv_impl."""
  return conv3d(features, kernel, strides, dtype=module.dtype, impl=module.conv_impl, name=name,
                **kw)


def num_groups(channels, max_groups=32):
  """The largest group count <= max_groups that divides `channels`."""
  return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels, dtype, name):
  return nn.GroupNorm(
      num_groups=num_groups(channels), epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
      name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def constrain(x):
  return layers.constrain(x, *ACTIVATION_AXES)


class ConvBlock(nn.Module):
  """The compute dtype and conv implementation `conv` reads; subclasses add their own fields,
  keyword-only (after the defaults here)."""
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
