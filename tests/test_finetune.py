"""The finetune stage: losses, label subsets, layer decay, and the whole chain on a fresh workdir."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from cardionets_jax.data import pipeline
from cardionets_jax.evaluators import clinical
from cardionets_jax.stages import finetune


def test_masked_losses_match_numpy():
  rng = np.random.default_rng(0)
  pred, z = rng.normal(size=(2, 6, 3)).astype(np.float32)
  z[0, 1] = np.nan
  z[4, :] = np.nan
  logits = rng.normal(size=(6, 2)).astype(np.float32)
  labels = np.array([[1, 0], [0, -1], [-1, -1], [1, 1], [0, 0], [1, -1]], np.int8)
  phen, dis = finetune.phenotype_loss(pred, z), finetune.disease_loss(logits, labels)
  ok = ~np.isnan(z)
  np.testing.assert_allclose(phen, np.mean((pred[ok] - z[ok]) ** 2), rtol=1e-6)
  known = labels >= 0
  p = 1 / (1 + np.exp(-logits[known].astype(np.float64)))
  y = labels[known]
  np.testing.assert_allclose(dis, np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))), rtol=1e-5)


def test_label_subsets_are_by_subject_seeded_and_nested_in_size():
  ids = [f"S{i}".encode() for i in range(4000)]
  ten = {i for i in ids if pipeline.in_subset(i, 0.1, 0)}
  assert 340 < len(ten) < 460
  assert ten == {i for i in ids if pipeline.in_subset(i, 0.1, 0)}       # deterministic
  assert ten != {i for i in ids if pipeline.in_subset(i, 0.1, 1)}       # seeded
  assert ten <= {i for i in ids if pipeline.in_subset(i, 0.5, 0)}       # fractions nest
  assert all(pipeline.in_subset(i, 1.0, 3) for i in ids[:10])


def test_layer_decay_scales():
  from cardionets_jax_configs import finetune as ft_configs
  config = ft_configs.get_config()
  config.finetune.layer_decay = 0.5
  meta = type("Meta", (), dict(phenotype_names=["a"], phenotype_units=["mL"], label_names=["x"],
                               phenotype_mean=[0.0], phenotype_std=[1.0]))()
  method = finetune.Method(config, "scratch", 1.0, 0, meta)
  depth = method.depth
  params = nn.unbox(jax.eval_shape(method._init_all, jax.random.PRNGKey(0)))  # shapes suffice
  scales = method._layer_decay_scales(params)
  assert float(scales["phenotype_head"]["kernel"]) == 1.0
  assert float(scales["encoder"]["ln_final"]["scale"]) == 1.0     # after the pooling: the top
  assert float(scales["encoder"]["patch_norm_in"]["scale"]) == 0.5 ** (depth + 1)
  assert float(scales["encoder"]["transformer"][f"block{depth - 1}"]["mlp"]["fc1"]["kernel"]) == 0.5
  assert float(scales["encoder"]["transformer"]["block0"]["mlp"]["fc1"]["kernel"]) == 0.5 ** depth
  assert float(scales["encoder"]["patch_embed"]["kernel"]) == 0.5 ** (depth + 1)


def test_release_preset_one_model_per_task_with_the_mlp_head():
  from cardionets_jax_configs import finetune as ft_configs
  config = ft_configs.get_config("variant=test,preset=release")
  f = config.finetune
  assert f.per_task and f.phenotype_head == "mlp" and f.layer_decay == 1.0 and f.head_init == "random"
  assert config.train.weight_decay == 0.0 and config.train.b2 == 0.999
  meta = type("Meta", (), dict(phenotype_names=["a", "b", "c"], phenotype_units=["mL"] * 3,
                               label_names=["x", "y"], phenotype_mean=[0.0] * 3,
                               phenotype_std=[1.0] * 3))()
  phen = finetune.Method(config, "scratch", 1.0, 0, meta, tasks=("phenotypes",))
  dis = finetune.Method(config, "scratch", 1.0, 0, meta, tasks=("disease",))
  assert phen.name.endswith("-phenotypes") and dis.name.endswith("-disease")
  shapes = jax.tree.map(lambda x: x.shape, nn.unbox(phen._init_all(jax.random.PRNGKey(0))))
  width = phen.encoder_config.model.width
  assert set(shapes) == {"encoder", "phenotype_hidden0", "phenotype_hidden1", "phenotype_head"}
  assert [shapes[k]["kernel"] for k in ("phenotype_hidden0", "phenotype_hidden1", "phenotype_head")] == [
      (width, 256), (256, 128), (128, 3)]
  assert set(nn.unbox(dis._init_all(jax.random.PRNGKey(0)))) == {"encoder", "disease_head"}
  # One method's predictions come from both models: phenotypes from one, probabilities the other.
  rng = np.random.default_rng(0)
  truth = dict(phenotypes=rng.normal(size=(5, 3)), labels=np.zeros((5, 2), np.int8))
  a, b = rng.normal(size=(5, 3)), rng.random((5, 2))
  parts = [(phen, {"val": dict(truth, phenotypes_pred=a, probs=np.zeros((5, 0)))}),
           (dis, {"val": dict(truth, phenotypes_pred=np.zeros((5, 0)), probs=b)})]
  merged = finetune._merged(parts, "val")
  assert merged["phenotypes_pred"] is a and merged["probs"] is b


def test_finetune_stage_reports_every_method(trained_workdir):
  tmp_path = trained_workdir
  out = tmp_path / "finetune"
  with open(out / "results.json") as f:
    results = json.load(f)
  assert set(results["methods"]) == {f"{i}-full-labels0.5-seed0" for i in ("aligned", "scratch", "cmr")}
  method = results["methods"]["aligned-full-labels0.5-seed0"]
  assert set(method["phenotypes"]["lvef"]) >= {"r2", "pearson_r", "mae", "n"}
  auroc = method["diseases"]["cardiomyopathy"]["auroc"]
  assert auroc["low"] <= auroc["value"] <= auroc["high"]
  for name in ("results.md", "results.csv", "roc_curves.png", "phenotype_scatter.png"):
    assert os.path.exists(out / name), name
  # The release's way beside ours: threshold 0.5 and Wilson intervals, labelled as such.
  release = method["diseases_release"]["cardiomyopathy"]
  assert release["threshold"] == 0.5
  assert release["tp"] + release["fn"] == method["diseases"]["cardiomyopathy"]["n_positive"]
  assert release["sensitivity"]["low"] <= release["sensitivity"]["value"] <= release["sensitivity"]["high"]
  assert "Release-comparable" in (out / "results.md").read_text()
  assert "mean phenotype R2" in (out / "results.md").read_text()
  # Every metric block says which split it used; screening reads the hand-off, not results.json.
  assert method["splits"] == dict(early_stopping="val", thresholds="val", metrics="test")
  handed_on = json.loads((out / "artifacts" / "methods.json").read_text())
  assert handed_on["aligned-full-labels0.5-seed0"]["checkpoint"].startswith(
      f"{tmp_path}/finetune/aligned-full-labels0.5-seed0/checkpoints/")
  assert set(results["upstream"]) == {"align", "mae"}
  # Each method's heads start as ridge probes of its encoder, scored by early stopping as step 0.
  for name in results["methods"]:
    with open(out / name / "metrics.jsonl") as fh:
      scores = [json.loads(line) for line in fh if '"score"' in line]
    assert scores[0]["step"] == 0 and np.isfinite(scores[0]["score"]), name


def test_summary_table_averages_seeds_and_shows_cis():
  meta = type("Meta", (), dict(phenotype_names=["lvef"], label_names=["cm"]))()
  ci = lambda v: {"value": v, "low": v - 0.1, "high": v + 0.1, "n_boot_valid": 10}
  results = {}
  for init, r2s in (("aligned", (0.5, 0.7)), ("scratch", (0.2,))):
    for seed, r2 in enumerate(r2s):
      results[f"{init}-{seed}"] = dict(init=init, mode="full", label_fraction=0.1, seed=seed,
                                      phenotypes={"lvef": {"r2": ci(r2)}},
                                      diseases={"cm": {"auroc": ci(0.9), "n_positive": 7,
                                                       "n_negative": 40}})
  columns, rows = clinical.summary_table(results, meta)
  assert columns == ["aligned-full@0.1", "scratch-full@0.1"]
  cells = {label: {c: clinical._cell(v[c]) for c in columns} for label, v in rows}
  assert cells["lvef R2"] == {"aligned-full@0.1": "0.600 ± 0.100",
                              "scratch-full@0.1": "0.200 (0.100-0.300)"}
  assert cells["mean phenotype R2"]["scratch-full@0.1"] == "0.200"
  assert list(cells) == ["lvef R2", "mean phenotype R2", "cm AUROC (7 pos / 40 neg)"]


def test_probe_heads_turn_a_linear_probability_probe_into_logits_and_keep_shardings():
  from cardionets_jax.stages import probe_heads
  from jax.sharding import NamedSharding, PartitionSpec
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=(4, 3)), np.array([0.3, 0.5, np.nan])
  labels = np.array([[1, 0, -1], [0, 0, -1], [0, 0, -1], [1, 0, -1]], np.int8)   # 50%, 0%, unknown
  kernel, bias = probe_heads._disease_logit_head(w, b, labels)
  # Both classes: the tangent of the logit at the prevalence (0.5): slope 4, and p = 0.5 -> 0.
  np.testing.assert_allclose(kernel[:, 0], 4 * w[:, 0])
  assert bias[0] == pytest.approx(4 * (0.3 - 0.5))
  # One class, or none known: no weights, the clipped prior's logit.
  assert not kernel[:, 1:].any()
  assert bias[1] == pytest.approx(np.log(0.02 / 0.98)) and bias[2] == pytest.approx(0.0)

  mesh = jax.make_mesh((8,), ("data",))
  replicated = NamedSharding(mesh, PartitionSpec())
  params = {"encoder": {"w": jax.device_put(np.ones(2, np.float32), replicated)},
            "disease_head": {"kernel": jax.device_put(np.zeros((4, 3), np.float32), replicated),
                             "bias": jax.device_put(np.zeros(3, np.float32), replicated)}}
  out = probe_heads.put(params, {"disease_head": (kernel, bias)})
  assert out["encoder"] is params["encoder"]
  for key, want in (("kernel", kernel), ("bias", bias)):
    leaf = out["disease_head"][key]
    assert leaf.dtype == np.float32 and leaf.sharding == replicated
    np.testing.assert_allclose(leaf, want.astype(np.float32))
