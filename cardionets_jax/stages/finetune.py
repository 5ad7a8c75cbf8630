"""Stage 5: phenotype regression and disease screening, with the paper's evaluation.

Each method is an encoder + two linear heads (phenotypes, z-scored; disease
logits), trained on a seeded fraction of the training subjects, early-stopped
on the validation split and evaluated on the test split:

  aligned  the ECG encoder from the align stage
  stmem    the ECG encoder from ST-MEM pre-training, not aligned (the release's `pretrain`)
  scratch  the same ECG encoder from random init
  cmr      the mae CMR encoder on the true cine (the upper bound)

`mode=linear` freezes the encoder (a linear probe); `mode=full` fine-tunes it
with layer-wise LR decay. Results of all methods go into one table.
"""

import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cardionets_jax import stages
from cardionets_jax.data import datasets
from cardionets_jax.data import synthetic
from cardionets_jax.evaluators import clinical
from cardionets_jax.evaluators import label_efficiency
from cardionets_jax.evaluators import splits
from cardionets_jax.models import layers
from cardionets_jax.stages import align
from cardionets_jax.stages import common
from cardionets_jax.stages import context as context_lib
from cardionets_jax.stages import mae
from cardionets_jax.stages import probe_heads
from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import loop
from cardionets_jax.train import metrics as metrics_lib

INITS = ("aligned", "stmem", "scratch", "cmr")
UPSTREAM_OF_INIT = {"aligned": "align", "stmem": "stmem", "cmr": "mae"}  # scratch reads none
ENCODER_SUBTREE = {"aligned": ("params", "ecg_encoder"), "stmem": ("params", "encoder"),
                   "cmr": ("params", "encoder")}
PHENOTYPE_HEADS = ("linear", "mlp")
HEAD_INITS = ("probe", "random")


def upstream(config):
  return tuple(dict.fromkeys(UPSTREAM_OF_INIT[i] for i in config.finetune.inits
                             if i in UPSTREAM_OF_INIT))


class Finetuner(nn.Module):
  """An encoder (ECG or CMR) and the heads of `tasks`: phenotypes (linear, or the release's MLP
  width -> 256 -> GELU -> 128 -> GELU -> P) and disease logits (linear). A task left out has no
  head and predicts an empty (B, 0) array."""
  encoder: nn.Module
  num_phenotypes: int
  num_labels: int
  input: str = "ecg"
  tasks: tuple = ("phenotypes", "disease")
  phenotype_head: str = "linear"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.phenotype_head not in PHENOTYPE_HEADS:
      raise ValueError(f"phenotype_head must be one of {PHENOTYPE_HEADS}, not {self.phenotype_head!r}")
    dense = lambda n, name: layers.logical_dense(n, ("embed", None), dtype=self.dtype, name=name)
    if self.predicts_phenotypes:
      widths = (256, 128) if self.phenotype_head == "mlp" else ()
      self.phenotype_layers = [dense(w, f"phenotype_hidden{i}") for i, w in enumerate(widths)]
      self.phenotype_head_out = dense(self.num_phenotypes, "phenotype_head")
    if self.predicts_disease:
      self.disease_head = dense(self.num_labels, "disease_head")

  def features(self, x, lead_mask=None, train=False):
    if self.input == "ecg":
      return self.encoder(x, lead_mask, train)
    return self.encoder(x, train)

  @property
  def predicts_phenotypes(self):
    return "phenotypes" in self.tasks and self.num_phenotypes > 0

  @property
  def predicts_disease(self):
    return "disease" in self.tasks and self.num_labels > 0

  def heads(self, features):
    b = features.shape[0]
    phen = logits = jnp.zeros((b, 0), jnp.float32)
    if self.predicts_phenotypes:
      h = features
      for layer in self.phenotype_layers:
        h = nn.gelu(layer(h), approximate=False)
      phen = self.phenotype_head_out(h).astype(jnp.float32)
    if self.predicts_disease:
      logits = self.disease_head(features).astype(jnp.float32)
    return phen, logits

  def __call__(self, x, lead_mask=None, train=False):
    return self.heads(self.features(x, lead_mask, train))


def method_name(init, mode, fraction, seed):
  return f"{init}-{mode}-labels{fraction:g}-seed{seed}"


def phenotype_loss(phen_pred, phenotypes_z):
  """Mean squared error over present (non-NaN) z-scored phenotypes."""
  present = ~jnp.isnan(phenotypes_z)
  sq = jnp.where(present, jnp.square(phen_pred - jnp.nan_to_num(phenotypes_z)), 0.0)
  return jnp.sum(sq) / jnp.maximum(jnp.sum(present), 1)


def disease_loss(logits, labels):
  """Binary cross-entropy over known labels (-1: unknown)."""
  known = labels >= 0
  bce = optax.sigmoid_binary_cross_entropy(logits, jnp.clip(labels, 0, 1).astype(jnp.float32))
  return jnp.sum(jnp.where(known, bce, 0.0)) / jnp.maximum(jnp.sum(known), 1)


def ecg_encoder_config(config, init, context=None):
  """The config the ECG encoder is built from: the finetune config itself when it describes its
  encoder (`model`: converted weights), else the config saved with the checkpoint `init` starts
  from. `scratch` (and the shape of `cmr`'s unused ECG input) take the aligned encoder's, or the
  ST-MEM one's, so that the baselines differ in their initial weights only."""
  if "model" in config:
    return config
  reads = upstream(config)
  stage = UPSTREAM_OF_INIT.get(init)
  if stage not in ("align", "stmem"):
    stage = next((s for s in ("align", "stmem") if s in reads), "align")
  return context_lib.upstream_config(stage, config, context if stage in reads else None)


class Method:
  """One (init, mode, label fraction, seed): its task, training and predictions."""

  def __init__(self, config, init, fraction, seed, meta, context=None, data_dir=None, tasks=None):
    """`context` resolves the upstream checkpoints (none: shape-only use, random encoders).
    `tasks`: the heads of this model (default `finetune.tasks`; one per model with
    `finetune.per_task`), named in `self.name` when given."""
    if init not in INITS:
      raise ValueError(f"finetune.inits holds {init!r}; known: {INITS}")
    self.config, self.init, self.fraction, self.seed = config, init, fraction, seed
    f = config.finetune
    if f.head_init not in HEAD_INITS:
      raise ValueError(f"finetune.head_init is {f.head_init!r}; known: {HEAD_INITS}")
    self.mode, self.tasks = f.mode, tuple(tasks or f.tasks)
    self.name = method_name(init, self.mode, fraction, seed) + (f"-{'+'.join(tasks)}" if tasks
                                                               else "")
    self.context, self.data_dir, self.meta = context, data_dir, meta
    dtype = jnp.dtype(config.train.compute_dtype)
    self.input = "cmr" if init == "cmr" else "ecg"
    self.upstream_name = UPSTREAM_OF_INIT.get(init)
    self.encoder_config = ecg_encoder_config(config, init, context)
    if self.input == "cmr":
      reads_mae = "mae" in upstream(config)
      encoder = mae.build_encoder(
          context_lib.upstream_config("mae", config, context if reads_mae else None), dtype)
    else:
      encoder = align.build_ecg_encoder(self.encoder_config, dtype)
    self.depth = encoder.depth
    self.model = Finetuner(encoder, len(meta.phenotype_names), len(meta.label_names), self.input,
                           self.tasks, f.phenotype_head, dtype)
    self.phen_mean = np.asarray(meta.phenotype_mean, np.float32)
    self.phen_std = np.asarray(meta.phenotype_std, np.float32)

  @property
  def spec(self):
    d = self.config.data
    inputs = ({"ecg": ((12, synthetic.ECG_SAMPLES), jnp.float32), "lead_mask": ((12,), jnp.uint8)}
              if self.input == "ecg" else
              {"cmr": ((d.cmr_frames, d.cmr_size, d.cmr_size), jnp.uint8)})
    return dict(inputs, phenotypes=((len(self.meta.phenotype_names),), jnp.float32),
                labels=((len(self.meta.label_names),), jnp.int8))

  @property
  def fields(self):
    return tuple(self.spec)

  def _dummy(self):
    c = self.config
    if self.input == "ecg":
      return (jnp.zeros((1, 12, self.encoder_config.model.num_samples)),
              jnp.ones((1, 12), jnp.uint8))
    return (jnp.zeros((1, c.data.cmr_frames, c.data.cmr_size, c.data.cmr_size), jnp.uint8), None)

  def _init_all(self, rng):
    return self.model.init(rng, *self._dummy())["params"]

  def task(self):
    linear = self.mode == "linear"
    f = self.config.finetune
    model, num_samples = self.model, self.encoder_config.model.num_samples

    def init_params(rng):
      params = self._init_all(rng)
      return {k: v for k, v in params.items() if not (linear and k == "encoder")}

    def init_frozen():
      return {"encoder": self._init_all(jax.random.PRNGKey(0))["encoder"]} if linear else {}

    def loss_fn(params, frozen, batch, rng, step):
      variables = {**jax.lax.stop_gradient(frozen), **params}
      if self.input == "ecg":
        ecg, lead_mask = align.augment(batch["ecg"], batch["lead_mask"], rng, num_samples,
                                       f.noise_std, f.lead_dropout)
        phen, logits = model.apply({"params": variables}, ecg, lead_mask, train=True)
      else:
        phen, logits = model.apply({"params": variables}, batch["cmr"], train=True)
      loss, metrics = 0.0, {}
      if model.predicts_phenotypes:
        z = (batch["phenotypes"] - self.phen_mean) / self.phen_std
        metrics["phenotype_loss"] = phenotype_loss(phen, z)
        loss += f.phenotype_weight * metrics["phenotype_loss"]
      if model.predicts_disease:
        metrics["disease_loss"] = disease_loss(logits, batch["labels"])
        loss += f.disease_weight * metrics["disease_loss"]
      return loss, metrics

    load = None if self.init == "scratch" else (
        lambda abstract, mesh, rules: {"encoder": self._upstream_encoder(abstract["encoder"])})
    lr_scales = None
    if not linear and self.config.finetune.layer_decay < 1.0:
      lr_scales = self._layer_decay_scales
    return loop.Task(init_params=init_params, loss_fn=loss_fn, spec=self.spec,
                     init_frozen=init_frozen, load_frozen=load if linear else None,
                     load_params=None if linear else load, lr_scales=lr_scales,
                     subset=(self.fraction, self.seed))

  def restore_variables(self, reference, mesh):
    """The method's encoder and heads from one of its checkpoints (in linear mode the encoder is
    in the frozen tree), replicated over `mesh`."""
    linear = self.mode == "linear"
    part = lambda keep: lambda rng: {k: v for k, v in self._init_all(rng).items() if keep(k)}
    params, _ = common.restore_params(reference, ("params",),
                                      part(lambda k: not (linear and k == "encoder")), mesh)
    if not linear:
      return params
    frozen, _ = common.restore_params(reference, ("frozen",), part(lambda k: k == "encoder"), mesh)
    return {**frozen, **params}

  def _layer_decay_scales(self, params):
    """decay^(depth + 1 - layer): embeddings layer 0, block i layer i + 1, heads depth + 1."""
    decay, depth = self.config.finetune.layer_decay, self.depth

    def scale(path, leaf):
      keys = [getattr(k, "key", str(k)) for k in path]
      if not keys or keys[0] != "encoder":
        layer = depth + 1
      else:
        block = next((int(m.group(1)) for k in keys if (m := re.fullmatch(r"block(\d+)", k))), None)
        layer = block + 1 if block is not None else (depth + 1 if "ln_final" in keys else 0)
      return jnp.asarray(decay ** (depth + 1 - layer), leaf.dtype)

    return jax.tree_util.tree_map_with_path(scale, params)

  def _upstream_encoder(self, abstract_encoder):
    source = self.context.upstream(self.upstream_name, self.config)
    restored, step = ckpt_lib.restore_subtree(source.reference, ENCODER_SUBTREE[self.init],
                                              abstract_encoder)
    metrics_lib.log("%s: encoder from %s (step %d)", self.name, source.path, step)
    return restored

  # ---- evaluation ----------------------------------------------------------------------------

  def _features(self, variables, batch, pre_cropped=False):
    """The encoder's features, averaged over `finetune.eval_crops` crops of batch["ecg"]
    (B, 12, T); `pre_cropped`: over the crops given, (B, crops, 12, T') (the release's
    preprocessing order)."""
    model = self.model
    if self.input != "ecg":
      return model.apply({"params": variables}, batch["cmr"], method=model.features)
    ecg = batch["ecg"]
    crops = ([ecg[:, i] for i in range(ecg.shape[1])] if pre_cropped else
             align.eval_crops(ecg, self.encoder_config.model.num_samples,
                              self.config.finetune.eval_crops))
    feats = [model.apply({"params": variables}, crop, batch["lead_mask"], method=model.features)
             for crop in crops]
    return jnp.mean(jnp.stack(feats), axis=0)

  def predictor(self, pre_cropped=False):
    """jit(variables, batch) -> (phenotype z-scores, disease probabilities) (see `_features`)."""
    model = self.model

    def predict(variables, batch):
      feats = self._features(variables, batch, pre_cropped)
      phen, logits = model.apply({"params": variables}, feats, method=model.heads)
      return phen, jax.nn.sigmoid(logits)

    return jax.jit(predict)

  def _probe_heads(self, trainer):
    """fit's `start`: the linear heads set to ridge probes of the starting encoder."""
    features = jax.jit(self._features)
    names = {name: self.split(name) for name in ("train", "val")}
    # The heads the model has that read the features (the MLP's last layer reads its hidden one).
    tasks = [t for t, linear in (
        ("phenotypes", self.model.predicts_phenotypes and self.model.phenotype_head == "linear"),
        ("disease", self.model.predicts_disease)) if linear]

    def start(state):
      heads = probe_heads.fit(
          lambda batch: features({**state.frozen, **state.params}, batch), self.data_dir, names,
          self.fields[:-2], (self.fraction, self.seed), trainer.mesh, trainer.rules,
          self.phen_mean, self.phen_std, self.config.finetune.probe_alphas, tasks)
      return state.replace(params=probe_heads.put(state.params, heads))

    return start

  def predictions(self, predict, variables, split, trainer):
    (phen_z, probs), kept = splits.map_split(
        lambda b: predict(variables, b), self.data_dir, self.split(split),
        self.fields[:-2], trainer.mesh, trainer.rules, keep=("phenotypes", "labels"))
    return dict(phenotypes_pred=self.phenotypes(phen_z), probs=probs,
                phenotypes=kept["phenotypes"], labels=kept["labels"])

  def phenotypes(self, phen_z):
    """Predicted z-scores -> phenotypes in their units ((n, 0) from a model without the head)."""
    if not self.model.predicts_phenotypes:
      return np.zeros((phen_z.shape[0], 0), np.float32)
    return np.asarray(phen_z) * self.phen_std + self.phen_mean


  def split(self, name):
    return splits.choose(self.meta, name, self.config.data, need_cmr=self.input == "cmr")

  def run(self):
    """Trains (or resumes), restores the best validation step, predicts val and test.
    Returns (val predictions, test predictions, best step, checkpoint reference, stopped early)."""
    cfg = self.config.copy_and_resolve_references()
    cfg.seed = self.seed
    trainer = loop.Trainer(cfg, self.context.workdir, "finetune", self.data_dir, self.task(),
                           run=self.name, mesh=self.context.mesh)
    predict = self.predictor()
    variables = lambda state: {**state.frozen, **state.params}
    score = lambda state, step: clinical.selection_score(
        self.predictions(predict, variables(state), "val", trainer), self.tasks)
    start = self._probe_heads(trainer) if self.config.finetune.head_init == "probe" else None
    state = trainer.fit(early_stopping=loop.EarlyStopping(score, self.config.finetune.patience),
                        start=start)
    stopped = bool(trainer.progress.get("stopped")) and int(state.step) < cfg.train.num_steps
    best = trainer.progress.get("best_step")
    if best is not None and best != int(state.step):
      state = trainer.restore_step(best)
    best = int(state.step)
    final = variables(state)
    val = self.predictions(predict, final, "val", trainer)
    test = self.predictions(predict, final, "test", trainer)
    return val, test, best, f"{trainer.checkpoint_dir}/{best}", stopped


def _merged(parts, split):
  """One method's predictions of `split` from its models: joint heads (one part), or one model
  per task (`finetune.per_task`). A task no model predicts is None."""
  pick = lambda has, key: next((p[split][key] for m, p in parts if has(m.model)), None)
  first = parts[0][1][split]
  return dict(phenotypes=first["phenotypes"], labels=first["labels"],
              phenotypes_pred=pick(lambda m: m.predicts_phenotypes, "phenotypes_pred"),
              probs=pick(lambda m: m.predicts_disease, "probs"))


def _train_and_report(config, init, fraction, seed, meta, context, data_dir):
  """Trains one method (its one model, or one per task) and reports it on the test split.
  Returns (name, results entry, merged test predictions, methods.json entry)."""
  f = config.finetune
  tasks = [(t,) for t in f.tasks] if f.per_task else [None]
  parts = []
  for t in tasks:
    method = Method(config, init, fraction, seed, meta, context, data_dir, tasks=t)
    metrics_lib.log("Fine-tuning %s", method.name)
    val, test, best_step, checkpoint, stopped = method.run()
    parts.append((method, dict(val=val, test=test, best_step=best_step, checkpoint=checkpoint,
                               stopped=stopped)))
  method = parts[0][0]
  val, test = _merged(parts, "val"), _merged(parts, "test")
  report = clinical.report_method(method, val, test, meta, f.n_boot, f.ci_method)
  by_part = lambda key: (parts[0][1][key] if len(parts) == 1
                         else {m.tasks[0]: p[key] for m, p in parts})
  name = method_name(init, method.mode, fraction, seed)
  result = dict(report, best_step=by_part("best_step"), stopped_early=by_part("stopped"),
                splits=dict(early_stopping=method.split("val"), thresholds=method.split("val"),
                            metrics=method.split("test")))
  handed = dict(init=init, mode=method.mode, label_fraction=fraction, seed=seed,
                best_step=by_part("best_step"), checkpoint=by_part("checkpoint"),
                thresholds={d: v["threshold"] for d, v in report.get("diseases", {}).items()})
  return name, result, test, handed


def run(config, context):
  start = time.time()
  workdir = context.workdir
  data_dir, meta = datasets.resolve(config, workdir)
  f = config.finetune
  for split in ("train", "val", "test"):  # a missing split fails here, before any training
    for init in f.inits:
      splits.choose(meta, split, config.data, need_cmr=init == "cmr")
  results, test_preds, handed_on = {}, {}, {}
  for fraction in f.label_fractions:
    for seed in f.seeds:
      for init in f.inits:
        name, result, test, handed = _train_and_report(config, init, fraction, seed, meta,
                                                       context, data_dir)
        results[name], handed_on[name] = result, handed
        test_preds.setdefault(name, test)
  out = dict(stage="finetune", variant=config.variant, tasks=list(f.tasks), methods=results,
             upstream={name: context.upstream(name, config).describe(config.data)
                       for name in upstream(config)},
             wall_time_s=time.time() - start)
  out["label_efficiency"] = label_efficiency.compare(test_preds, results, meta.label_names, f.n_boot)
  if jax.process_index() == 0:
    # What screening reads: each method's best checkpoint and its decision thresholds.
    workdir.write_artifact("finetune", "methods.json", handed_on)
    table = clinical.write_tables(workdir, results, meta)
    clinical.write_figures(workdir, test_preds, meta)
    metrics_lib.log("Fine-tuning results (test split):\n%s", table)
    label_efficiency.save_predictions(workdir.file("finetune", label_efficiency.PREDICTIONS),
                                      test_preds)
    with open(workdir.file("finetune", "label_efficiency.md"), "w") as fh:
      fh.write(label_efficiency.table(out["label_efficiency"]) + "\n")
    label_efficiency.figure(workdir.file("finetune", "label_efficiency.png"),
                            out["label_efficiency"])
  common.write_results(workdir, "finetune", out)
  return out


STAGE = stages.Stage(name="finetune", upstream=upstream,
                     hands_on="artifacts/methods.json: each method's best checkpoint and "
                              "decision thresholds", run=run)
