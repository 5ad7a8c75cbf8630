"""The align stage: sharded step, frozen CMR encoder, augmentation, the stage chain."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax.stages import align
from cardionets_jax.train import state as state_lib
from tests import conftest


def tiny_align_config(**align_overrides):
  config = conftest.stage_test_config("align")
  config.align.update(**align_overrides)
  return config


def batch_for(config, n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"ecg": rng.normal(size=(n, 12, 2500)).astype(np.float32),
          "lead_mask": np.ones((n, 12), np.uint8),
          "cmr": rng.integers(0, 256, (n, 8, 16, 16), dtype=np.uint8),
          "phenotypes": rng.normal(size=(n, 12)).astype(np.float32)}


def one_step(config, devices, batch):
  before, new_state, metrics = conftest.one_step(config, align.make_task(config)[-1], devices,
                                                 batch)
  return before.frozen, new_state, metrics


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
  grads = jax.jit(jax.grad(
      lambda f: task.loss_fn(state.params, f, batch, jax.random.PRNGKey(0), 0)[0]))(state.frozen)
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
  _, mask = align.augment(jnp.zeros((64, 12, 2500)), jnp.ones((64, 12), jnp.uint8),
                          jax.random.PRNGKey(1), 2250, lead_dropout=0.5)
  assert 0.3 < float(mask.mean()) < 0.7 and bool(jnp.all(mask.sum(axis=1) > 0))


def test_align_on_a_fresh_workdir_runs_mae_first(tokenized_workdir):
  # The shared workdir was fresh when tokenize ran there: the plan trained vae, mae and align
  # first, each saying why, and tokenize read exactly those checkpoints.
  tmp_path = tokenized_workdir
  log = (tmp_path / "logs" / "tokenize.log").read_text()
  plan = next(line for line in log.splitlines() if "Stages to run" in line)
  assert plan.index("vae (tokenize reads vae") < plan.index("tokenize (asked for)")
  assert plan.index("mae (align reads mae") < plan.index("align (tokenize reads align")
  with open(tmp_path / "align" / "results.json") as f:
    results = json.load(f)
  assert results["step"] == 4
  assert results["upstream"]["mae"]["checkpoint"] == f"{tmp_path}/mae/checkpoints/4"
  assert results["upstream"]["mae"]["same_data_as_this_run"] is True
  aligned = results["retrieval"]["aligned"]
  assert aligned["split"] == "test" and results["probe_splits"]["score"] == "test"
  assert aligned["chance"]["top1"] == 1 / aligned["n"]
  assert set(results["probe_r2"]) == {"aligned_ecg", "random_init_ecg", "cmr_encoder"}
  assert os.path.exists(tmp_path / "align" / "ecg_embeddings.png")


def test_a_random_teacher_replaces_the_trained_one_and_heldout_predictions_are_kept(
    tokenized_workdir, tmp_path):
  trained = np.load(tokenized_workdir / "align" / "heldout.npz")
  n = len(trained["ranks"])
  assert trained["probe"].shape == trained["phenotypes"].shape == (n, 12)
  assert trained["labels"].shape == (n, 2) and trained["ranks"].min() >= 1
  with open(tokenized_workdir / "align" / "results.json") as f:
    results = json.load(f)
  assert np.isclose(np.mean(trained["ranks"] == 1), results["retrieval"]["aligned"]["top1"])
  config = tiny_align_config(teacher="random")
  config.init.mae = str(tokenized_workdir / "mae" / "checkpoints")
  random = conftest.run_in_process(config, tmp_path / "w", "align")
  assert "Frozen CMR encoder: randomly initialised (seed 42)" in (
      tmp_path / "w" / "logs" / "align.log").read_text()
  cmr_r2 = lambda r: r["probe_r2"]["cmr_encoder"]
  assert cmr_r2(random) != cmr_r2(results)     # another teacher: other frozen features
  np.testing.assert_array_equal(np.load(tmp_path / "w" / "align" / "heldout.npz")["phenotypes"],
                                trained["phenotypes"])   # the same held-out subjects: pairable


def test_align_reads_another_workdirs_mae_of_another_width(tmp_path):
  # OTHER's mae is 48 wide; this config's own mae would be 32: the frozen encoder is rebuilt
  # from the config saved in OTHER's checkpoint, and no mae is trained here.
  # OTHER's mae also saw another cohort (seed 1): the log warns and results.json records both.
  mae_config = conftest.stage_test_config("mae")
  mae_config.model.update(width=48, mlp_dim=96)
  mae_config.data.cohort_seed = 1
  conftest.run_in_process(mae_config, tmp_path / "other")
  config = tiny_align_config()
  config.init.mae = str(tmp_path / "other" / "mae" / "checkpoints")
  results = conftest.run_in_process(config, tmp_path / "w", "align")
  assert results["upstream"]["mae"]["checkpoint"] == f"{tmp_path}/other/mae/checkpoints/4"
  assert results["upstream"]["mae"]["same_data_as_this_run"] is False
  assert results["upstream"]["mae"]["data"]["cohort_seed"] == 1
  assert "was trained on other data" in (tmp_path / "w" / "logs" / "align.log").read_text()
  assert not os.path.exists(tmp_path / "w" / "mae")
  import orbax.checkpoint as ocp
  saved = ocp.PyTreeCheckpointer().metadata(str(tmp_path / "w" / "align" / "checkpoints" / "4" / "state"))
  tree = saved.item_metadata.tree if hasattr(saved, "item_metadata") else saved
  # The CMR projector reads OTHER's features: its 2 x 2 grid of 48-wide patch tokens.
  assert tuple(tree["params"]["cmr_proj"]["kernel"].shape) == (4 * 48, config.model.embed_dim)
