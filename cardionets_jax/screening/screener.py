"""Every model screening needs, found through the workdir and loaded once."""

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax.data import datasets
from cardionets_jax.data import pipeline
from cardionets_jax.data import records
from cardionets_jax.stages import align
from cardionets_jax.stages import context as context_lib
from cardionets_jax.stages import finetune
from cardionets_jax.stages import mar as mar_stage
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import mesh as mesh_lib

REFERENCE_PERCENTILES = (2.5, 97.5)


def choose_method(methods, name=None):
  """The named finetune method, else the aligned ECG encoder fine-tuned on the most labels."""
  if name:
    if name not in methods:
      raise ValueError(f"No finetune method {name!r}; trained: {sorted(methods)}")
    return name
  aligned = [(m["label_fraction"], m["mode"] == "full", -m["seed"], n) for n, m in methods.items()
             if m["init"] == "aligned"]
  if not aligned:
    raise ValueError(f"No aligned-ECG finetune method in this workdir; trained: {sorted(methods)}")
  return max(aligned)[-1]


def method_info(workdir, name=None):
  """(name, methods.json entry) of the method screening uses."""
  methods = workdir.read_artifact("finetune", "methods.json")
  name = choose_method(methods, name)
  return name, methods[name]


def converted_meta(heads):
  """What a converted model predicts, from its methods.json entry: no dataset stands behind it."""
  return records.DatasetMeta(
      phenotype_names=list(heads["phenotype_names"]), phenotype_units=list(heads["phenotype_units"]),
      label_names=list(heads["label_names"]), shapes={}, source="converted",
      phenotype_mean=list(heads.get("phenotype_mean", [])),
      phenotype_std=list(heads.get("phenotype_std", [])))


class Screener:
  """`predict(ecg, lead_mask)` -> phenotypes, disease probabilities; `generate(...)` -> cines.

  The method is read from the finetune stage's hand-off in `workdir` (its best checkpoint and
  thresholds); the generator from the mar stage of `generator_workdir` (default: `workdir`), with
  the VAE and ECG encoder its tokens were made with. `predict.check_args` has checked that those
  stages finished.
  """

  def __init__(self, workdir, method=None, generate=True, generator_workdir=None,
               preprocessing="ours"):
    self.workdir, self.generator_workdir = workdir, generator_workdir or workdir
    self.method_name, info = method_info(workdir, method)
    checkpoints = info["checkpoint"]   # one model, or {task: checkpoint} (finetune.per_task)
    parts = checkpoints if isinstance(checkpoints, dict) else {None: checkpoints}
    self.config = ckpt_lib.saved_config(next(iter(parts.values())))
    if "heads" in info:
      self.data_dir, self.meta = None, converted_meta(info["heads"])
    else:
      self.data_dir, self.meta = datasets.resolve(self.config, workdir)
    self.notes = [info["note"]] if info.get("note") else []
    self.mesh = mesh_lib.data_mesh(jax.devices()[:1])
    self.parts = []
    for task, reference in parts.items():
      method = finetune.Method(ckpt_lib.saved_config(reference), info["init"],
                               info["label_fraction"], info["seed"], self.meta,
                               context_lib.Context(workdir), tasks=(task,) if task else None)
      predict = method.predictor(pre_cropped=preprocessing == "release")
      self.parts.append((method, method.restore_variables(reference, self.mesh), jax.jit(
          lambda v, ecg, mask, predict=predict: predict(v, dict(ecg=ecg, lead_mask=mask)))))
    self.thresholds = np.array([info["thresholds"][n] for n in self.meta.label_names])
    self.references = (self._reference_ranges() if self.data_dir and self.meta.phenotype_names
                       else np.zeros((len(self.meta.phenotype_names), 2)))
    self.sources = {"finetune": dict(method=self.method_name, checkpoint=checkpoints,
                                     step=info["best_step"])}
    if "converted_from" in self.config:   # the PyTorch file the weights came from
      self.sources["finetune"]["converted_from"] = self.config.converted_from.to_dict()
    self.generate_cines = generate
    if generate:
      self._load_generator()

  def _reference_ranges(self):
    """Central 95% of the training split's phenotypes: the cohort's own reference range."""
    values = [b["phenotypes"][:v] for b, v in pipeline.eval_batches(self.data_dir, "train",
                                                                    ("phenotypes",), 256)]
    return np.nanpercentile(np.concatenate(values), REFERENCE_PERCENTILES, axis=0).T

  def _load_generator(self):
    import orbax.checkpoint as ocp
    workdir = self.generator_workdir
    mar_ref = workdir.checkpoints("mar")
    mar_config = ckpt_lib.saved_config(mar_ref)
    ckpt_lib.require_fields(mar_config, context_lib.stage_config("mar", mar_config.variant),
                            mar_ref, ("model", "mar", "sample"))
    tokens = context_lib.resolve("tokenize", mar_config, workdir)
    made_by = records.DatasetMeta.load(tokens.path).provenance
    generator = ocp.StandardCheckpointer().restore(workdir.artifact("mar", "generator"))
    mar_params, mar_frozen = generator["params"], generator["frozen"]
    align_ref = f"{made_by['align']['checkpoint']}/{made_by['align']['step']}"
    align_model, align_params, _, acfg = align.restore_ecg(align_ref, self.mesh)
    vae_ref = mar_stage.tokens_vae(tokens.path)
    vae, vae_params, _, _ = vae_stage.restore_vae(vae_ref, self.mesh)
    latent_shape, _ = mar_stage.token_shapes(mar_config, records.DatasetMeta.load(tokens.path))
    model = mar_stage.build_model(mar_config, latent_shape)
    generate = mar_stage.make_generate(mar_config, model, vae, latent_shape)
    self._embed = jax.jit(lambda ecg, mask: align.crop_averaged(align_model, align_params, ecg, mask,
                                                                acfg)[1])
    self._generate = lambda emb, rng: generate(mar_params, mar_frozen, vae_params, emb, rng,
                                               conditioned=True)
    self.sources.update(align=dict(checkpoint=align_ref), vae=dict(checkpoint=vae_ref),
                        mar=dict(checkpoint=workdir.artifact("mar", "generator"),
                                 step=ckpt_lib.resolve(mar_ref)[1]))

  def predict(self, ecg, lead_mask):
    """ecg (B, 12, T), or (B, crops, 12, T') in the release's order -> (phenotypes (B, P),
    disease probabilities (B, D)), each from the model that has that head."""
    b = ecg.shape[0]
    phen, probs = np.zeros((b, 0), np.float32), np.zeros((b, 0), np.float32)
    for method, variables, predict in self.parts:
      phen_z, p = predict(variables, jnp.asarray(ecg), jnp.asarray(lead_mask))
      if method.model.predicts_phenotypes:
        phen = method.phenotypes(phen_z)
      if method.model.predicts_disease:
        probs = np.asarray(p)
    return phen, probs

  def generate(self, ecg, lead_mask, seed):
    if ecg.ndim == 4:   # the release's crops: the mean of their embeddings
      b, c = ecg.shape[:2]
      emb = self._embed(jnp.asarray(ecg.reshape(b * c, *ecg.shape[2:])),
                        jnp.asarray(np.repeat(lead_mask, c, axis=0))).reshape(b, c, -1).mean(1)
    else:
      emb = self._embed(jnp.asarray(ecg), jnp.asarray(lead_mask))
    return np.asarray(self._generate(emb, jax.random.PRNGKey(seed)))
