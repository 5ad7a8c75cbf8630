"""What held-out ECG embeddings separate: diseases by neighbourhood, drawn as PCA and t-SNE maps.

t-SNE places points by their neighbours, so its picture and the score beside it ask one question:
are a subject's nearest neighbours in the embedding (cosine, the space InfoNCE shapes) of its own
class? `neighbour_auroc` scores each subject by the share of its k nearest held-out neighbours
that carry the disease, and reports the AUROC of that score against the label.
"""

import numpy as np

from cardionets_jax import evaluate
from cardionets_jax import plots

NEIGHBOURS = 10
GROUP_COLOURS = {"healthy": "#9e9e9e", "both": "#6a1b9a", "unlabelled": "#e0e0e0"}
DISEASE_COLOURS = ("#d84315", "#1565c0", "#2e7d32", "#f9a825")


def _unit_rows(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbour_auroc(embeddings, labels, label_names, k=NEIGHBOURS):
  """{label: AUROC of "share of the k nearest neighbours (cosine) with the label"}; subjects
  whose label is missing (-1) neither score nor count as neighbours of that label."""
  x = _unit_rows(embeddings)
  similarity = x @ x.T
  np.fill_diagonal(similarity, -np.inf)             # a subject is not its own neighbour
  out = {}
  for j, name in enumerate(label_names):
    known = labels[:, j] >= 0
    y = labels[known, j]
    if len(np.unique(y)) < 2 or known.sum() <= k:
      out[name] = float("nan")
      continue
    sim = similarity[np.ix_(known, known)]
    nearest = np.argsort(-sim, axis=1)[:, :k]
    out[name] = float(evaluate.roc_auc(y, y[nearest].mean(1)))
  return out


def groups(labels, label_names):
  """One group name per subject: "healthy", the one disease it has, "both" or "unlabelled"."""
  out = []
  for row in labels:
    if (row < 0).any():
      out.append("unlabelled")
      continue
    has = [name for name, v in zip(label_names, row) if v == 1]
    out.append("healthy" if not has else has[0] if len(has) == 1 else "both")
  return np.asarray(out)


def tsne(embeddings, seed=0):
  """2-D t-SNE (scikit-learn) of the cosine geometry: unit rows, PCA initialisation."""
  from sklearn import manifold
  x = _unit_rows(embeddings)
  perplexity = float(min(30.0, (len(x) - 1) / 3.0))
  return manifold.TSNE(n_components=2, perplexity=perplexity, init="pca",
                       random_state=seed).fit_transform(x)


def figure(path, panels, phenotype_names, label_names):
  """One column per model, (title, embeddings, phenotypes, labels): a PCA coloured by LVEF over
  a t-SNE coloured by disease group, its neighbour AUROCs in the title."""
  plt = plots.pyplot()
  colour_name = "lvef" if "lvef" in phenotype_names else phenotype_names[0]
  colours = dict(GROUP_COLOURS, **dict(zip(label_names, DISEASE_COLOURS)))
  fig, axes = plt.subplots(2, len(panels), figsize=(4.4 * len(panels), 8.0), squeeze=False)
  for col, (title, emb, phen, labels) in enumerate(panels):
    mean, comps = evaluate.pca_fit(emb, 2)
    xy = (emb - mean) @ comps
    ax = axes[0, col]
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=phen[:, phenotype_names.index(colour_name)], s=10,
                    cmap="viridis")
    ax.set_title(f"{title}: PCA", fontsize=9)
    ax.set_xlabel("PC 1"), ax.set_ylabel("PC 2")
    fig.colorbar(sc, ax=ax, label=colour_name)
    ax = axes[1, col]
    xy, group = tsne(emb), groups(labels, label_names)
    for name in ("unlabelled", "healthy", "both") + tuple(label_names):   # diseases drawn on top
      sel = group == name
      if sel.any():
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, c=colours[name], label=f"{name} ({sel.sum()})")
    scores = neighbour_auroc(emb, labels, label_names)
    ax.set_title(f"{title}: t-SNE\n{NEIGHBOURS}-NN AUROC "
                 + ", ".join(f"{n} {v:.2f}" for n, v in scores.items()), fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
  fig.suptitle("Held-out ECG embeddings", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
