"""Linear-probe initialisation of the finetune heads (LP-FT, Kumar et al., ICLR 2022).

Before the first step, each linear head is set to the ridge probe of the starting encoder's
features on the method's labelled training subjects (alpha per target on the validation split,
as every probe here), and early stopping scores that start as step 0. Fine-tuning then starts
from heads that already read the features, instead of distorting the encoder to fit random heads,
and a method can never end below its own linear probe on validation. With a handful of labelled
subjects (1% of the tiny cohort is 9) this is the difference between a usable and a negative R2.

Phenotype head: the probe of the z-scored phenotypes. Disease head: the probe of the 0/1 label
(a linear probability model), turned into logits by the logit's tangent at the subset's
prevalence; a label without both classes in the subset keeps zero weights and the prior logit.
"""

import jax
import numpy as np

from cardionets_jax import evaluate
from cardionets_jax.data import pipeline
from cardionets_jax.evaluators import splits
from cardionets_jax.train import metrics as metrics_lib

PRIOR_CLIP = (0.02, 0.98)   # keeps the prior logit and its tangent finite


def _features_and_targets(features_fn, data_dir, split, fields, mesh, rules, subset=None):
  """(features (n, d), phenotypes (n, P), labels (n, L)) of `split`, only the subjects in the
  seeded `subset` (fraction, seed) when given."""
  feats, kept = splits.map_split(features_fn, data_dir, split, fields, mesh, rules,
                                 keep=("subject_id", "phenotypes", "labels"))
  rows = (np.ones(len(feats), bool) if subset is None else
          np.array([pipeline.in_subset(s, *subset) for s in kept["subject_id"]], bool))
  return np.asarray(feats)[rows], kept["phenotypes"][rows], kept["labels"][rows]


def _disease_logit_head(w, b, labels):
  """Linear-probability probes (w (d, L), b (L,)) -> logit heads, by the tangent of the logit at
  each label's prevalence: logit(p) ~ logit(pi) + (p - pi) / (pi (1 - pi))."""
  w_out, b_out = np.zeros_like(w), np.zeros_like(b)
  for j in range(labels.shape[1]):
    known = labels[:, j] >= 0
    prior = float(np.clip(labels[known, j].mean() if known.any() else 0.5, *PRIOR_CLIP))
    b_out[j] = np.log(prior / (1 - prior))
    if len(np.unique(labels[known, j])) == 2 and np.isfinite(b[j]):
      slope = 1.0 / (prior * (1 - prior))
      w_out[:, j], b_out[j] = w[:, j] * slope, b_out[j] + (b[j] - prior) * slope
  return w_out, b_out


def fit(features_fn, data_dir, split_names, fields, subset, mesh, rules, phen_mean, phen_std,
        alphas, tasks):
  """{head name: (kernel (d, n), bias (n,))} for the linear heads of `tasks`, fitted on the
  `subset` of split_names["train"] and selected on split_names["val"]."""
  train = _features_and_targets(features_fn, data_dir, split_names["train"], fields, mesh, rules,
                                subset)
  val = _features_and_targets(features_fn, data_dir, split_names["val"], fields, mesh, rules)
  z = lambda phen: (phen - phen_mean) / phen_std
  lab = lambda labels: np.where(labels >= 0, labels, np.nan).astype(np.float64)
  heads = {}
  if "phenotypes" in tasks:
    w, b, _ = evaluate.ridge_probe_weights((train[0], z(train[1])), (val[0], z(val[1])), alphas)
    heads["phenotype_head"] = (w, np.nan_to_num(b))     # an unfittable target predicts its mean
  if "disease" in tasks:
    w, b, _ = evaluate.ridge_probe_weights((train[0], lab(train[2])), (val[0], lab(val[2])),
                                           alphas)
    heads["disease_head"] = _disease_logit_head(w, b, train[2])
  metrics_lib.log("Heads initialised as ridge probes of the starting encoder on %d labelled "
                  "training subjects", len(train[0]))
  return heads


def put(params, heads):
  """`params` with each head's kernel and bias replaced, in the shardings (and dtypes) the
  replaced leaves had: every process holds the same values, so each builds its own shards."""
  def like(leaf, value):
    value = np.asarray(value, leaf.dtype).reshape(leaf.shape)
    return jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda index: value[index])

  out = dict(params)
  for name, (kernel, bias) in heads.items():
    out[name] = dict(params[name], kernel=like(params[name]["kernel"], kernel),
                     bias=like(params[name]["bias"], bias))
  return out
