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


class Screener:
  """`predict(ecg, lead_mask)` -> phenotypes, disease probabilities; `generate(...)` -> cines.

  The method is read from the finetune stage's hand-off in `workdir` (its best checkpoint and
  thresholds); the generator from the mar stage of `generator_workdir` (default: `workdir`), with
  the VAE and ECG encoder its tokens were made with. `predict.check_args` has checked that those
  stages finished.
  """

  def __init__(self, workdir, method=None, generate=True, generator_workdir=None):
    self.workdir, self.generator_workdir = workdir, generator_workdir or workdir
    methods = workdir.read_artifact("finetune", "methods.json")
    self.method_name = choose_method(methods, method)
    info = methods[self.method_name]
    self.config = ckpt_lib.saved_config(info["checkpoint"])
    self.data_dir, self.meta = datasets.resolve(self.config, workdir)
    self.mesh = mesh_lib.data_mesh(jax.devices()[:1])
    self.method = finetune.Method(self.config, info["init"], info["label_fraction"], info["seed"],
                                  self.meta, context_lib.Context(workdir))
    self.variables = self.method.restore_variables(info["checkpoint"], self.mesh)
    self.thresholds = np.array([info["thresholds"][n] for n in self.meta.label_names])
    self.references = self._reference_ranges()
    self.sources = {"finetune": dict(method=self.method_name, checkpoint=info["checkpoint"],
                                     step=info["best_step"])}
    predict = self.method.predictor()
    self._predict = jax.jit(lambda v, ecg, mask: predict(v, dict(ecg=ecg, lead_mask=mask)))
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
    phen_z, probs = self._predict(self.variables, jnp.asarray(ecg), jnp.asarray(lead_mask))
    phen = np.asarray(phen_z) * self.method.phen_std + self.method.phen_mean
    return phen, np.asarray(probs)

  def generate(self, ecg, lead_mask, seed):
    emb = self._embed(jnp.asarray(ecg), jnp.asarray(lead_mask))
    return np.asarray(self._generate(emb, jax.random.PRNGKey(seed)))
