"""The workdir: the one place that knows where a run's files live.

    <root>/data/                     the synthetic cohort (built once)
    <root>/tokens/                   the tokenize stage's cached latents and ECG embeddings
    <root>/<stage>/checkpoints/      Orbax checkpoints (train state, data iterator, config, progress)
    <root>/<stage>/artifacts/<name>  what a stage hands on beside its checkpoints
    <root>/<stage>/results.json      the stage's evaluation, for people
    <root>/<stage>/<figure>.png      figures
    <root>/<stage>/FINISHED          written last: the stage is complete (and with which config)

finetune trains one sub-run per method under `<root>/finetune/<method>/`
(`Workdir.run_dir`). Nothing outside this module joins these paths.
"""

import hashlib
import json
import os

FINISHED = "FINISHED"


def config_digest(config):
  """A short hash of a config (a ConfigDict or a dict): what a finished stage was run with."""
  data = config.to_dict() if hasattr(config, "to_dict") else config
  text = json.dumps(data, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


MAX_NAME = 100


def safe_name(name):
  """A file name made of `name` that cannot leave its folder.

  Letters, digits, `-`, `_`, `=` and `.` are kept, anything else (separators, `..`, spaces) becomes
  `_`, leading dots are dropped and the length is capped; a name changed on the way gets 8 hex
  digits of its hash, so that `site/123` and `site_123`, or two long ids that share their first
  MAX_NAME characters, stay apart.
  """
  text = str(name)
  cleaned = "".join(c if c.isascii() and c.isalnum() or c in "-_.=" else "_" for c in text).lstrip(".")
  if cleaned == text and 0 < len(cleaned) <= MAX_NAME:
    return cleaned
  digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
  return f"{cleaned[:MAX_NAME] or 'record'}-{digest}"


def unique_names(names):
  """`safe_name` of each, made unique (`x`, `x_2`, ...; case-insensitively, for file systems
  that ignore case), in order."""
  used, out = set(), []
  for name in names:
    base = candidate = safe_name(name)
    k = 1
    while candidate.casefold() in used:
      k += 1
      candidate = f"{base}_{k}"
    used.add(candidate.casefold())
    out.append(candidate)
  return out


class Workdir:
  """Paths of one run. Stages, `predict`, sweeps and tests ask it; none joins paths itself."""

  def __init__(self, root):
    self.root = os.path.abspath(root)

  def __repr__(self):
    return f"Workdir({self.root!r})"

  def stage_dir(self, stage, run=None):
    """`<root>/<stage>` or, for a sub-run (one finetune method), `<root>/<stage>/<run>`."""
    parts = [self.root, stage] + ([safe_name(run)] if run else [])
    return os.path.join(*parts)

  def checkpoints(self, stage, run=None):
    return os.path.join(self.stage_dir(stage, run), "checkpoints")

  def quarantine(self, stage, run=None):
    """Where damaged checkpoint steps are moved aside (kept for inspection, never restored)."""
    return os.path.join(self.stage_dir(stage, run), "damaged_checkpoints")

  def results(self, stage):
    return os.path.join(self.stage_dir(stage), "results.json")

  def file(self, stage, name):
    """A figure or table the stage writes for people: `<root>/<stage>/<name>`."""
    return os.path.join(self.stage_dir(stage), name)

  def artifact(self, stage, name, run=None):
    """Something a stage hands on beside its checkpoints (the generator export, thresholds)."""
    return os.path.join(self.stage_dir(stage, run), "artifacts", name)

  def samples(self, stage):
    return os.path.join(self.stage_dir(stage), "samples")

  @property
  def data_root(self):
    return os.path.join(self.root, "data")

  @property
  def tokens(self):
    return os.path.join(self.root, "tokens")

  # ---- completion ------------------------------------------------------------------------------

  def finished(self, stage):
    """The FINISHED record of a stage ({"config_digest", ...}), or None."""
    path = os.path.join(self.stage_dir(stage), FINISHED)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def mark_finished(self, stage, config, **info):
    """Written last, atomically: a stage whose marker exists has all its outputs."""
    os.makedirs(self.stage_dir(stage), exist_ok=True)
    path = os.path.join(self.stage_dir(stage), FINISHED)
    write_json(path, dict(config_digest=config_digest(config), **info))

  def write_artifact(self, stage, name, value, run=None):
    write_json(self.artifact(stage, name, run), value)

  def read_artifact(self, stage, name, run=None):
    path = self.artifact(stage, name, run)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: the {stage} stage has not finished in "
                              f"{self.root}")
    with open(path) as f:
      return json.load(f)


def write_json(path, value):
  """Writes `value` as JSON through a temporary file and a rename: never half a file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, default=_json_default)
  os.replace(tmp, path)


def _json_default(value):
  import numpy as np
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")
