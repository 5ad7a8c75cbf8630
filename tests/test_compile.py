"""Ahead-of-time compilation of the real train step, with a memory verdict."""

import pytest

from cardionets_jax import compile as compile_lib
from tests.conftest import stage_test_config


def test_compiles_for_8_devices_and_gives_a_verdict():
  config = stage_test_config("mae")
  config.mesh.shape.update(data=2, fsdp=2, tensor=2)
  devices = compile_lib.topology_devices("cpu:8")
  out = compile_lib.compile_train_step(config, devices, hbm_gib=16)
  assert out["devices"] == 8 and out["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert out["peak_bytes_per_device"] == (out["argument_bytes_per_device"] + out["output_bytes_per_device"]
                                          - out["alias_bytes_per_device"] + out["temp_bytes_per_device"])
  assert out["verdict"] == "fits" and 0 < out["peak_fraction_of_hbm"] < 1
  assert out["analytic_tflop_per_step"] > 0
  # The same program against a device with too little memory: a verdict, not a crash.
  small = compile_lib.compile_train_step(config, devices, hbm_gib=out["peak_bytes_per_device"] / 2**31)
  assert small["verdict"] == "does_not_fit" and small["peak_fraction_of_hbm"] > 1


def test_too_few_cpu_devices_says_how_to_get_them():
  with pytest.raises(ValueError, match="only 8 CPU devices; set XLA_FLAGS=.*device_count=64"):
    compile_lib.topology_devices("cpu:64")


def test_hbm_of_known_chips():
  assert compile_lib.hbm_bytes("TPU v5p") == 95 * 2**30
  assert compile_lib.hbm_bytes("TPU v5 lite") == 16 * 2**30
  assert compile_lib.hbm_bytes("NVIDIA H200") is None
