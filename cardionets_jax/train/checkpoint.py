"""Orbax checkpoints: train state + Grain iterator state + config, together."""

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """One CheckpointManager per stage, under `<workdir>/<stage>/checkpoints`."""

  def __init__(self, directory, keep=2, async_save=True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, data_iterator, config):
    args = dict(state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config.to_dict()))
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**args))

  def restore(self, step, abstract_state, data_iterator=None):
    """Restores into the shardings carried by `abstract_state`'s leaves."""
    args = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def latest_step(checkpoint_dir):
  """The newest finished step under a checkpoints directory (or a step dir), or None."""
  checkpoint_dir = os.path.abspath(checkpoint_dir)
  if os.path.basename(checkpoint_dir).isdigit():
    return int(os.path.basename(checkpoint_dir)) if os.path.isdir(checkpoint_dir) else None
  if not os.path.isdir(checkpoint_dir):
    return None
  return ocp.CheckpointManager(checkpoint_dir).latest_step()


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_subtree(checkpoint_dir, path, abstract_target, step=None):
  """Restores `state.<path>` (e.g. ('params', 'encoder')) from a stage's
  checkpoints into the shardings of `abstract_target`, reading nothing else.

  `checkpoint_dir` is a stage's checkpoints directory or one step inside it.
  """
  checkpoint_dir = os.path.abspath(checkpoint_dir)
  if os.path.basename(checkpoint_dir).isdigit():
    step, checkpoint_dir = int(os.path.basename(checkpoint_dir)), os.path.dirname(checkpoint_dir)
  manager = ocp.CheckpointManager(checkpoint_dir)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {checkpoint_dir}")
  state_dir = os.path.join(checkpoint_dir, str(step), "state")
  target = abstract_target
  for key in reversed(path):
    target = {key: target}
  restored = _partial_restore(state_dir, target)
  for key in path:
    restored = restored[key]
  logging.info("Restored %s from %s (step %d)", "/".join(path), checkpoint_dir, step)
  return restored, step


def _partial_restore(state_dir, target):
  """Reads only the leaves present in `target`."""
  checkpointer = ocp.PyTreeCheckpointer()
  return checkpointer.restore(
      state_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
