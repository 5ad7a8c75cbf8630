"""Transformer building blocks shared by every model.

Each parameter carries logical axis names (`nn.with_logical_partitioning`);
activations are constrained by logical names too. The mesh is never known
here: the rules in the config map names to mesh axes.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

dense_init = nn.initializers.xavier_uniform()


def logical_dense(features, axes, *, dtype, name=None, use_bias=True, kernel_init=dense_init):
  """A Dense whose kernel and bias carry logical axis names (in, out)."""
  return nn.Dense(
      features, dtype=dtype, param_dtype=jnp.float32, use_bias=use_bias, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))


def layer_norm(dtype, name=None, eps=1e-6, axis="embed"):
  """LayerNorm over the last axis, whose logical name is `axis`. eps: 1e-6 is timm's ViT and our
  default, 1e-5 PyTorch's (ST-MEM)."""
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)))


def constrain(x, *axes):
  return nn.with_logical_constraint(x, axes)


class Attention(nn.Module):
  """Bidirectional multi-head self-attention.

  Projections are explicit (embed, heads, kv) kernels rather than DenseGeneral,
  whose flattened init cannot carry 3-D logical axis names.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0      # on the attention weights, in training (timm's attn_drop)

  def _kernel(self, name, shape, axes):
    return self.param(name, nn.with_logical_partitioning(dense_init, axes), shape, jnp.float32)

  def _bias(self, name, shape, axes):
    return self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape,
                      jnp.float32)

  @nn.compact
  def __call__(self, x, mask=None, train=False):
    """x: (B, S, width). mask: optional boolean key mask (B, S), True where a
    token may be attended to; masked keys get exactly zero attention weight.
    A query whose keys are all masked gets a finite (uniform) average."""
    width = x.shape[-1]
    head_dim = width // self.num_heads
    x = x.astype(self.dtype)
    qkv = []
    for n in ("query", "key", "value"):
      kernel = self._kernel(f"{n}_kernel", (width, self.num_heads, head_dim), ("embed", "heads", "kv"))
      bias = self._bias(f"{n}_bias", (self.num_heads, head_dim), ("heads", "kv"))
      y = jnp.einsum("bsd,dhk->bshk", x, kernel.astype(self.dtype)) + bias.astype(self.dtype)
      qkv.append(constrain(y, "batch", "seq", "heads", "kv"))
    if mask is not None:
      # dot_product_attention wants a mask broadcastable to (B, heads, T, S).
      mask = jnp.asarray(mask, bool)[:, None, None, :]
    if train and self.dropout > 0:
      q, k, v = (t.astype(jnp.float32) for t in qkv)   # softmax and its dropout in float32
      y = nn.dot_product_attention(q, k, v, mask=mask, dropout_rng=self.make_rng("dropout"),
                                   dropout_rate=self.dropout, deterministic=False)
      y = y.astype(self.dtype)
    else:
      y = jax.nn.dot_product_attention(*qkv, mask=mask)
    y = constrain(y, "batch", "seq", "heads", "kv")
    kernel = self._kernel("out_kernel", (self.num_heads, head_dim, width), ("heads", "kv", "embed"))
    bias = self._bias("out_bias", (width,), ("embed",))
    out = jnp.einsum("bshk,hkd->bsd", y, kernel.astype(self.dtype)) + bias.astype(self.dtype)
    return constrain(out, "batch", "seq", "embed")


class MlpBlock(nn.Module):
  """fc1 -> GELU -> fc2. `exact_gelu`: the erf GELU of PyTorch's nn.GELU (timm, ST-MEM); False:
  the tanh approximation."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  exact_gelu: bool = True
  dropout: float = 0.0      # after the GELU, in training (timm's drop1)

  @nn.compact
  def __call__(self, x, train=False):
    width = x.shape[-1]
    h = logical_dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    h = constrain(nn.gelu(h, approximate=not self.exact_gelu), "batch", "seq", "mlp")
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return logical_dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block. `dropout` drops the attention and MLP outputs; with
  `inner_dropout` also the attention weights and the MLP's hidden units (timm's Block)."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  norm_eps: float = 1e-6
  exact_gelu: bool = True
  inner_dropout: bool = False

  @nn.compact
  def __call__(self, x, train=False, mask=None):
    """mask: optional (B, S) boolean key mask, see `Attention`."""
    drop = nn.Dropout(self.dropout, deterministic=not train)
    norm = lambda name: layer_norm(self.dtype, name, self.norm_eps)
    inner = self.dropout if self.inner_dropout else 0.0
    x = x + drop(Attention(self.num_heads, self.dtype, inner, name="attn")(norm("ln1")(x), mask,
                                                                           train))
    x = x + drop(MlpBlock(self.mlp_dim, self.dtype, self.exact_gelu, inner, name="mlp")(
        norm("ln2")(x), train))
    return constrain(x, "batch", "seq", "embed")


class Transformer(nn.Module):
  """A stack of encoder blocks and a final norm (`ln_final`).

  `__call__(..., normalize=False)` skips the final norm (the release aligns to the CMR encoder's
  un-normed CLS token); `final_norm=False` builds none (a model that norms elsewhere).
  """
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  norm_eps: float = 1e-6
  exact_gelu: bool = True
  final_norm: bool = True
  inner_dropout: bool = False

  @nn.compact
  def __call__(self, x, train=False, mask=None, normalize=True):
    """mask: optional (B, S) boolean key mask, see `Attention`."""
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, self.dtype, self.norm_eps,
                       self.exact_gelu, self.inner_dropout, name=f"block{i}")(x, train, mask)
    if self.final_norm and normalize:
      return layer_norm(self.dtype, "ln_final", self.norm_eps)(x)
    return x


def learned_embedding(module, name, shape, axes):
  return module.param(name, nn.with_logical_partitioning(nn.initializers.normal(0.02), axes), shape,
                      jnp.float32)


def transformer_flops(tokens, width, depth, mlp_dim):
  """Forward matmul FLOPs of `Transformer` for one sequence of `tokens`."""
  dense = 2 * tokens * (4 * width * width + 2 * width * mlp_dim)
  attention = 2 * 2 * tokens * tokens * width
  return depth * (dense + attention)
