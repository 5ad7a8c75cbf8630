"""ST-MEM pre-training: the masking, the stage on the built-in cohort, and what reads its weights."""

import json
import os

import jax
import numpy as np

from cardionets_jax import orchestrate
from cardionets_jax.models import ecg as ecg_models
from cardionets_jax.models import stmem as stmem_models
from cardionets_jax.workdir import Workdir
from tests.conftest import run_in_process, stage_test_config

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def test_sincos_positions_leave_the_sep_slots_zero():
  table = stmem_models.sincos_positions(30, 16)[0]
  assert table.shape == (32, 16)
  assert not table[0].any() and not table[-1].any()
  np.testing.assert_allclose(table[1, :8], 0.0, atol=1e-7)       # position 0: sin 0
  np.testing.assert_allclose(table[1, 8:], 1.0, atol=1e-7)       # cos 0
  np.testing.assert_allclose(table[3, 0], np.sin(2.0), rtol=1e-6)


def test_every_present_lead_hides_the_same_number_of_patches():
  encoder = ecg_models.EcgEncoder(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=250,
                                  num_samples=2250)
  model = stmem_models.StMem(encoder, decoder_width=16, decoder_depth=1, decoder_heads=2,
                             decoder_mlp_dim=32, mask_ratio=0.75)
  ecg = jax.random.normal(jax.random.PRNGKey(0), (3, 12, 2250))
  present = np.ones((3, 12), np.uint8)
  present[1, 4] = 0
  params = jax.jit(lambda x, m: model.init({"params": jax.random.PRNGKey(1),
                                            "mask": jax.random.PRNGKey(2)}, x, m))(ecg, present)
  pred, target, hidden = jax.jit(lambda p, x, m: model.apply(p, x, m, rngs={
      "mask": jax.random.PRNGKey(3)}))(params, ecg, present)
  n, k = 9, stmem_models.num_kept(9, 0.75)
  assert pred.shape == target.shape == (3, 12 * n, 250) and k == 2
  per_lead = np.asarray(hidden).reshape(3, 12, n).sum(-1)
  assert (per_lead[0] == n - k).all() and per_lead[1, 4] == 0 and (np.delete(per_lead[1], 4) == n - k).all()
  # Per lead and per example the hidden patches differ (independent masks).
  patterns = np.asarray(hidden).reshape(3, 12, n)
  assert len({tuple(p) for p in patterns[0]}) > 1
  np.testing.assert_allclose(target.reshape(3, 12, 2250)[0],
                             ecg_models.normalize_ecg(ecg, present)[0], atol=1e-6)


def test_stmem_stage_and_finetune_from_converted_weights(tmp_path):
  # ST-MEM on the built-in cohort: the held-out masked-patch loss falls.
  workdir = tmp_path / "run"
  results = run_in_process(stage_test_config("stmem"), workdir, "stmem")
  loss = results["heldout_masked_patch_loss"]
  assert loss["final"] < 0.9 * loss["initial"], loss
  assert set(results["probe_r2"]) == set(results["probe_r2_random_init"])

  # align from ST-MEM weights plans the stmem stage first (here: finished, so not again) ...
  align = stage_test_config("align")
  align.align.ecg_init = "stmem"
  assert [s for s, _, _ in orchestrate.plan(align, Workdir(str(workdir)))] == ["mae", "align"]
  fresh = [s for s, _, _ in orchestrate.plan(align, Workdir(str(tmp_path / "fresh")))]
  assert fresh == ["mae", "stmem", "align"]

  # ... and finetune's `stmem` baseline reads converted (PyTorch) weights as it reads trained
  # ones (the same checkpoint layout, `params/encoder`, rebuilt from the config saved with it).
  from cardionets_jax.convert import __main__ as convert
  converted = tmp_path / "converted"
  assert convert.main(["--source=stmem", f"--pth={os.path.join(GOLDEN, 'release_cm.pth')}",
                       f"--out={converted}", "--num-heads=2"]) == 0
  init = str(converted / "stmem" / "checkpoints")
  config = stage_test_config("finetune", num_steps=3, eval_every=3)
  config.finetune.inits = ("stmem",)
  config.init.stmem = init
  config.data.source = results["data"]        # the cohort the stmem run built
  out = run_in_process(config, tmp_path / "finetune", "finetune")
  method = out["methods"]["stmem-full-labels0.5-seed0"]
  assert np.isfinite(method["phenotypes"]["lvef"]["r2"]["value"])
  assert out["upstream"]["stmem"]["checkpoint"].startswith(init)
  with open(converted / "stmem" / "conversion.json") as f:
    assert {u["key"] for u in json.load(f)["unused"]} == {"head.weight", "head.bias"}
