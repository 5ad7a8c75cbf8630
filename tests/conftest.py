"""Test setup: 8 simulated CPU devices, parsed absl flags, tiny configs."""

import os

# Must precede the first use of jax: every test sees 8 CPU devices and picks
# the ones it needs.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_platforms", "cpu")
flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags

import tensorflow_datasets as tfds  # noqa: E402

tfds.disable_progress_bar()


def pytest_configure(config):
  # wfdb's own use of pandas; nothing of ours.
  config.addinivalue_line("filterwarnings", "ignore:The inplace keyword")
  config.addinivalue_line("filterwarnings", "ignore::FutureWarning:wfdb")

from configs import mae as mae_config  # noqa: E402


def tiny_mae_config(**train):
  """A mae config small enough for a step in milliseconds."""
  config = mae_config.get_config("variant=tiny")
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, decoder_width=32,
                      decoder_depth=1, decoder_heads=2, decoder_mlp_dim=64, patch_size=8)
  config.data.update(cmr_frames=10, cmr_size=16, num_subjects=120)
  config.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2,
                      checkpoint_every=2)
  config.train.update(**train)
  return config


# Overrides that make `python -m cardionets_jax.main --config=configs/mae.py` tiny.
TINY_MAE_FLAGS = [
    "--config.model.width=32", "--config.model.depth=1", "--config.model.num_heads=2",
    "--config.model.mlp_dim=64", "--config.model.decoder_width=32", "--config.model.decoder_depth=1",
    "--config.model.decoder_heads=2", "--config.model.decoder_mlp_dim=64",
    "--config.data.cmr_frames=10", "--config.data.cmr_size=16", "--config.data.num_subjects=120",
    "--config.train.batch_size=8", "--config.train.warmup_steps=1",
]


@pytest.fixture
def tiny_config():
  return tiny_mae_config()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TINY_DATA = ["cmr_frames=8", "cmr_size=16", "num_subjects=120"]


def _data_flags(*prefixes):
  return [f"--config.{p}data.{k}" for p in prefixes for k in _TINY_DATA]


def _mae_flags(prefix):
  """The tiny mae model and its short run, for a config embedding it at `prefix`."""
  return ([f.replace("--config.", f"--config.{prefix}") for f in TINY_MAE_FLAGS
           if "batch_size" not in f and "warmup" not in f and ".data." not in f]
          + [f"--config.{prefix}train.num_steps=4", f"--config.{prefix}train.batch_size=8"])


def _align_flags(prefix):
  return (_mae_flags(prefix + "mae_config.")
          + [f"--config.{prefix}model.{k}" for k in ("width=32", "depth=1", "num_heads=2", "mlp_dim=64")]
          + [f"--config.{prefix}train.num_steps=4", f"--config.{prefix}train.batch_size=8",
             f"--config.{prefix}align.pca_dim=8"])


def _vae_flags(prefix):
  return [f"--config.{prefix}model.base_channels=4", f"--config.{prefix}train.num_steps=6",
          f"--config.{prefix}train.batch_size=8", f"--config.{prefix}train.eval_every=3",
          f"--config.{prefix}vae.adv_start=4", f"--config.{prefix}train.log_every=2"]


# Overrides that make `main --config=configs/tokenize.py` (and its upstream stages) tiny.
TINY_TOKENIZE_FLAGS = (
    _data_flags("", "vae_config.", "align_config.", "align_config.mae_config.")
    + _align_flags("align_config.") + _vae_flags("vae_config."))

TINY_MAR_MODEL = dict(width=32, depth=1, num_heads=2, mlp_dim=64, decoder_width=32, decoder_depth=1,
                      decoder_heads=2, decoder_mlp_dim=64, buffer_size=4, head_width=32, head_depth=1)
# The mar stage on a workdir that `TINY_TOKENIZE_FLAGS` made.
TINY_MAR_FLAGS = (
    [f"--config.model.{k}={v}" for k, v in TINY_MAR_MODEL.items()]
    + ["--config.model.patch=(2,2,2)", "--config.train.num_steps=6", "--config.train.batch_size=8",
       "--config.train.warmup_steps=1", "--config.train.log_every=2", "--config.sample.num_iter=3",
       "--config.sample.diffusion_steps=4", "--config.eval.num_subjects=6", "--config.eval.batch_size=4",
       "--config.eval.n_boot=50", "--config.mar.latent_stats_examples=32"]
    + _data_flags("")
    + [f.replace("--config.", "--config.tokenize_config.") for f in TINY_TOKENIZE_FLAGS])
# The finetune stage on the same workdir.
TINY_FINETUNE_FLAGS = (
    _data_flags("", "align_config.", "align_config.mae_config.") + _align_flags("align_config.")
    + ["--config.train.num_steps=6", "--config.train.batch_size=8", "--config.train.eval_every=3",
       "--config.finetune.label_fractions=(0.5,)", "--config.finetune.n_boot=50"])


def run_main(args, timeout=900):
  """`python -m cardionets_jax.main ARGS` on the real (1-device) CPU; fails with its stderr."""
  import subprocess
  import sys
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "-m", "cardionets_jax.main"] + list(args), cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def _log(workdir, name, result):
  (workdir / "logs").mkdir(exist_ok=True)
  (workdir / "logs" / f"{name}.stderr").write_text(result.stderr)


@pytest.fixture(scope="session")
def tokenized_workdir(tmp_path_factory):
  """A workdir where tiny mae, align, vae and tokenize have run (shared: read, don't modify)."""
  workdir = tmp_path_factory.mktemp("tokenized")
  _log(workdir, "tokenize", run_main(["--config=configs/tokenize.py", f"--workdir={workdir}"]
                                     + TINY_TOKENIZE_FLAGS))
  return workdir


@pytest.fixture(scope="session")
def trained_workdir(tokenized_workdir):
  """`tokenized_workdir` after tiny mar and finetune runs: everything screening reads."""
  workdir = tokenized_workdir
  _log(workdir, "mar", run_main(["--config=configs/mar.py", f"--workdir={workdir}"] + TINY_MAR_FLAGS))
  _log(workdir, "finetune", run_main(["--config=configs/finetune.py", f"--workdir={workdir}"]
                                     + TINY_FINETUNE_FLAGS))
  return workdir
