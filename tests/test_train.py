"""The trainer core: sharded step == single-device step, accumulation, dtypes, NaN guard."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cardionets_jax.data import cohort
from cardionets_jax.stages import mae
from cardionets_jax.train import loop
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import state as state_lib
from cardionets_jax.train import step as step_lib
from cardionets_jax.workdir import Workdir
from tests import conftest
from tests.conftest import stage_test_config


def tiny_mae_config(**train):
  return stage_test_config("mae", **train)


def one_step(config, devices, batch):
  _, state, metrics = conftest.one_step(config, mae.make_task(config)[1], devices, batch)
  return state, metrics


def random_cines(config, n, seed=0):
  shape = (n, config.data.cmr_frames, config.data.cmr_size, config.data.cmr_size)
  return {"cmr": np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)}


def test_sharded_step_equals_single_device_step():
  assert jax.device_count() == 8
  config = tiny_mae_config()
  batch = random_cines(config, 8)
  single_state, single = one_step(config, jax.devices()[:1], batch)
  config.mesh.shape.update(data=2, fsdp=2, tensor=2)
  sharded_state, sharded = one_step(config, jax.devices(), batch)

  # The 8-device run really is sharded over fsdp and tensor.
  kernel = sharded_state.params["encoder"]["transformer"]["block0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.P("fsdp", "tensor")
  assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (16, 32)

  np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-6)
  np.testing.assert_allclose(sharded["grad_norm"], single["grad_norm"], rtol=1e-5)
  flat_single = jax.tree_util.tree_leaves_with_path(jax.device_get(single_state.params))
  flat_sharded = jax.tree.leaves(jax.device_get(sharded_state.params))
  for (path, a), b in zip(flat_single, flat_sharded):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_gradient_accumulation_equals_one_big_batch():
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(16, 5)).astype(np.float32),
           "y": rng.normal(size=(16,)).astype(np.float32)}

  def loss_fn(params, frozen, b, rng, step):
    del frozen, rng, step
    return jnp.mean((b["x"] @ params["w"] + params["b"] - b["y"]) ** 2), {}

  tx = optax.sgd(0.1)
  schedule = lambda step: 0.1
  params = {"w": jnp.ones((5,)), "b": jnp.zeros(())}
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), frozen={}, rng=jax.random.PRNGKey(0))
  outs = [jax.jit(step_lib.make_train_step(loss_fn, tx, schedule, accum))(state, batch)
          for accum in (1, 4)]
  np.testing.assert_allclose(outs[1][1]["loss"], outs[0][1]["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(outs[0][0].params), jax.tree.leaves(outs[1][0].params)):
    np.testing.assert_allclose(b, a, rtol=1e-6)


def test_microbatches_are_strided():
  x = np.arange(8)
  np.testing.assert_array_equal(step_lib.split_microbatches(x, 2), [[0, 2, 4, 6], [1, 3, 5, 7]])


def test_bfloat16_compute_keeps_float32_params():
  config = tiny_mae_config()
  batch = random_cines(config, 8)
  _, f32 = one_step(config, jax.devices()[:1], batch)
  config.train.compute_dtype = "bfloat16"
  state, bf16 = one_step(config, jax.devices()[:1], batch)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  np.testing.assert_allclose(bf16["loss"], f32["loss"], rtol=3e-2)


def test_non_finite_loss_stops_with_step_subjects_and_checkpoint(tmp_path):
  config = tiny_mae_config(lr=1e30, grad_clip_norm=0.0, checkpoint_every=1, num_steps=20,
                           log_every=100)
  data_dir = cohort.build_synthetic(str(tmp_path / "data"), config.data, seed=0, workers=1)
  _, task = mae.make_task(config)
  trainer = loop.Trainer(config, Workdir(tmp_path), "mae", data_dir, task,
                         mesh=conftest.one_device_mesh(config))
  with pytest.raises(FloatingPointError) as err:
    trainer.fit()
  message = str(err.value)
  bad_step = int(message.split(" at step ")[1].split()[0])
  assert bad_step >= 2
  assert "SYN-" in message
  assert message.endswith(os.path.join(str(tmp_path), "mae", "checkpoints", str(bad_step - 1)))


def test_encoder_is_handed_on_through_the_checkpoint(tmp_path):
  config = tiny_mae_config(num_steps=2, checkpoint_every=2)
  data_dir = cohort.build_synthetic(str(tmp_path / "data"), config.data, seed=0, workers=1)
  _, task = mae.make_task(config)
  trainer = loop.Trainer(config, Workdir(tmp_path), "mae", data_dir, task,
                         mesh=conftest.one_device_mesh(config))
  state = trainer.fit()
  # A later stage asks for the encoder only, on a mesh of its own (2 devices).
  from cardionets_jax.train import checkpoint as ckpt_lib
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:2])
  rules = mesh_lib.axis_rules(config.mesh)
  encoder = mae.build_encoder(config)
  boxed = jax.eval_shape(lambda r: encoder.init(r, jnp.zeros((1, 8, 16, 16), jnp.uint8))["params"],
                         jax.random.PRNGKey(0))
  shardings = mesh_lib.tree_shardings(boxed, mesh, rules)
  import flax.linen as nn
  target = ckpt_lib.abstract_with_shardings(nn.unbox(boxed), shardings)
  restored, step = ckpt_lib.restore_subtree(trainer.checkpoint_dir, ("params", "encoder"), target)
  assert step == 2
  saved = jax.device_get(state.params["encoder"])
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(saved), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(b), a, err_msg=jax.tree_util.keystr(path))
  leaf = restored["transformer"]["block0"]["mlp"]["fc1"]["kernel"]
  assert leaf.sharding.mesh.devices.size == 2
