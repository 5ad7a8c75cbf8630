"""Ridge probes: how linearly a frozen representation reads each phenotype."""

from cardionets_jax import evaluate
from cardionets_jax.evaluators import splits

TRAIN_LIMIT = 4096  # training subjects the probe is fitted on (a linear fit needs no more)


def features_by_role(features, meta, data_config, roles=("fit", "select", "score"),
                     need_cmr=True):
  """({role: split}, {role: features(split, limit)}): the probe's inputs, the fit split capped at
  TRAIN_LIMIT subjects. `features(split, limit)` -> (features or a tuple of them, phenotypes)."""
  chosen = {r: s for r, s in splits.roles(meta, data_config, need_cmr).items() if r in roles}
  return chosen, {role: features(split, TRAIN_LIMIT if role == "fit" else None)
                  for role, split in chosen.items()}


def phenotype_probe(data, roles, alphas, names):
  """`data[role] = (features (n, d), phenotypes (n, P))` for the roles fit / select / score
  (split names in `roles`). Ridge on fit, alpha chosen on select by R2, R2 on score; the score
  split's predictions (n, P) beside it, for paired comparisons."""
  predict, chosen = evaluate.fit_ridge_probe(data["fit"], data["select"], alphas=tuple(alphas))
  features, targets = data["score"]
  predictions = predict(features)
  per = evaluate.ridge_scores(targets, predictions, chosen, names)
  return dict(r2={k: v["r2"] for k, v in per.items()}, alpha={k: v["alpha"] for k, v in per.items()},
              n_score=max((v["n_test"] for v in per.values()), default=0), splits=dict(roles),
              predictions=predictions)


def fitted_probe(data, alphas):
  """The probe fitted on `data["fit"]` (alpha on `data["select"]`): predict(features) -> (n, P)."""
  predict, _ = evaluate.fit_ridge_probe(data["fit"], data["select"], alphas=tuple(alphas))
  return predict
