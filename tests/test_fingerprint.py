"""Array fingerprints: the same digits on the host and on a sharded array; any change shows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from cardionets_jax.train import fingerprint


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, jnp.bfloat16, np.bool_])
def test_host_and_sharded_device_fingerprints_agree(dtype):
  x = np.random.default_rng(0).normal(size=(16, 24)).astype(dtype)
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(8), ("data",))
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  host = fingerprint.of_array(x)
  assert fingerprint._device(sharded).tolist() == [int(h, 16) for h in host.split("-")]
  assert fingerprint.of_array(sharded) == host


def test_every_single_change_and_a_swap_change_the_fingerprint():
  x = np.random.default_rng(1).normal(size=(64,)).astype(np.float32)
  base = fingerprint.of_array(x)
  for i in range(len(x)):
    y = x.copy()
    y.view(np.uint32)[i] ^= 1 << (i % 32)           # one flipped bit, each position
    assert fingerprint.of_array(y) != base, i
  assert fingerprint.of_array(x[::-1].copy()) != base
  tree = {"params": {"w": x, "b": np.zeros(3, np.float32)}, "step": np.int32(4)}
  saved = fingerprint.of_tree(tree)
  assert set(saved) == {"params/w", "params/b", "step"}
  tree["params"]["w"] = x * 2
  assert fingerprint.mismatches(saved, tree) == ["params/w"]
  assert fingerprint.mismatches(saved, tree["params"], "params") == ["params/w"]
