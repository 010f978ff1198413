"""The training device, precision and threads: chosen from what the machine has, forced on
request, and part of a stage's key only when they change the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.device import DeviceError, TrainRuntime, choose_runtime, native_bf16_cpu
from contract.cpu_features import cpu_flags, int8_kernel_family
from contract.cpu_quota import usable_cores

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@NO_CUDA
def test_auto_trains_on_the_cpu_without_a_gpu() -> None:
    assert choose_runtime("auto", flags={"avx2"}).device == "cpu"


@NO_CUDA
def test_forcing_cuda_without_a_gpu_is_refused_with_what_to_do() -> None:
    with pytest.raises(DeviceError, match="--device cpu"):
        choose_runtime("cuda")


def test_bf16_is_chosen_only_on_a_cpu_that_computes_it_natively() -> None:
    assert choose_runtime("cpu", flags={"avx2", "avx512f"}).precision == "fp32"
    assert choose_runtime("cpu", flags={"avx512_bf16"}).precision == "bf16"
    assert choose_runtime("cpu", flags={"amx_bf16", "amx_tile"}).precision == "bf16"


def test_a_forced_precision_wins_over_the_hardware() -> None:
    assert choose_runtime("cpu", "fp32", flags={"amx_bf16"}).precision == "fp32"
    assert choose_runtime("cpu", "bf16", flags=set()).precision == "bf16"


def test_the_environment_chooses_when_no_option_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFS_TRAIN_DEVICE", "cpu")
    monkeypatch.setenv("FFS_TRAIN_PRECISION", "bf16")
    assert choose_runtime() == TrainRuntime("cpu", "bf16", len(usable_cores()))


@pytest.mark.parametrize("device,precision", [("tpu", None), ("cpu", "int4")])
def test_unknown_devices_and_precisions_are_refused_naming_the_choices(
        device: str, precision: str | None) -> None:
    with pytest.raises(DeviceError, match="expected one of"):
        choose_runtime(device, precision)


def test_threads_default_to_the_cores_this_process_may_use() -> None:
    assert choose_runtime("cpu", "fp32").threads == len(usable_cores())
    assert choose_runtime("cpu", "fp32", threads=1).threads == 1


def test_only_a_precision_that_changes_the_numbers_enters_a_stage_key() -> None:
    assert TrainRuntime("cpu", "fp32", 2).key_part() == {}
    assert TrainRuntime("cuda", "fp32", 2).key_part() == {}
    assert TrainRuntime("cpu", "bf16", 2).key_part() == {"precision": "bf16"}


def test_bf16_autocast_runs_matrix_products_in_bf16_and_fp32_does_not() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with TrainRuntime("cpu", "bf16", 1).autocast():
        assert (a @ b).dtype == torch.bfloat16
    with TrainRuntime("cpu", "fp32", 1).autocast():
        assert (a @ b).dtype == torch.float32


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n", encoding="ascii")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert native_bf16_cpu(cpu_flags(info))
    assert cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("flags,machine,family", [
    ({"avx2", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"}, "x86_64", "amx-int8"),
    ({"avx2", "avx512bw", "avx512_vnni"}, "x86_64", "avx512-vnni"),
    ({"avx2", "avx_vnni"}, "x86_64", "avx-vnni"),
    ({"avx2", "fma"}, "x86_64", "avx2"),
    ({"asimd", "asimddp"}, "aarch64", "arm-dotprod"),
    (set(), "riscv64", "riscv64-generic"),
])
def test_the_int8_kernel_family_follows_the_cpu_flags(flags: set[str], machine: str,
                                                      family: str) -> None:
    assert int8_kernel_family(flags, machine) == family
