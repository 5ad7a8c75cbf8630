"""Pieces several stages share: passes over a split, upstream checkpoints."""

import logging

import flax.linen as nn
import jax
import numpy as np

from cardionets_jax.data import pipeline
from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib

EVAL_BATCH = 64


def map_split(fn, data_dir, split, fields, mesh, rules, *, keep=(), limit=None,
              batch_size=EVAL_BATCH):
  """Applies a jitted `fn(batch) -> array or tuple of arrays` over a split.

  Returns (outputs, kept): outputs concatenated over the split's examples
  (padding dropped), and the host-side `keep` fields for the same examples.
  """
  outs, kept = [], {k: [] for k in keep}
  with mesh_lib.active(mesh, rules):
    for batch, valid in pipeline.eval_batches(data_dir, split, tuple(fields) + tuple(keep),
                                              batch_size, limit):
      device = mesh_lib.replicated_batch({f: batch[f] for f in fields}, mesh, rules)
      out = jax.tree.map(lambda x: mesh_lib.to_host(x)[:valid], fn(device))
      outs.append(out)
      for k in keep:
        kept[k].append(batch[k][:valid])
  outputs = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
  return outputs, {k: np.concatenate(v) for k, v in kept.items()}


def eval_split(meta, name, data_config, need_cmr=True):
  """`name` if the dataset has examples there (with a cine, if `need_cmr`); else the stand-in the
  config names (`data.<name>_stand_in`), logged. Without one, a missing split is an error: "test"
  never silently becomes val."""
  def has(split):
    info = meta.splits.get(split)
    return bool(info and (info["num_with_cmr"] if need_cmr else info["num_examples"]))

  if has(name):
    return name
  stand_in = data_config.get(f"{name}_stand_in", "")
  what = f"{' with a cine' if need_cmr else ''}"
  if not stand_in:
    raise ValueError(
        f"The dataset has no {name!r} split{what} (splits: {meta.splits}); rebuild it with one, "
        f"or name a stand-in with --config.data.{name}_stand_in=val|train (it is recorded)")
  if not has(stand_in):
    raise ValueError(f"data.{name}_stand_in={stand_in!r}, but that split has no examples{what}")
  logging.warning("The dataset has no %r split%s: using %r in its place (data.%s_stand_in)", name,
                  what, stand_in, name)
  return stand_in


def restore_params(path, subtree, init_fn, mesh):
  """Restores `state.<subtree>` of a checkpoint replicated over `mesh`; shapes come from
  `init_fn(rng)` (traced, nothing allocated). Returns (params, step)."""
  abstract = nn.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=mesh_lib.replicated(mesh)), abstract)
  return ckpt_lib.restore_subtree(path, subtree, target)


def write_results(workdir, stage, results):
  """results.json of a stage, on process 0 (the one writer every stage uses)."""
  if jax.process_index() == 0:
    from cardionets_jax.workdir import write_json
    write_json(workdir.results(stage), results)
    metrics_lib.log("Wrote %s", workdir.results(stage))


def default_mesh(mesh, config):
  return mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
