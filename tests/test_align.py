"""The align stage: sharded step, frozen CMR encoder, augmentation, the stage chain."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax.stages import align
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import state as state_lib
from cardionets_jax.train import step as step_lib
from configs import align as align_configs



def tiny_align_config(**align_overrides):
  config = align_configs.get_config("variant=tiny")
  config.mae_config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, decoder_width=32,
                                 decoder_depth=1, decoder_heads=2, decoder_mlp_dim=64, patch_size=8)
  for c in (config.data, config.mae_config.data):
    c.update(cmr_frames=10, cmr_size=16, num_subjects=120)
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=250)
  config.align.update(pca_dim=8, **align_overrides)
  config.train.update(batch_size=8, num_steps=4, warmup_steps=1)
  return config


def batch_for(config, n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"ecg": rng.normal(size=(n, 12, 2500)).astype(np.float32),
          "lead_mask": np.ones((n, 12), np.uint8),
          "cmr": rng.integers(0, 256, (n, 10, 16, 16), dtype=np.uint8),
          "phenotypes": rng.normal(size=(n, 12)).astype(np.float32)}


def one_step(config, devices, batch):
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.axis_rules(config.mesh)
  _, _, task = align.make_task(config)
  tx, schedule = state_lib.make_optimizer(config.train)
  state, shardings, _ = state_lib.create_state(task.init_params, tx, config.seed, mesh, rules,
                                               task.init_frozen)
  step = step_lib.jit_train_step(step_lib.make_train_step(task.loss_fn, tx, schedule), shardings,
                                 mesh, rules, {k: v.ndim for k, v in batch.items()})
  frozen_before = jax.device_get(state.frozen)
  with mesh_lib.active(mesh, rules):
    new_state, metrics = step(state, mesh_lib.global_batch(batch, mesh, rules))
  return frozen_before, new_state, jax.device_get(metrics)


def test_sharded_align_step_equals_single_device_step():
  config = tiny_align_config()
  batch = batch_for(config)
  _, single_state, single = one_step(config, jax.devices()[:1], batch)
  config.mesh.shape.update(data=2, fsdp=2, tensor=2)
  _, sharded_state, sharded = one_step(config, jax.devices(), batch)
  np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(single_state.params)),
                          jax.tree.leaves(jax.device_get(sharded_state.params))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_cmr_encoder_gets_no_gradient_and_no_optimizer_state():
  config = tiny_align_config()
  frozen_before, state, _ = one_step(config, jax.devices()[:1], batch_for(config))
  # Unchanged by the step, bit for bit.
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(jax.device_get(state.frozen))):
    np.testing.assert_array_equal(a, b)
  # The optimizer holds moments for the trained params only.
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  assert state_lib.param_count(moments) == 2 * state_lib.param_count(state.params)
  assert "cmr_encoder" not in str(jax.tree_util.tree_structure(state.opt_state))
  # And the loss has no gradient with respect to the CMR encoder.
  _, _, task = align.make_task(config)
  batch = jax.tree.map(jnp.asarray, batch_for(config))
  grads = jax.grad(lambda f: task.loss_fn(state.params, f, batch, jax.random.PRNGKey(0), 0)[0])(
      state.frozen)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["cmr_encoder"]))


def test_crops_and_lead_dropout():
  ecg = jnp.arange(2 * 12 * 2500, dtype=jnp.float32).reshape(2, 12, 2500)
  crop = align.random_crop(ecg, jax.random.PRNGKey(0), 2250)
  assert crop.shape == (2, 12, 2250)
  for i in range(2):
    start = int(crop[i, 0, 0] - ecg[i, 0, 0])
    np.testing.assert_array_equal(crop[i], ecg[i, :, start:start + 2250])
  crops = align.eval_crops(ecg, 2250, 3)
  assert [int(c[0, 0, 0]) for c in crops] == [0, 125, 250]
  config = tiny_align_config(lead_dropout=0.5)
  _, mask = align.augment(jnp.zeros((64, 12, 2500)), jnp.ones((64, 12), jnp.uint8),
                          jax.random.PRNGKey(1), config)
  assert 0.3 < float(mask.mean()) < 0.7 and bool(jnp.all(mask.sum(axis=1) > 0))


def test_align_on_a_fresh_workdir_runs_mae_first(tokenized_workdir):
  # The shared workdir was fresh when tokenize ran there: it trained mae, then align, first.
  tmp_path = tokenized_workdir
  log = (tmp_path / "logs" / "tokenize.stderr").read_text()
  assert "No finished mae stage" in log and "No finished align stage" in log
  assert os.path.exists(tmp_path / "mae" / "results.json")
  with open(tmp_path / "align" / "results.json") as f:
    results = json.load(f)
  assert results["step"] == 4
  assert set(results["retrieval"]["aligned"]) == {"top1", "top5"}
  assert set(results["probe_r2"]) == {"aligned_ecg", "random_init_ecg", "cmr_encoder"}
  assert os.path.exists(tmp_path / "align" / "ecg_embeddings.png")
