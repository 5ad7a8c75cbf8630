"""The MAR generator: token layout, masks, sampler, the sharded step, EMA, the stage end to end."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardionets_jax.data import readers
from cardionets_jax.models import diffusion
from cardionets_jax.models import mar as mar_lib
from cardionets_jax.stages import mar as mar_stage
from cardionets_jax.stages import context as context_lib
from cardionets_jax.train import state as state_lib
from tests import conftest


def tiny_mar_config():
  """Latents (8, 4, 4, 4) as the test-sized VAE makes them; (2, 2, 2) patches: 16 tokens of 32."""
  return conftest.stage_test_config("mar")


def test_the_long_tiny_budget_changes_the_steps_alone():
  from cardionets_jax_configs import mar as mar_configs
  default, long = (mar_configs.get_config(f"variant=tiny,budget={b}") for b in ("default", "long"))
  assert (default.train.num_steps, long.train.num_steps) == (2000, 3000)
  long.train.num_steps = default.train.num_steps
  assert long.to_dict() == default.to_dict()
  for bad in ("variant=base,budget=long", "budget=short"):
    with pytest.raises(ValueError, match="budget"):
      mar_configs.get_config(bad)


def test_base_has_the_papers_tokens_and_sizes():
  config = context_lib.stage_config("mar", "base")
  shape, _ = mar_stage.token_shapes(config)
  assert tuple(shape) == (25, 12, 12, 16)
  model = mar_stage.build_model(config, shape)
  assert (model.seq_len, model.token_dim) == (180, 320)
  _, task = mar_stage.make_task(config)
  params = nn.unbox(jax.eval_shape(task.init_params, jax.random.PRNGKey(0)))
  count = lambda tree: state_lib.param_count(tree)
  block = 4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768  # attn, mlp, 2 norms
  assert count(params["encoder"]) == 12 * block + 2 * 768
  assert count(params["decoder"]) == 12 * block + 2 * 768
  assert params["encoder_pos"].shape == (64 + 180, 768)
  assert params["token_proj"]["kernel"].shape == (320, 768)
  assert params["cond_fc1"]["kernel"].shape == (256, 768)  # the aligned ECG embedding
  head = params["head"]
  assert head["input_proj"]["kernel"].shape == (320, 1024)
  assert head["out"]["kernel"].shape == (1024, 640)         # noise and variance per dimension
  assert sorted(k for k in head if k.startswith("block")) == ["block0", "block1", "block2"]
  assert params["diffusion_pos"].shape == (180, 768)


def test_latent_patches_round_trip_in_raster_order():
  latent = np.random.default_rng(0).normal(size=(2, 10, 4, 6, 3)).astype(np.float32)
  tokens = mar_lib.patchify_latent(jnp.asarray(latent), (5, 2, 2))
  assert tokens.shape == (2, 2 * 2 * 3, 5 * 2 * 2 * 3)
  # Token 1 is the patch at (t, h, w) = (0, 0, 1): latent[:, 0:5, 0:2, 2:4], its values ordered
  # (c, pt, ph, pw) as the release's patchify orders them.
  np.testing.assert_array_equal(tokens[:, 1].reshape(2, 3, 5, 2, 2),
                                latent[:, 0:5, 0:2, 2:4].transpose(0, 4, 1, 2, 3))
  np.testing.assert_array_equal(mar_lib.unpatchify_latent(tokens, (5, 2, 2), (10, 4, 6, 3)), latent)
  with pytest.raises(ValueError, match="does not split"):
    mar_lib.patchify_latent(jnp.zeros((1, 8, 4, 4, 2)), (5, 2, 2))


def test_training_mask_ratios_orders_and_known_slots():
  from scipy import stats
  seq_len, batch = 180, 4096
  mask, idx, valid = jax.device_get(mar_lib.training_mask(jax.random.PRNGKey(0), batch, seq_len,
                                                          per="example"))
  masked = mask.sum(1)
  assert masked.min() >= 126 and masked.max() <= 180          # ratio in [0.7, 1.0]
  assert idx.shape == (batch, 54)                              # 180 - ceil(0.7 * 180)
  # The masked count is ceil(180 r), r ~ normal(1, 0.25) truncated to [0.7, 1].
  ratio = stats.truncnorm((0.7 - 1.0) / 0.25, 0.0, loc=1.0, scale=0.25)
  draws = np.ceil(ratio.rvs(200_000, random_state=0) * seq_len)
  assert abs(masked.mean() - draws.mean()) < 4 * draws.std() / np.sqrt(batch)
  for b in range(64):
    known = set(idx[b][valid[b]])
    assert known == set(np.flatnonzero(~mask[b]))              # the valid slots are the unmasked
    assert len(set(idx[b])) == 54                              # distinct positions
  # Orders differ between examples.
  assert len({tuple(np.flatnonzero(m)) for m in mask[:16]}) == 16
  # The release's default: one ratio for the whole batch, drawn afresh per call.
  counts = [set(np.asarray(mar_lib.training_mask(jax.random.PRNGKey(k), 64, seq_len)[0]).sum(1))
            for k in range(8)]
  assert all(len(c) == 1 for c in counts) and len(set().union(*counts)) > 1


def test_mask_schedule_is_cosine_and_predicts_every_token_once():
  counts = mar_lib.mask_schedule(180, 16)
  assert counts[0] == 180 and counts[-1] == 0 and len(counts) == 17
  assert all(a > b for a, b in zip(counts, counts[1:]))
  assert counts[8] == int(np.floor(180 * np.cos(np.pi / 2 * 8 / 16)))
  assert mar_lib.mask_schedule(4, 8) == [4, 3, 2, 1, 0]  # never predicts nothing in a step
  # The release's sample_tokens at 180 tokens and 16 steps masks these counts after each step.
  assert counts == [180, 179, 176, 172, 166, 158, 149, 139, 127, 114, 100, 84, 68, 52, 35, 17, 0]


def test_sampler_fills_every_token_and_is_deterministic_per_key():
  config = tiny_mar_config()
  model, task = mar_stage.make_task(config)
  params = nn.unbox(task.init_params(jax.random.PRNGKey(0)))
  # A head that predicts noise 0 and the posterior's variance: the sampler's x0 is x_t / sqrt(abar).
  sched = diffusion.make_schedule(1000, 5)
  emb = jax.random.normal(jax.random.PRNGKey(1), (3, 256))
  sample = jax.jit(lambda p, e, r: mar_lib.sample_tokens(model, p, e, r, sched=sched, num_iter=4,
                                                          cfg_scale=2.0))
  a = np.asarray(sample(params, emb, jax.random.PRNGKey(2)))
  b = np.asarray(sample(params, emb, jax.random.PRNGKey(2)))
  c = np.asarray(sample(params, emb, jax.random.PRNGKey(3)))
  assert a.shape == (3, 16, 32) and np.isfinite(a).all()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert (np.abs(a).sum(-1) > 0).all()  # every token was generated (the canvas starts at 0)


def one_step(config, devices, batch):
  return conftest.one_step(config, mar_stage.make_task(config)[1], devices, batch)


def mar_batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"latent_mean": rng.normal(size=(n, 8, 4, 4, 4)).astype(np.float32),
          "latent_logvar": np.full((n, 8, 4, 4, 4), -4.0, np.float32),
          "ecg_embedding": rng.normal(size=(n, 256)).astype(np.float32)}


def test_sharded_mar_step_equals_single_device_step_and_keeps_an_ema():
  config = tiny_mar_config()
  config.train.ema_decay = 0.9
  batch = mar_batch()
  _, single_state, single = one_step(config, jax.devices()[:1], batch)
  config.mesh.shape.update(data=2, fsdp=2, tensor=2)
  _, sharded_state, sharded = one_step(config, jax.devices(), batch)
  np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-5)
  leaves = lambda t: jax.tree.leaves(jax.device_get(t))
  for a, b in zip(leaves(single_state.params), leaves(sharded_state.params)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
  # EMA = 0.9 * init + 0.1 * updated params, and it is what evaluation reads.
  init = nn.unbox(mar_stage.make_task(config)[1].init_params(
      jax.random.split(jax.random.PRNGKey(config.seed))[0]))
  for e, p, i in zip(leaves(state_lib.ema_params(single_state)), leaves(single_state.params),
                     leaves(init)):
    np.testing.assert_allclose(e, 0.9 * i + 0.1 * p, rtol=1e-5, atol=1e-6)


def test_mar_stage_on_a_tokenized_workdir(trained_workdir):
  workdir = trained_workdir
  log = (workdir / "logs" / "mar.log").read_text()
  plan = next(line for line in log.splitlines() if "Stages to run" in line)
  assert plan.endswith("mar (asked for)")  # the tokens (and mae) were reused
  with open(workdir / "mar" / "results.json") as f:
    results = json.load(f)
  held = results["heldout_test"]
  assert held["num_subjects"] == 6
  # rescan(_shuffled): the built-in cohort's own hearts imaged again, the test-retest reference.
  sources = ("own_ecg", "shuffled_ecg", "no_condition", "ecg_ridge", "ecg_ridge_shuffled",
             "rescan", "rescan_shuffled", "vae_reconstruction")
  for name in sources:
    assert -1 <= held[name]["ssim"]["low"] <= held[name]["ssim"]["value"] <= held[name]["ssim"]["high"] <= 1
    assert np.isfinite(held[name]["psnr"]["value"])
  assert set(held["probe_r2"]) == {"true_cine", "own_ecg", "shuffled_ecg", "no_condition",
                                   "ecg_ridge", "ecg_ridge_shuffled"}
  # The deterministic baseline: ridge on the training tokens, alpha chosen on val.
  ridge = held["ecg_ridge_fit"]
  assert (ridge["fit_split"], ridge["select_split"]) == ("train", "val") and ridge["num_fit"] > 6
  assert ridge["val_latent_mse"][str(ridge["alpha"])] == min(ridge["val_latent_mse"].values())
  assert {"own_ecg_minus_ecg_ridge", "ecg_ridge_minus_ecg_ridge_shuffled",
          "rescan_minus_rescan_shuffled"} <= set(held)
  # Both SSIMs, labelled, and every subject's scores for paired analyses.
  assert set(held["metrics"]) == {"ssim", "psnr", "ssim_gaussian11"}
  assert len(held["per_subject_ids"]) == 6
  for name in sources:
    per = held["per_subject"][name]
    assert all(len(per[m]) == 6 for m in held["metrics"])
    assert np.mean(per["ssim_gaussian11"]) == pytest.approx(held[name]["ssim_gaussian11"]["value"])
    assert len(per["area_ef"]) == 6
  # The probe-free area read-out, the same way on true, reconstructed and generated cines.
  assert set(held["area_readout"]) == {"true_cine"} | set(sources)
  assert -1 <= held["area_readout"]["true_cine"]["ef_vs_lvef"]["value"] <= 1
  # The validation curve of the same two figures, every train.eval_every steps.
  curve = [m for m in map(json.loads, open(workdir / "mar" / "metrics.jsonl")) if m["split"] == "val"]
  assert [m["step"] for m in curve] == [3, 6]
  for m in curve:   # 4 subjects of a 6-step generator: r is nan when all their EF proxies agree
    assert abs(m["ssim_own_minus_shuffled"]) < 1 and not m["area_ef_vs_lvef_own_ecg"] > 1
  assert os.path.exists(workdir / "mar" / "curve.png")
  samples = sorted(os.listdir(workdir / "mar" / "samples"))
  assert len(samples) == 4 * 3 and any(s.endswith(".nii.gz") for s in samples)
  # The NIfTI reads back through the project's own reader as the cine it wrote.
  nifti = next(s for s in samples if s.endswith(".nii.gz"))
  cine = readers.read_cmr(str(workdir / "mar" / "samples" / nifti))
  assert cine.shape == (8, 16, 16)
  assert os.path.isdir(workdir / "mar" / "artifacts" / "generator")
  # The generator decoded with exactly the VAE the tokens were made with.
  assert results["sources"]["vae"] == f"{workdir}/vae/checkpoints/6"
  assert held["split"] == "test"
