"""The one program builder: mesh, optimizer, abstract state and shardings, the jitted step.

The trainer, `compile`, `benchmarks/step.py` and the tests all build a stage's program here, so
what is timed or compiled ahead of time is exactly what trains (layer-wise LR scales included).
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import state as state_lib
from cardionets_jax.train import step as step_lib


@dataclasses.dataclass
class Program:
  mesh: Any
  rules: Any
  tx: Any
  schedule: Any
  abstract: Any          # the boxed state's shapes (nothing allocated)
  shardings: Any         # the state's NamedShardings
  batch_shardings: dict  # field -> NamedSharding of a global batch
  step: Callable         # jitted (state, batch) -> (state, metrics); the state is donated
  spec: dict             # field -> (shape of one example, dtype)
  _build: Callable

  @property
  def abstract_params(self):
    return self.abstract.params

  def abstract_state(self):
    """ShapeDtypeStructs of the unboxed state, carrying its shardings (for restores, AOT)."""
    return ckpt_lib.abstract_with_shardings(nn.unbox(self.abstract), self.shardings)

  def abstract_batch(self, batch_size):
    return {k: jax.ShapeDtypeStruct((batch_size,) + tuple(shape), dtype,
                                    sharding=self.batch_shardings[k])
            for k, (shape, dtype) in self.spec.items()}

  def restart_from(self, state, params):
    """`state` with `params` put in and a fresh optimizer state built on them (its EMA, where
    kept, starts at `params`), at step 0: training from weights another framework trained."""
    def restart(state, params):
      return state.replace(step=jnp.zeros_like(state.step), params=params,
                           opt_state=self.tx.init(params))
    with mesh_lib.active(self.mesh, self.rules):
      return jax.jit(restart, out_shardings=self.shardings, donate_argnums=(0,))(state, params)

  def init_state(self, seed):
    """The state built straight into its shardings: no host ever holds the whole model."""
    with mesh_lib.active(self.mesh, self.rules):
      return jax.jit(lambda r: nn.unbox(self._build(r)), out_shardings=self.shardings)(
          jax.random.PRNGKey(seed))


def build(config, task, mesh=None):
  """The program of `task` under `config` (train, mesh and seed sections) on `mesh` (default: every
  device, shaped by `config.mesh`)."""
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config.mesh)
  tx, schedule = state_lib.make_optimizer(config.train, task.lr_scales,
                                              task.optimizer_groups)
  abstract, shardings, build_fn = state_lib.abstract_state(task.init_params, tx, config.seed, mesh,
                                                           rules, task.init_frozen)
  batch_shardings = {k: mesh_lib.batch_sharding(mesh, rules, len(shape) + 1)
                     for k, (shape, _) in task.spec.items()}
  step_fn = step_lib.make_train_step(task.loss_fn, tx, schedule, config.train.grad_accum_steps)
  step = jax.jit(step_fn, in_shardings=(shardings, batch_shardings),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=(0,))
  return Program(mesh=mesh, rules=rules, tx=tx, schedule=schedule, abstract=abstract,
                 shardings=shardings, batch_shardings=batch_shardings, step=step,
                 spec=dict(task.spec), _build=build_fn)


def random_batch(spec, batch_size, seed=0):
  """A batch of `spec`'s shapes: uint8 fields uniform, float fields normal (benchmarks, AOT)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  out = {}
  for k, (shape, dtype) in spec.items():
    shape = (batch_size,) + tuple(shape)
    if jnp.issubdtype(dtype, jnp.integer):
      out[k] = rng.integers(0, 256 if dtype == jnp.uint8 else 2, shape).astype(dtype)
    else:
      out[k] = rng.normal(size=shape).astype(dtype)
  return out
