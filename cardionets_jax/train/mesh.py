"""Device mesh, logical-axis rules and the shardings derived from them."""

import contextlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")


def make_mesh(mesh_config, devices=None):
  """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 to take the rest."""
  n = len(devices) if devices is not None else jax.device_count()
  sizes = [int(mesh_config.shape[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} does not divide {n} devices")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {np.prod(sizes)} devices, have {n}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def data_mesh(devices):
  """A data-parallel mesh over `devices` (inference: screening, tests)."""
  return jax.make_mesh((len(devices), 1, 1), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def axis_rules(mesh_config):
  """Config rules (lists after a JSON round trip) -> tuples flax accepts."""
  def norm(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v
  return tuple((name, norm(target)) for name, target in mesh_config.rules)


@contextlib.contextmanager
def active(mesh, rules):
  """The mesh and rules that logical constraints inside modules resolve to."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def tree_shardings(abstract_tree, mesh, rules):
  """NamedShardings for a tree whose leaves may carry logical-axis boxes."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh, rules, ndim):
  """Leading (batch) axis split over the data-parallel axes, the rest replicated."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh):
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh, rules):
  """Process-local numpy batch -> global jax arrays sharded over the batch axis."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, np.ndim(v)), v)
          for k, v in local_batch.items()}


def replicated_batch(batch, mesh, rules):
  """A batch every process holds in full (evaluation) -> global sharded arrays."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_callback(v.shape, batch_sharding(mesh, rules, v.ndim),
                                          lambda idx, v=v: v[idx])
  return out


def to_host(x):
  """A (possibly multi-host) global array -> numpy on every process."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
