"""Transformer building blocks shared by every model.

Each parameter carries logical axis names (`nn.with_logical_partitioning`);
activations are constrained by logical names too. The mesh is never known
here: the rules in the config map names to mesh axes.
"""

import dataclasses
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


@jax.custom_vjp
def softmax(logits):
  """Softmax over the last axis whose backward reuses the saved probabilities: p * (g - sum(g p)).
  Measured on XLA's CPU backend at the ECG ViT-B's shapes (8 x 384 tokens, 12 heads), the attention
  with it takes 0.68x the time of `jax.nn.dot_product_attention` forward + backward and 0.8x the
  temporaries."""
  e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  return e / jnp.sum(e, axis=-1, keepdims=True)


def _softmax_fwd(logits):
  p = softmax(logits)
  return p, p


def _softmax_bwd(p, g):
  return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def dot_product_attention(q, k, v, mask=None, dropout_rate=0.0, dropout_rng=None):
  """q, k, v: (B, S, heads, head_dim); mask: optional (B, S) key mask. Logits and softmax in
  float32 whatever the inputs' dtype. A masked key's logit is set to -1e30, so its weight is
  exactly 0, and a query whose keys are all masked gets the uniform average. `dropout_rate` > 0
  drops attention weights (needs `dropout_rng`)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    # `where`, not an additive bias: a masked logit then gets no gradient, even in a row whose
    # keys are all masked (whose output is the uniform average, constant in the logits).
    logits = jnp.where(mask[:, None, None, :], logits, -1e30)
  weights = softmax(logits)
  if dropout_rate > 0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


class Attention(nn.Module):
  """Bidirectional multi-head self-attention.

  Projections are explicit (embed, heads, kv) kernels rather than DenseGeneral,
  whose flattened init cannot carry 3-D logical axis names. (Concatenating the three kernels into
  one matmul measured slower on XLA's CPU backend: the concatenate and split cost more than the
  bigger matmul saves.)
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
    q, k, v = qkv
    drop = self.dropout if train else 0.0
    y = dot_product_attention(q, k, v, None if mask is None else jnp.asarray(mask, bool), drop,
                              self.make_rng("dropout") if drop > 0 else None)
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


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,          # recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def rematted(module_cls, remat, **kw):
  """`module_cls`, or it under `nn.remat` with REMAT_POLICIES[remat] (`kw`: nn.remat's)."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {remat!r}")
  return module_cls if remat == "none" else nn.remat(module_cls, policy=REMAT_POLICIES[remat], **kw)


@dataclasses.dataclass(frozen=True)
class Stack:
  """How a `Transformer` runs its blocks: `scan` as one `nn.scan` (MaxText's `scan_layers`),
  `remat` one of REMAT_POLICIES. From a model config: `Stack.of(config.model)`."""
  scan: bool = False
  remat: str = "none"

  @classmethod
  def of(cls, model_config):
    """`model.scan_layers` and `model.remat`, absent in configs saved before they existed."""
    return cls(bool(model_config.get("scan_layers", False)), model_config.get("remat", "none"))


class _ScannedBlock(nn.Module):
  """One `EncoderBlock` in `nn.scan`'s (carry, output) form; `train` is static."""
  block: dict
  train: bool

  @nn.compact
  def __call__(self, x, mask):
    return EncoderBlock(**self.block, name="block")(x, self.train, mask), None


class Transformer(nn.Module):
  """A stack of encoder blocks and a final norm (`ln_final`).

  `__call__(..., normalize=False)` skips the final norm (the release aligns to the CMR encoder's
  un-normed CLS token); `final_norm=False` builds none (a model that norms elsewhere).

  `stack.scan` runs the blocks as one `nn.scan` (MaxText's `scan_layers`): XLA compiles one block
  instead of `depth`, and the parameters are stacked along a leading "layers" axis under
  `blocks/block` (`stack_blocks` converts an unrolled tree). `stack.remat` (REMAT_POLICIES) recomputes
  each block's activations in the backward pass instead of storing them, for batches that do not
  fit. Both change memory and compile time, never the numbers (tests/test_layers.py).
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
  stack: Stack = Stack()

  @nn.compact
  def __call__(self, x, train=False, mask=None, normalize=True):
    """mask: optional (B, S) boolean key mask, see `Attention`."""
    scan, remat = self.stack.scan, self.stack.remat
    block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
                 dtype=self.dtype, norm_eps=self.norm_eps, exact_gelu=self.exact_gelu,
                 inner_dropout=self.inner_dropout)
    if scan:
      blocks = nn.scan(rematted(_ScannedBlock, remat), variable_axes={"params": 0},
                       split_rngs={"params": True, "dropout": True},
                       in_axes=nn.broadcast, length=self.depth,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = blocks(block, train, name="blocks")(x, mask)
    else:
      cls = rematted(EncoderBlock, remat, static_argnums=(2,))
      for i in range(self.depth):
        x = cls(**block, name=f"block{i}")(x, train, mask)
    if self.final_norm and normalize:
      return layer_norm(self.dtype, "ln_final", self.norm_eps)(x)
    return x


def stack_blocks(params, depth):
  """An unrolled `Transformer`'s params (block0 .. block{depth-1}) -> the scanned layout."""
  params = dict(params)
  blocks = [params.pop(f"block{i}") for i in range(depth)]
  params["blocks"] = {"block": jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)}
  return params


def learned_embedding(module, name, shape, axes):
  return module.param(name, nn.with_logical_partitioning(nn.initializers.normal(0.02), axes), shape,
                      jnp.float32)


def transformer_flops(tokens, width, depth, mlp_dim):
  """Forward matmul FLOPs of `Transformer` for one sequence of `tokens`."""
  dense = 2 * tokens * (4 * width * width + 2 * width * mlp_dim)
  attention = 2 * 2 * tokens * tokens * width
  return depth * (dense + attention)
