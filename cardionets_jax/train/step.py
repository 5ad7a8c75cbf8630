"""The one jitted, sharded train step every stage uses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax



def split_microbatches(x, num):
  """(B, ...) -> (num, B // num, ...), micro-batch j = examples j, j + num, ...

  Strided (not contiguous) so that every device holds a slice of every
  micro-batch when the batch axis is sharded.
  """
  b = x.shape[0]
  if b % num:
    raise ValueError(f"Batch {b} does not split into {num} micro-batches")
  return jnp.swapaxes(x.reshape((b // num, num) + x.shape[1:]), 0, 1)


def make_train_step(loss_fn, tx, schedule, grad_accum_steps=1):
  """Builds `step(state, batch) -> (state, metrics)`.

  `loss_fn(params, frozen, batch, rng, step) -> (loss, metrics)` where
  metrics are scalars and `step` is the (traced) step number, for terms that
  switch on during training. With grad_accum_steps > 1 the batch is cut into micro-batches whose
  gradients are averaged in a `lax.scan`, so memory holds one micro-batch.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def grads_and_metrics(params, frozen, batch, rng, step):
    (loss, metrics), grads = grad_fn(params, frozen, batch, rng, step)
    return grads, dict(metrics, loss=loss)

  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      grads, metrics = grads_and_metrics(state.params, state.frozen, batch, rng, state.step)
    else:
      micro = jax.tree.map(lambda x: split_microbatches(x, grad_accum_steps), batch)

      def body(acc, xs):
        mb, i = xs
        mb = jax.tree.map(constrain_batch, mb)
        out = grads_and_metrics(state.params, state.frozen, mb, jax.random.fold_in(rng, i),
                                state.step)
        return jax.tree.map(jnp.add, acc, out), None

      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(grads_and_metrics, state.params, state.frozen, first, rng,
                                          state.step))
      (grads, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum_steps)))
      grads, metrics = jax.tree.map(lambda x: x / grad_accum_steps, (grads, metrics))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def constrain_batch(x):
  return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))
