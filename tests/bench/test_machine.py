"""The benchmark results name the host they were measured on."""

from pathlib import Path

from bench.run import cpu_model, machine


def test_cpu_model_reads_the_model_name(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9B14\n"
    )
    assert cpu_model(cpuinfo) == "AMD EPYC 9B14"


def test_cpu_model_without_cpuinfo_falls_back(tmp_path: Path) -> None:
    model = cpu_model(tmp_path / "absent")
    assert isinstance(model, str) and model


def test_machine_line_names_cores_and_cpu() -> None:
    line = machine()["machine"]
    assert f" cores, {cpu_model()}" in line
