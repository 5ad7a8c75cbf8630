"""Train state, optimizer, and sharded initialisation."""

from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cardionets_jax.train import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any              # trained
  opt_state: Any
  frozen: Any              # restored from an earlier stage; no gradient, no optimizer state
  rng: jax.Array           # base key; each step folds in its step number


def peak_lr(train_config):
  scale = train_config.batch_size / train_config.lr_scale_batch if train_config.lr_scale_batch else 1.0
  return train_config.lr * scale


def make_schedule(train_config):
  lr = peak_lr(train_config)
  warmup = min(train_config.warmup_steps, max(train_config.num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(train_config.num_steps, warmup + 1), end_value=lr * train_config.min_lr_ratio)


def scale_by_tree(scales_fn):
  """Multiplies each leaf's update by a fixed factor (layer-wise LR decay)."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    scales = scales_fn(updates)
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(init, update)


class EmaState(NamedTuple):
  ema: Any


def track_ema(decay):
  """Passes updates through and keeps an exponential moving average of the
  updated params. Last in the chain, so `params + updates` are the new params;
  living in the optimizer state, it is sharded and checkpointed with it."""
  def init(params):
    return EmaState(ema=jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("track_ema needs the params")
    ema = jax.tree.map(lambda e, p, u: decay * e + (1.0 - decay) * (p + u), state.ema, params, updates)
    return updates, EmaState(ema=ema)

  return optax.GradientTransformation(init, update)


def ema_params(state):
  """The EMA of the params if the optimizer keeps one, else the params."""
  found = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, EmaState))
           if isinstance(s, EmaState)]
  return found[0].ema if found else state.params


def make_optimizer(train_config, lr_scales=None, groups=None):
  """AdamW on a warm-up + cosine schedule; no decay on biases, norms, embeddings' 1-D params.

  `lr_scales(params)` may give a per-leaf factor on the step (layer-wise decay);
  `groups` {top-level params key: dict(lr_scale=, b1=, b2=)} gives those params an AdamW of
  their own (a GAN discriminator's); `train_config.ema_decay > 0` keeps an EMA of the params
  (`ema_params`).
  """
  schedule = make_schedule(train_config)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)

  def adamw(lr_scale=1.0, b1=train_config.b1, b2=train_config.b2):
    lr = schedule if lr_scale == 1.0 else (lambda step: lr_scale * schedule(step))
    return optax.adamw(lr, b1=b1, b2=b2, weight_decay=train_config.weight_decay, mask=decay_mask)

  parts = []
  if train_config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
  if groups:
    labels = lambda params: {k: k if k in groups else "default" for k in params}
    transforms = {k: adamw(**g) for k, g in groups.items()}
    parts.append(optax.multi_transform(dict(transforms, default=adamw()), labels))
  else:
    parts.append(adamw())
  if lr_scales is not None:
    parts.append(scale_by_tree(lr_scales))
  if train_config.get("ema_decay", 0.0):
    parts.append(track_ema(train_config.ema_decay))
  return optax.chain(*parts), schedule


def abstract_state(init_params: Callable, tx, seed, mesh, rules, init_frozen: Callable = None):
  """The boxed state's shapes (`jax.eval_shape`: nothing allocated), its shardings, and a
  function that builds it. Returns (abstract boxed state, shardings, build(rng))."""
  init_frozen = init_frozen or (lambda: {})

  def boxed_state(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = init_params(params_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      frozen=init_frozen(), rng=state_rng)

  key = jax.eval_shape(jax.random.PRNGKey, seed)  # shapes only: no device runs anything
  with mesh_lib.active(mesh, rules):
    abstract = jax.eval_shape(boxed_state, key)
    shardings = mesh_lib.tree_shardings(abstract, mesh, rules)
  return abstract, shardings, boxed_state


def param_count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_table(params, max_depth=2):
  """Lines of 'module  count' for each subtree down to max_depth, and the total."""
  params = nn.unbox(params)
  lines = []

  def walk(tree, prefix, depth):
    for key, sub in tree.items():
      name = f"{prefix}/{key}" if prefix else key
      if isinstance(sub, dict) and depth < max_depth:
        lines.append((name, param_count(sub)))
        walk(sub, name, depth + 1)
      else:
        lines.append((name, param_count(sub)))

  walk(dict(params), "", 1)
  width = max([len(n) for n, _ in lines] + [5])
  out = [f"{n:<{width}}  {c:>13,}" for n, c in lines]
  out.append(f"{'total':<{width}}  {param_count(params):>13,}")
  return out
