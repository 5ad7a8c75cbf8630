"""Fingerprints of saved arrays: what a checkpoint's restore is checked against.

A fingerprint is two 32-bit sums of an array's raw bits, each element multiplied by an odd,
position-dependent weight (modulo 2^32). A change to any single element changes both sums (odd
weights are invertible modulo 2^32), a reordering changes them too, and integer sums do not depend
on the order they are added in: numpy on the host and XLA on a sharded array give the same digits,
so a checkpoint saved on one topology is checked on another. It guards against damage (flipped or
overwritten bytes), not against tampering.
"""

import jax
import jax.numpy as jnp
import numpy as np

_WEIGHTS = ((2654435761, 1), (2246822519, 374761393))


def _path(keys):
  """'params/encoder/kernel': the key path as Orbax names it, whatever the container type."""
  parts = []
  for k in keys:
    for attr in ("name", "key", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


_CHUNK = 1 << 22  # elements hashed at a time: bounded temporaries for a base model's state


def _host(x):
  bits = np.ascontiguousarray(x).reshape(-1)
  bits = bits.astype(np.uint8) if bits.dtype == bool else bits.view(f"u{bits.dtype.itemsize}")
  sums = [np.uint32(0)] * len(_WEIGHTS)
  with np.errstate(over="ignore"):
    for start in range(0, bits.size, _CHUNK):
      chunk = bits[start:start + _CHUNK].astype(np.uint32)
      idx = np.arange(start, start + chunk.size, dtype=np.uint32)
      sums = [s + np.sum(chunk * ((idx * np.uint32(a) + np.uint32(b)) | np.uint32(1)),
                         dtype=np.uint32) for s, (a, b) in zip(sums, _WEIGHTS)]
  return tuple(int(s) for s in sums)


@jax.jit
def _device(x):
  flat = x.reshape(-1)
  if flat.dtype == jnp.bool_:
    bits = flat.astype(jnp.uint8)
  else:
    bits = jax.lax.bitcast_convert_type(flat, jnp.dtype(f"uint{flat.dtype.itemsize * 8}"))
  bits = bits.astype(jnp.uint32)
  idx = jnp.arange(bits.size, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(bits * ((idx * jnp.uint32(a) + jnp.uint32(b)) | jnp.uint32(1)),
                            dtype=jnp.uint32) for a, b in _WEIGHTS])


def of_array(x):
  """'xxxxxxxx-yyyyyyyy' for one array (numpy, or a jax Array however it is sharded)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    sums = [int(v) for v in np.asarray(jax.device_get(_device(x).addressable_data(0)))]
  else:
    sums = _host(np.asarray(x))
  return "-".join(f"{s:08x}" for s in sums)


def of_tree(tree):
  """{path: fingerprint} of every array leaf."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path(keys): of_array(x) for keys, x in leaves if hasattr(x, "dtype")}


def mismatches(saved, tree, prefix=""):
  """Paths under `prefix` whose fingerprint in `tree` differs from `saved` (a missing one too)."""
  now = of_tree(tree)
  prefix = f"{prefix}/" if prefix else ""
  return sorted(prefix + p for p, f in now.items() if saved.get(prefix + p) != f)
