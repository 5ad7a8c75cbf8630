"""Pieces several stages share: restoring upstream params, writing results."""

import flax.linen as nn
import jax

from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib


def restore_params(path, subtree, init_fn, mesh):
  """Restores `state.<subtree>` of a checkpoint replicated over `mesh`; shapes come from
  `init_fn(rng)` (traced, nothing allocated). Returns (params, step)."""
  abstract = nn.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=mesh_lib.replicated(mesh)), abstract)
  return ckpt_lib.restore_subtree(path, subtree, target)


def open_stage(config, context, stage, make_task):
  """(data_dir, meta, model, trainer) of a stage that reads no upstream weights (mae, vae): the
  cohort, `make_task(config) -> (model, task)`, and the trainer around the task."""
  from cardionets_jax.data import datasets
  from cardionets_jax.train import loop
  data_dir, meta = datasets.resolve(config, context.workdir)
  model, task = make_task(config)
  trainer = loop.Trainer(config, context.workdir, stage, data_dir, task, mesh=context.mesh)
  return data_dir, meta, model, trainer


def write_results(workdir, stage, results):
  """results.json of a stage, on process 0 (the one writer every stage uses)."""
  if jax.process_index() == 0:
    from cardionets_jax.workdir import write_json
    write_json(workdir.results(stage), results)
    metrics_lib.log("Wrote %s", workdir.results(stage))


def default_mesh(mesh, config):
  return mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
