"""Orbax checkpoints: train state + Grain iterator state + config + training progress, together.

A checkpoint reference (`config.init.<stage>`, a `--workdir` stage) is a stage's checkpoints
directory or one step inside it; `resolve` turns it into (directory, step), `saved_config` reads
the config the stage was trained with, `restore_subtree` reads part of its train state.
"""

import json
import logging
import os
import shutil

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cardionets_jax.train import fingerprint


COMMIT_MARKER = "commit_success.txt"  # Orbax writes it last in every step folder


class DamagedCheckpoint(ValueError):
  """A step whose restored arrays differ from the fingerprints saved with them."""


def verify(reference, saved, restored, prefix=""):
  """Raises DamagedCheckpoint naming the arrays of `restored` (the state, or its subtree at
  `prefix`) that differ from `saved` fingerprints; warns when the step has none (older saves)."""
  if not saved:
    logging.warning("Checkpoint %s holds no array fingerprints (saved by an older version): "
                    "restored unverified", reference)
    return
  bad = fingerprint.mismatches(saved, restored, prefix)
  if bad:
    raise DamagedCheckpoint(f"Checkpoint {reference}: {len(bad)} array(s) differ from the "
                            f"fingerprints saved with them: {', '.join(bad[:5])}"
                            f"{' ...' if len(bad) > 5 else ''}")


class Checkpointer:
  """One CheckpointManager per stage (or finetune method).

  Keeps the last `keep` steps and, when saves carry a validation `score`, the best one too: the
  best checkpoint and the early-stopping progress live in the manager, atomic with the state.
  """

  def __init__(self, directory, keep=2, async_save=True):
    self.directory = os.path.abspath(directory)
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["score"], n=1,
                                  keep_checkpoints_without_metrics=False)])
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=async_save,
                                             preservation_policy=policy))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step, state, data_iterator, config, progress=None, score=None):
    """`progress` (JSON: early-stopping history) is restored with the state; `score` (higher is
    better) makes the step a candidate for the kept best checkpoint."""
    args = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()),
                progress=ocp.args.JsonSave(progress or {}),
                fingerprints=ocp.args.JsonSave(fingerprint.of_tree(state)))
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = None if score is None else {"score": float(score)}
    self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics)

  def restore(self, step, abstract_state, data_iterator=None):
    """Restores (state, progress) into the shardings carried by `abstract_state`'s leaves,
    checked against the fingerprints saved with them (DamagedCheckpoint when they differ)."""
    args = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    verify(f"{self.directory}/{step}", read_item(self.manager, step, "fingerprints"),
           restored["state"])
    return restored["state"], self.progress(step)

  def progress(self, step):
    return saved_progress(f"{self.directory}/{step}")

  def restore_latest(self, abstract_state, data_iterator, quarantine):
    """The newest step that restores; damaged newer steps are moved to `quarantine` with a
    warning naming both. Returns (state, progress, step), or (None, {}, None) when none exist."""
    for step in reversed(self.all_steps()):
      try:
        self._check_committed(step)
        state, progress = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # a truncated array file, a missing commit marker...
        older = [s for s in self.all_steps() if s < step]
        logging.warning("Checkpoint %s/%d cannot be restored (%s: %s); moving it to %s and "
                        "resuming from %s", self.directory, step, type(e).__name__,
                        str(e).splitlines()[0][:300] if str(e) else "", quarantine,
                        f"{self.directory}/{older[-1]}" if older else "scratch")
        self._quarantine(step, quarantine)
        continue
      return state, progress, step
    return None, {}, None

  def _check_committed(self, step):
    """Orbax marks a step finished (on every file system) with a commit file in its folder; a
    step without one was damaged after the fact or never finished."""
    path = os.path.join(self.directory, str(step))
    if not (os.path.exists(os.path.join(path, COMMIT_MARKER))
            and ocp.utils.is_checkpoint_finalized(path)):
      raise FileNotFoundError(f"{path} has no commit marker ({COMMIT_MARKER})")

  def _quarantine(self, step, quarantine):
    if jax.process_index() == 0:
      os.makedirs(quarantine, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), os.path.join(quarantine, str(step)))
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def resolve(reference):
  """A checkpoints directory or one step in it -> (checkpoints directory, step)."""
  path = os.path.abspath(reference)
  if os.path.basename(path).isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(os.path.basename(path))
  step = latest_step(path)
  if step is None:
    raise FileNotFoundError(f"No finished checkpoint at {path} (a stage's checkpoints/ folder "
                            "or one step in it)")
  return path, step


def latest_step(checkpoint_dir):
  """The newest finished step under a checkpoints directory (or a step dir), or None."""
  checkpoint_dir = os.path.abspath(checkpoint_dir)
  if os.path.basename(checkpoint_dir).isdigit():
    return int(os.path.basename(checkpoint_dir)) if os.path.isdir(checkpoint_dir) else None
  if not os.path.isdir(checkpoint_dir):
    return None
  return ocp.CheckpointManager(checkpoint_dir).latest_step()


def saved_config(reference):
  """The config a checkpoint was trained with (read through Orbax, not its files)."""
  directory, step = resolve(reference)
  config = read_item(reader(directory), step, "config")
  if config is None:
    raise FileNotFoundError(f"Checkpoint {directory}/{step} holds no config")
  return ml_collections.ConfigDict(config)


def require_fields(saved, current, reference, sections):
  """Refuses a checkpoint whose saved config lacks a field that this version's config has in
  `sections`: saved before the field existed, its model would be rebuilt from today's defaults
  and fail to restore with an error about shapes, or restore into another model."""
  missing = [f"{section}.{key}" for section in sections for key in current.get(section, {})
             if key not in saved.get(section, {})]
  if missing:
    raise ValueError(f"{reference} was saved by an older version of cardionets-jax: its config has "
                     f"no {', '.join(missing)}. Re-run its stage (or convert the release's weights) "
                     "to rebuild it")


def saved_progress(reference):
  """The early-stopping progress saved with a checkpoint ({} when none)."""
  directory, step = resolve(reference)
  return read_item(reader(directory), step, "progress") or {}


def reader(directory):
  """A manager for reading a checkpoints directory, with handlers for every item."""
  return ocp.CheckpointManager(
      directory, item_handlers=dict({name: ocp.JsonCheckpointHandler() for name in JSON_ITEMS},
                                    state=ocp.PyTreeCheckpointHandler()))


JSON_ITEMS = ("config", "progress", "fingerprints")


def read_item(manager, step, name):
  """A JSON item (`config`, `progress`, `fingerprints`) of a step, or None when it has none."""
  try:
    return manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))[name]
  except (KeyError, FileNotFoundError):
    return None


RUN_LENGTH = ("train.num_steps",)  # may change on resume: training longer is what resume is for


def config_changes(saved, current, ignore=RUN_LENGTH):
  """'key: saved -> current' for every config field that differs, but the run length."""
  def flat(tree, prefix=""):
    out = {}
    for key, value in (tree.to_dict() if hasattr(tree, "to_dict") else tree).items():
      if isinstance(value, dict):
        out.update(flat(value, f"{prefix}{key}."))
      else:
        out[f"{prefix}{key}"] = json.dumps(value, default=str)
    return out
  a, b = flat(saved), flat(current)
  return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}"
          for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_subtree(reference, path, abstract_target):
  """Restores `state.<path>` (e.g. ('params', 'encoder')) of a checkpoint into the shardings of
  `abstract_target`, reading nothing else. Returns (values, step)."""
  directory, step = resolve(reference)
  target = abstract_target
  for key in reversed(path):
    target = {key: target}
  restored = reader(directory).restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))["state"]
  for key in path:
    restored = restored[key]
  verify(f"{directory}/{step}", read_item(reader(directory), step, "fingerprints"), restored,
         "/".join(path))
  logging.info("Restored %s from %s (step %d)", "/".join(path), directory, step)
  return restored, step
