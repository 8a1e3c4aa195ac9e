"""CPU feature report and precision selection (pipeline.device), on whatever CPU runs the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.device import (
    CpuReport,
    autocast,
    cpu_report,
    native_bf16,
    parse_cpuinfo,
    read_cpu_report,
    use_bf16,
)
from pipeline.params import ParamsError, load_params, validate

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx fma avx2 bmi2 sha_ni vaes
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx avx2 avx512f avx512dq avx512_vnni avx512_bf16 amx_bf16 avx_vnni amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd sve bf16 i8mm
"""


def test_cpuinfo_flags_are_read_not_assumed() -> None:
    assert parse_cpuinfo(ZEN3) == ("AMD EPYC 7B13", ("avx2",))
    model, flags = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert flags == (
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    )
    assert parse_cpuinfo(GRAVITON3)[1] == ("bf16",)
    assert parse_cpuinfo("") == ("", ())


def test_report_says_what_the_cpu_offers() -> None:
    amd, intel, arm = (read_cpu_report(text) for text in (ZEN3, SAPPHIRE_RAPIDS, GRAVITON3))
    assert not amd.native_bf16 and not amd.native_int8
    assert intel.native_bf16 and intel.native_int8 and arm.native_bf16
    assert "native bf16 no" in amd.summary() and "AMX bf16" in intel.summary()
    tags = intel.tags()
    assert tags["cpu.native_bf16"] == "true" and "amx_bf16" in tags["cpu.features"]
    assert tags["cpu.torch_capability"] == torch.backends.cpu.get_cpu_capability()


def test_this_machine_matches_its_own_cpuinfo() -> None:
    """The report of this machine agrees with a plain reading of /proc/cpuinfo."""
    report = cpu_report()
    assert isinstance(report, CpuReport) and report.logical_cpus >= 1
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        words = set(cpuinfo.read_text().split())
        assert report.native_bf16 == bool(words & {"avx512_bf16", "amx_bf16", "bf16"})
        assert ("avx512f" in report.flags) == ("avx512f" in words)
    assert native_bf16("cpu") == report.native_bf16


def test_precision_settings() -> None:
    assert use_bf16("bf16", "cpu") and not use_bf16("fp32", "cpu")
    assert use_bf16("auto", "cpu") == cpu_report().native_bf16
    with pytest.raises(ValueError, match="teacher_precision = 'fp16'"):
        use_bf16("fp16", "cpu", "teacher_precision")


def test_autocast_runs_matmuls_in_bf16_only_when_asked() -> None:
    layer, x = torch.nn.Linear(8, 4), torch.rand(2, 8)
    with autocast("cpu", True):
        assert layer(x).dtype == torch.bfloat16
    with autocast("cpu", False):
        assert layer(x).dtype == torch.float32


@pytest.mark.parametrize("key", ["teacher_precision", "model_precision"])
def test_params_check_the_precision_keys(key: str) -> None:
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert validate(params, networks=False)[f"runtime.{key}"] in ("auto", "fp32", "bf16")
    params["runtime"][key] = "half"
    with pytest.raises(ParamsError, match=rf"runtime\.{key} = 'half'"):
        validate(params, networks=False)


def test_evaluation_inferer_in_bf16_returns_float32_close_to_float32() -> None:
    from monai.inferers import SimpleInferer

    from pipeline.bundle import precision_inferer

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        full = precision_inferer(False)(x, network)
        half = precision_inferer(True)(x, network)
    assert type(precision_inferer(False)) is SimpleInferer
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.05)
    assert not torch.equal(half, full)  # it did run in bf16
