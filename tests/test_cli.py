"""The `ivmpi` command: create, info, --version and its one-line errors."""
import os
import struct
import subprocess
import sys

import pytest

import ivmpi
from ivmpi import Region, cli

MIB = 1 << 20


@pytest.fixture(autouse=True)
def fake_machine(monkeypatch, tmp_path):
    """An empty fake sysfs and /dev, and no region settings from the environment."""
    for name in ("IVMPI_REGION", "IVMPI_STRICT_ALIGN", "IVMPI_UIO_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IVMPI_SYSFS_ROOT", str(tmp_path / "sys"))
    monkeypatch.setenv("IVMPI_DEV_ROOT", str(tmp_path / "dev"))
    (tmp_path / "sys" / "bus" / "pci" / "devices").mkdir(parents=True)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert pattern in err, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"ivmpi {ivmpi.__version__}"


def test_create_then_info(capsys, tmp_path):
    path = str(tmp_path / "region")
    code, out, err = run(capsys, "create", path, "--size", "2M")
    assert code == 0, err
    assert os.path.getsize(path) == 2 * MIB
    assert f"created {path} (2 MiB)" in out
    assert (f"-object memory-backend-file,id=hostmem,share=on,mem-path={path},size=2M "
            f"-device ivshmem-plain,memdev=hostmem") in out
    assert "legacy" in out   # explains that the legacy device needs /dev/shm

    code, out, err = run(capsys, "create", path, "--size", "2M")
    assert code == 0 and f"reusing {path}" in out

    code, out, err = run(capsys, "info", path)
    assert code == 0, err
    assert f"region: {path}" in out
    assert "size: 2 MiB (2097152 bytes)" in out
    assert "backend: file" in out and "strict align: off" in out


def test_legacy_options_for_dev_shm():
    lines = cli.qemu_options("/dev/shm/job7", 64 * MIB)
    assert lines[0] == ("-object memory-backend-file,id=hostmem,share=on,"
                        "mem-path=/dev/shm/job7,size=64M -device ivshmem-plain,memdev=hostmem")
    assert lines[1] == "-device ivshmem,shm=job7,size=64"
    assert len(cli.qemu_options("/tmp/job7", 64 * MIB)) == 1


def test_info_default_from_env_and_strict(capsys, tmp_path, monkeypatch):
    path = str(tmp_path / "region")
    Region.create(path, size="64K").close()
    monkeypatch.setenv("IVMPI_REGION", path)
    monkeypatch.setenv("IVMPI_STRICT_ALIGN", "1")
    code, out, err = run(capsys, "info")
    assert code == 0, err
    assert f"region: {path}" in out and "strict align: on" in out


def test_info_lists_guest_devices(capsys, tmp_path):
    d = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:00:04.0"
    d.mkdir()
    (d / "vendor").write_text("0x1af4\n")
    (d / "device").write_text("0x1110\n")
    (d / "revision").write_text("0x01\n")
    (d / "enable").write_text("1\n")
    lines = [(0xFEBF1000, 0xFEBF10FF), (0, 0), (0xFE000000, 0xFE0FFFFF)] + [(0, 0)] * 4
    (d / "resource").write_text("".join(f"{a:#018x} {b:#018x} 0x0\n" for a, b in lines))
    with open(d / "resource0", "wb") as f:
        f.write(b"\0" * 8 + struct.pack("<I", 2) + b"\0" * 244)
    with open(d / "resource2", "wb") as f:
        f.truncate(MIB)
    code, out, err = run(capsys, "info")
    assert code == 0, err
    assert "ivshmem devices: 1" in out
    assert "0000:00:04.0  BAR2 1 MiB  at 0xfe000000  IVPosition 2  revision 1" in out
    assert "backend: pci" in out and "strict align: on" in out and "IVPosition: 2" in out


@pytest.mark.parametrize("argv,message", [
    (["info"], "ivmpi create /dev/shm/NAME --size 64M"),           # no device, no spec
    (["info", "pci"], "no ivshmem PCI device"),                     # missing device
    (["info", "{tmp}/missing"], "no such file"),
    (["info", "{tmp}/empty"], "is empty"),
    (["info", "{tmp}/small"], "too small"),
    (["create", "{tmp}/r", "--size", "3M"], "not a power of two"),
    (["create", "{tmp}/r", "--size", "lots"], "cannot read size"),
    (["create", "{tmp}/nodir/r", "--size", "1M"], "no directory"),
    (["info", "devmem:0xfe000000"], "size is unknown"),
])
def test_bad_input_is_one_line(capsys, tmp_path, argv, message):
    (tmp_path / "empty").touch()
    (tmp_path / "small").write_bytes(b"x" * 100)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, err, message)


def test_permission_denied_is_one_line(capsys, tmp_path, monkeypatch):
    path = tmp_path / "region"
    path.write_bytes(b"\0" * 8192)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(os, "open", denied)
    code, out, err = run(capsys, "info", str(path))
    assert_one_line_error(code, err, "run as root or chmod the resource file")


def test_usage_errors_exit_2(capsys):
    assert run(capsys)[0] == 2
    assert run(capsys, "frobnicate")[0] == 2


def test_subcommand_registry(capsys):
    seen = []

    @cli.subcommand("probe", "a test subcommand",
                    lambda p: p.add_argument("--n", type=int, default=1))
    def run_probe(args):
        seen.append(args.n)
        return 0
    try:
        assert cli.main(["probe", "--n", "4"]) == 0 and seen == [4]
    finally:
        cli.SUBCOMMANDS.pop()


def test_python_m_ivmpi_no_traceback(tmp_path):
    env = dict(os.environ, IVMPI_SYSFS_ROOT=str(tmp_path / "sys"),
               IVMPI_DEV_ROOT=str(tmp_path / "dev"))
    env.pop("IVMPI_REGION", None)
    result = subprocess.run([sys.executable, "-m", "ivmpi", "create", str(tmp_path / "r"),
                             "--size", "3M"], capture_output=True, text=True, env=env,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "not a power of two" in result.stderr
    result = subprocess.run([sys.executable, "-m", "ivmpi", "--version"], capture_output=True,
                            text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.strip() == f"ivmpi {ivmpi.__version__}"


def test_bench_subcommand_reaches_the_compare_runner(capsys):
    from ivmpi.cli import main
    assert main(["bench", "compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: ivmpi bench compare" in out and "--transports" in out
    assert main(["bench", "nonsense"]) == 2


def test_bench_scale_runs_two_layouts(capsys):
    from ivmpi.cli import main
    assert main(["bench", "scale", "--ranks", "2,4", "--rounds", "1", "--count", "200"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["2", "4"]
    assert all(float(row[1]) > 0 and float(row[3]) > 0 for row in rows)


def test_bench_scale_in_process():
    # A process of its own: both ranks' communicators start the MPI library.
    result = subprocess.run([sys.executable, "-m", "ivmpi.benchscale", "--in-process", "--ranks",
                             "2,9", "--rounds", "2", "--count", "100"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Send + Recv in one process of 8 B")
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["2", "9"]
    assert all(float(row[1]) > 0 and float(row[3]) > 0 for row in rows)
