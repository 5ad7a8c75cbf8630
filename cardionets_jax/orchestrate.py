"""Runs a stage and whatever it needs: the graph is resolved before any trainer exists.

For each upstream stage a config reads (`Stage.upstream(config)`), a path in `config.init` is used
as it is; "" means this workdir's, which is trained first, with that stage's own config file at
the same variant and this run's data, when the workdir has not finished it. The log says which
stages run and why. A stage that finished with the same config is not run again.
"""

import jax

from cardionets_jax import stages
from cardionets_jax.stages import context as context_lib
from cardionets_jax.train import metrics as metrics_lib
from cardionets_jax.workdir import Workdir, config_digest


def plan(config, workdir):
  """[(stage, config, why)] in the order to run them, `config`'s own stage last."""
  steps, planned = [], set()

  def visit(cfg, why):
    for name in stages.get(cfg.stage).upstream(cfg):
      if cfg.init.get(name) or name in planned or workdir.finished(name):
        continue
      up = context_lib.config_for_upstream(name, cfg)
      planned.add(name)
      visit(up, f"{cfg.stage} reads it")
      steps.append((name, up, f"{cfg.stage} reads {name} and {workdir.stage_dir(name)} has not "
                              f"finished: training it with configs/{name}.py:variant="
                              f"{cfg.variant} and the {config.stage} run's data"))
    if cfg is config:
      steps.append((cfg.stage, cfg, why))

  visit(config, "asked for")
  return steps


def run(config, workdir, mesh=None):
  """Runs `config`'s stage in `workdir` (a path or Workdir), upstream stages first; returns its
  results. `mesh` (default: `config.mesh` over every device) lets tests run in process."""
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  steps = plan(config, workdir)
  if jax.process_count() > 1:  # every process must have seen the same plan before any writes
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("stage plan")
  metrics_lib.log("Stages to run in %s: %s", workdir.root,
                  "; ".join(f"{name} ({why})" for name, _, why in steps))
  results = None
  for name, cfg, _ in steps:
    results = run_stage(cfg, workdir, mesh)
  return results


def run_stage(config, workdir, mesh=None):
  """One stage, unless it already finished with this very config."""
  name = config.stage
  done = workdir.finished(name)
  if done and done.get("config_digest") == config_digest(config):
    metrics_lib.log("%s already finished in %s with this config: nothing to do", name,
                    workdir.stage_dir(name))
    return done.get("results")
  if done:
    metrics_lib.log("%s finished in %s with another config: running it again (resuming from its "
                    "checkpoints)", name, workdir.stage_dir(name))
  results = stages.get(name).run(config, context_lib.Context(workdir, mesh))
  if jax.process_index() == 0:
    workdir.mark_finished(name, config, results=_summary(results))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"{name} finished")
  return results


def _summary(results):
  """What the FINISHED marker keeps of a stage's results: the step and where they are."""
  results = results or {}
  return {k: results[k] for k in ("stage", "step", "checkpoint") if k in results}
