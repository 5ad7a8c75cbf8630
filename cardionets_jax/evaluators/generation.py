"""Generated cines against the true ones: the generator evaluated as screening would use it.

Held-out subjects' cines are generated from their own ECG, a shuffled ECG and no condition with
the EMA weights, decoded with the VAE the tokens were made with, and scored against the true
cines (SSIM, PSNR, bootstrap CIs, paired differences); a ridge probe fitted on the mae encoder's
features of true cines reads the phenotypes off the generated ones.

Beside them, the baseline any generator must beat on matching the patient: a deterministic ridge
map from the ECG embedding to the latent the decoder reads (`ecg_ridge`), fitted on the training
tokens, decoded by the same VAE and scored the same way.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax import bootstrap
from cardionets_jax import evaluate
from cardionets_jax import plots
from cardionets_jax.data import pipeline
from cardionets_jax.data import synthetic
from cardionets_jax.evaluators import probe
from cardionets_jax.evaluators import areas
from cardionets_jax.evaluators import reconstruction
from cardionets_jax.evaluators import splits
from cardionets_jax.models import vae3d
from cardionets_jax.models import vit
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib
from cardionets_jax.train import state as state_lib
from cardionets_jax.workdir import unique_names

CONDITIONS = ("own_ecg", "shuffled_ecg", "no_condition")
# ecg_ridge_shuffled: the ridge map given another subject's ECG, the same pairing as shuffled_ecg:
# what SSIM the ECG embedding can buy at all through a deterministic map.
BASELINES = ("ecg_ridge", "ecg_ridge_shuffled")
# On the built-in cohort: each subject's own heart imaged again, and another's (the shuffled
# pairing): what a generator that knew the true phenotypes exactly would score (`rescans`).
RESCANS = ("rescan", "rescan_shuffled")
# (a, b): a - b per subject, paired bootstrap CIs, as f"{a}_minus_{b}", where both were scored.
PAIRED = (("own_ecg", "shuffled_ecg"), ("own_ecg", "no_condition"), ("own_ecg", "ecg_ridge"),
          ("ecg_ridge", "ecg_ridge_shuffled"), ("rescan", "rescan_shuffled"))
METRICS = reconstruction.METRICS
RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def fixed_batches(n, batch):
  """(start, valid, pad) for each batch of `n` rows, where `pad(x)` is that batch's rows of x with
  the last one repeated up to `batch`: every call sees one shape, so it compiles once."""
  for start in range(0, n, batch):
    valid = min(batch, n - start)
    yield start, valid, lambda x, s=start, v=valid: np.concatenate(
        [x[s:s + v], np.repeat(x[s + v - 1:s + v], batch - v, 0)])


def shuffled(x):
  """Every subject paired with another's row: the same pairing for every shuffled control."""
  return x[np.roll(np.arange(len(x)), len(x) // 2)]


class GenerationEvaluator:
  """`build_generate(vae)` is the generator's jitted sampling + decode program (mar's
  `make_generate`) around the VAE restored here from `vae_reference`."""

  def __init__(self, config, build_generate, trainer, tokens_dir, vae_reference, mae_reference,
               cohort_dir, cohort_meta):
    from cardionets_jax.stages import mae as mae_stage
    from cardionets_jax.stages import vae as vae_stage
    self.config, self.trainer = config, trainer
    self.tokens_dir, self.cohort_dir, self.meta = tokens_dir, cohort_dir, cohort_meta
    vae, self.vae_params, _, vae_config = vae_stage.restore_vae(vae_reference, trainer.mesh)
    self.cmr_shape = vae_stage.cmr_shape(vae_config)
    encoder, self.encoder_params, _, mae_config = mae_stage.restore_encoder(mae_reference,
                                                                           trainer.mesh)
    self.probe_alphas = tuple(mae_config.probe.alphas)
    self.sources = dict(vae=vae_reference, mae=mae_reference)
    self.split = splits.choose(cohort_meta, config.eval.get("split", "test"), config.data)
    self._features = jax.jit(lambda p, v: encoder.apply({"params": p}, v))
    self._reconstruct = reconstruction.reconstructor(vae)
    self._generate = build_generate(vae)
    self._scores = jax.jit(reconstruction.scores)
    self._latent_norm = vae.latent_norm
    self._decode = jax.jit(lambda p, z: jnp.clip(vae.apply(
        {"params": p}, vae3d.decoder_latent(z, vae.latent_norm), method=vae.decode), -1.0, 1.0))

  def ridge_baseline(self, embeddings):
    """{"ecg_ridge", "ecg_ridge_shuffled": cines} decoded from a ridge map of each ECG embedding
    (and of the shuffled ones) to the decoder-space latent, and the fit: fitted on the training
    tokens (at most probe.TRAIN_LIMIT), alpha chosen on validation by latent MSE."""
    roles = splits.roles(self.meta, self.config.data)

    def examples(split, limit=None):
      x, y = [], []
      for batch, valid in pipeline.eval_batches(self.tokens_dir, split,
                                                ("ecg_embedding", "latent_mean"), 64, limit):
        x.append(batch["ecg_embedding"][:valid])
        latent = jnp.asarray(batch["latent_mean"][:valid])
        y.append(np.asarray(vae3d.decoder_latent(latent, self._latent_norm)))
      return np.concatenate(x), np.concatenate(y)

    fit, select = examples(roles["fit"], probe.TRAIN_LIMIT), examples(roles["select"])
    predict, alpha, val_mse = evaluate.fit_ridge_map(fit, select, RIDGE_ALPHAS)

    def decode(latents):
      return np.concatenate([
          np.asarray(self._decode(self.vae_params, jnp.asarray(pad(latents))))[:valid]
          for _, valid, pad in fixed_batches(len(latents), self.config.eval.batch_size)])

    cines = {name: decode(predict(x).astype(np.float32))
             for name, x in zip(BASELINES, (embeddings, shuffled(embeddings)))}
    return cines, dict(alpha=alpha, val_latent_mse={str(a): v for a, v in val_mse.items()},
                       fit_split=roles["fit"], num_fit=len(fit[0]), select_split=roles["select"])

  def rescans(self, subject_ids):
    """{RESCANS: cines in [-1, 1]} on the built-in cohort (data/synthetic.py::rescan), else {}."""
    d = self.config.data
    if d.source != "synthetic":
      return {}
    cines = np.stack([synthetic.rescan(d.cohort_seed, synthetic.subject_index(s),
                                       frames=d.cmr_frames, size=d.cmr_size) for s in subject_ids])
    cines = np.asarray(vit.cmr_to_float(jnp.asarray(cines)))
    return dict(zip(RESCANS, (cines, shuffled(cines))))

  def heldout(self, split, num_subjects):
    """The first `num_subjects` subjects of `split`: tokens and their true cines."""
    tokens = {k: [] for k in ("subject_id", "ecg_embedding", "phenotypes")}
    for batch, valid in pipeline.eval_batches(self.tokens_dir, split, tuple(tokens), 64,
                                              num_subjects):
      for k in tokens:
        tokens[k].append(batch[k][:valid])
    tokens = {k: np.concatenate(v) for k, v in tokens.items()}
    wanted = {sid: i for i, sid in enumerate(tokens["subject_id"])}
    cines = np.zeros((len(wanted),) + self.cmr_shape, np.uint8)
    found = 0
    for batch, valid in pipeline.eval_batches(self.cohort_dir, split, ("subject_id", "cmr"), 64):
      for sid, cine in zip(batch["subject_id"][:valid], batch["cmr"][:valid]):
        if sid in wanted:
          cines[wanted[sid]] = cine
          found += 1
    if found != len(wanted):
      raise ValueError(f"{len(wanted) - found} tokenized {split} subjects have no cine in "
                       f"{self.cohort_dir}: were the tokens made from another dataset?")
    return tokens, cines

  def generate_all(self, state, embeddings, cines, seed, conditions=CONDITIONS, reconstruct=True):
    """{condition: generated cines} and, with `reconstruct`, "vae_reconstruction": the VAE's own
    reconstructions."""
    e, t = self.config.eval, self.trainer
    params, n = state_lib.ema_params(state), len(cines)
    conditioned = dict(own_ecg=embeddings, shuffled_ecg=shuffled(embeddings),
                       no_condition=embeddings)
    out = {k: [] for k in conditions + (("vae_reconstruction",) if reconstruct else ())}
    progress = metrics_lib.Progress(len(conditions) * -(-n // e.batch_size), e.batch_size)
    with mesh_lib.active(t.mesh, t.rules):
      for start, valid, pad in fixed_batches(n, e.batch_size):
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), start)
        for name in conditions:
          cine = self._generate(params, state.frozen, self.vae_params,
                                jnp.asarray(pad(conditioned[name])), rng,
                                conditioned=name != "no_condition")
          out[name].append(np.asarray(cine)[:valid])
          line = progress.update(sum(len(out[k]) for k in conditions))
          if line:
            metrics_lib.log("generating held-out cines: %s", line)
        if reconstruct:
          recon = self._reconstruct(self.vae_params, jnp.asarray(pad(cines)))[0]
          out["vae_reconstruction"].append(np.asarray(recon)[:valid])
    return {k: np.concatenate(v) for k, v in out.items()}

  def image_scores(self, generated, truth):
    """SSIM and PSNR with CIs per condition, and own ECG minus each control (paired)."""
    n_boot = self.config.eval.n_boot
    scores = {name: dict(zip(METRICS, (np.asarray(x) for x in self._scores(jnp.asarray(cine),
                                                                          jnp.asarray(truth)))))
              for name, cine in generated.items()}
    result = {name: {m: bootstrap.bootstrap_ci(np.mean, (s[m],), n_boot=n_boot) for m in METRICS}
              for name, s in scores.items()}
    for a, b in (p for p in PAIRED if p[0] in scores and p[1] in scores):
      result[f"{a}_minus_{b}"] = {
          m: bootstrap.paired_bootstrap_diff(np.mean, (scores[a][m],), (scores[b][m],),
                                             n_boot=n_boot) for m in METRICS}
    # Every subject's scores, in `per_subject_ids` order: paired analyses on any subset.
    result["per_subject"] = {name: {m: [float(v) for v in s[m]] for m in METRICS}
                             for name, s in scores.items()}
    result["metrics"] = reconstruction.METRIC_DEFINITIONS
    return result

  def phenotype_readings(self, phenotypes, cines, generated):
    """R2 of the mae probe's phenotype readings, against the truth and against its reading of the
    true cine (does the generated heart match the real one?)."""
    t = self.trainer

    def features(split, limit):
      feats, kept = splits.map_split(lambda b: self._features(self.encoder_params, b["cmr"]),
                                     self.cohort_dir, split, ("cmr",), t.mesh, t.rules,
                                     keep=("phenotypes",), limit=limit)
      return feats, kept["phenotypes"]

    roles, data = probe.features_by_role(features, self.meta, self.config.data, ("fit", "select"))
    predict = probe.fitted_probe(data, self.probe_alphas)
    read = lambda uint8_cines: predict(np.asarray(self._features(self.encoder_params,
                                                                 jnp.asarray(uint8_cines))))
    readings = dict(true_cine=read(cines), **{k: read(plots.to_uint8(generated[k]))
                                              for k in CONDITIONS + BASELINES})
    names = self.meta.phenotype_names
    r2 = lambda y, p: (evaluate.r2_score(y[~np.isnan(y)], p[~np.isnan(y)])
                       if np.sum(~np.isnan(y)) > 1 else float("nan"))
    return dict(
        probe_r2={src: {n: r2(phenotypes[:, j], p[:, j]) for j, n in enumerate(names)}
                  for src, p in readings.items()},
        probe_r2_vs_true_cine_reading={
            k: {n: r2(readings["true_cine"][:, j], readings[k][:, j]) for j, n in enumerate(names)}
            for k in CONDITIONS + BASELINES},
        probe_splits=dict(fit=roles["fit"], select=roles["select"]))

  def curve_point(self, state, split, num_subjects, seed=0):
    """The two figures of whether generation carries the patient, on `split`: own-ECG minus
    shuffled-ECG SSIM (mean over subjects) and the area EF proxy's Pearson r with LVEF on cines
    generated from the own ECG."""
    tokens, cines = self.heldout(split, num_subjects)
    generated = self.generate_all(state, tokens["ecg_embedding"], cines, seed,
                                  conditions=("own_ecg", "shuffled_ecg"), reconstruct=False)
    truth = jnp.asarray(vit.cmr_to_float(jnp.asarray(cines)))
    ssim = {k: float(np.mean(self._scores(jnp.asarray(v), truth)[0])) for k, v in generated.items()}
    names = list(self.meta.phenotype_names)
    lvef = np.asarray(tokens["phenotypes"], np.float64)[:, names.index("lvef")]
    ef = areas.readout(generated["own_ecg"])["ef"]
    return dict(ssim_own_minus_shuffled=ssim["own_ecg"] - ssim["shuffled_ecg"],
                area_ef_vs_lvef_own_ecg=areas.pearson(ef, lvef))

  def evaluate(self, state, seed=0):
    """(results dict, generated cines, true cines in [-1, 1], subject ids)."""
    tokens, cines = self.heldout(self.split, self.config.eval.num_subjects)
    generated = self.generate_all(state, tokens["ecg_embedding"], cines, seed)
    ridge_cines, ridge = self.ridge_baseline(tokens["ecg_embedding"])
    generated.update(ridge_cines, **self.rescans(tokens["subject_id"]))
    truth = np.asarray(vit.cmr_to_float(jnp.asarray(cines)))
    result = dict(num_subjects=len(cines), split=self.split, **self.image_scores(generated, truth),
                  **self.phenotype_readings(tokens["phenotypes"], cines, generated))
    result["ecg_ridge_fit"] = ridge
    result["per_subject_ids"] = [s.decode() if isinstance(s, bytes) else str(s)
                                 for s in tokens["subject_id"]]
    # The probe-free read-out: blood-pool areas, the same way on every kind of cine.
    result["area_readout"], per_subject = areas.agreement(
        dict(true_cine=cines, **generated), np.asarray(tokens["phenotypes"], np.float64),
        list(self.meta.phenotype_names), n_boot=self.config.eval.n_boot)
    for name, values in per_subject.items():
      result["per_subject"].setdefault(name, {}).update({f"area_{k}": v for k, v in values.items()})
    return result, generated, truth, tokens["subject_id"]


def write_samples(out_dir, subject_ids, generated, truth, num=4, num_frames=8):
  """Per subject: the own-ECG cine as NIfTI (x, y, t) and GIF (true | generated), and a PNG
  strip of frames: true, own ECG, shuffled ECG, no condition."""
  os.makedirs(out_dir, exist_ok=True)
  count = min(num, len(truth))
  names = unique_names(s.decode() if isinstance(s, bytes) else s for s in subject_ids[:count])
  for i, name in enumerate(names):
    plots.write_nifti(os.path.join(out_dir, f"{name}.nii.gz"), generated["own_ecg"][i])
    plots.write_gif(os.path.join(out_dir, f"{name}.gif"),
                    np.concatenate([truth[i], generated["own_ecg"][i]], axis=2))
    rows = [("true", truth[i])] + [(k.replace("_", " "), generated[k][i])
                                   for k in CONDITIONS + ("ecg_ridge",) if k in generated]
    plots.frame_grid(os.path.join(out_dir, f"{name}.png"), rows,
                     f"{name}: true cine; generated from its ECG, another ECG, none; the ECG "
                     "ridge baseline",
                     num_frames=num_frames, cell=1.3, dpi=100)
