"""Who may reach a job's region: the files ivmpi creates are private whatever
the umask, host files that others may write or own are refused, per-job
files are always new and never symbolic links, and `ivmpi info` in a guest
says who may map the device.

The suite runs as root, which the kernel lets through every permission
check; these tests therefore check ivmpi's own judgement of modes and
owners (a "foreign" owner is uid 65534, given with os.chown), not the
kernel's.
"""
import contextlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings

import pytest

from ivmpi import Region, cli, world
from ivmpi import region as region_mod
from ivmpi.errors import RegionError
from ivmpi.region import RegionWarning, group_name, user_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
OTHER_ID = 65534        # nobody / nogroup: a user and group that are not the caller
ME = user_name(os.geteuid())


@pytest.fixture(autouse=True)
def fake_machine(monkeypatch, tmp_path):
    """No region settings from the environment, an empty fake sysfs and /dev."""
    for name in ("IVMPI_REGION", "IVMPI_STRICT_ALIGN", "IVMPI_UIO_ROOT",
                 "IVMPI_ALLOW_OPEN_REGION", "IVMPI_REGION_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IVMPI_SYSFS_ROOT", str(tmp_path / "sys"))
    monkeypatch.setenv("IVMPI_DEV_ROOT", str(tmp_path / "dev"))
    (tmp_path / "sys" / "bus" / "pci" / "devices").mkdir(parents=True)
    (tmp_path / "dev").mkdir()


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def region_file(path, mode, uid=None):
    """A 64 KiB region file with this mode (and owner)."""
    with open(path, "wb") as f:
        f.truncate(64 << 10)
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return str(path)


@contextlib.contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ----------------------------------------------------------------------------- created modes

@pytest.mark.parametrize("umask", [0o000, 0o077], indirect=True, ids=["umask000", "umask077"])
def test_region_create_is_private_whatever_the_umask(tmp_path, umask):
    path = tmp_path / "region"
    Region.create(path, "1M").close()
    assert mode_of(path) == 0o600
    assert os.stat(path).st_uid == os.geteuid()


@pytest.mark.parametrize("umask", [0o000, 0o077], indirect=True, ids=["umask000", "umask077"])
def test_region_create_for_a_group(tmp_path, umask):
    path = tmp_path / "region"
    Region.create(path, "1M", group=OTHER_ID).close()          # 0660 by default with a group
    assert mode_of(path) == 0o660 and os.stat(path).st_gid == OTHER_ID
    Region.create(tmp_path / "r2", "1M", mode=0o640, group=group_name(OTHER_ID)).close()
    assert mode_of(tmp_path / "r2") == 0o640 and os.stat(tmp_path / "r2").st_gid == OTHER_ID


def test_region_create_refuses_modes_that_open_the_region(tmp_path, monkeypatch):
    for mode, message in [(0o666, "every user write"), (0o400, "owner read and write"),
                          (0o4600, "permission bits"), ("rw", "octal digits")]:
        with pytest.raises(RegionError, match=message):
            Region.create(tmp_path / "region", "1M", mode=mode)
        assert not (tmp_path / "region").exists()
    with pytest.raises(RegionError, match="no group named"):
        Region.create(tmp_path / "region", "1M", group="no-such-group-here")


def test_reused_file_keeps_its_mode_unless_one_is_given(tmp_path):
    path = tmp_path / "region"
    Region.create(path, "1M").close()
    os.chmod(path, 0o640)
    Region.create(path, "1M").close()
    assert mode_of(path) == 0o640
    Region.create(path, "1M", mode="0600").close()
    assert mode_of(path) == 0o600


@pytest.mark.parametrize("umask", [0o000, 0o077], indirect=True, ids=["umask000", "umask077"])
def test_cli_create_is_private_whatever_the_umask(capsys, tmp_path, umask):
    path = tmp_path / "region"
    assert cli.main(["create", str(path), "--size", "1M"]) == 0
    out = capsys.readouterr().out
    assert mode_of(path) == 0o600
    assert f"mode 0600, owner {ME}:" in out and f"only {ME} may map it" in out
    assert "--mode 0660 --group GROUP" in out      # what to do for QEMU as another user


@pytest.mark.parametrize("umask", [0o000, 0o077], indirect=True, ids=["umask000", "umask077"])
def test_cli_create_mode_and_group(capsys, tmp_path, umask):
    path = tmp_path / "region"
    assert cli.main(["create", str(path), "--size", "1M", "--mode", "0660",
                     "--group", str(OTHER_ID)]) == 0
    out = capsys.readouterr().out
    assert mode_of(path) == 0o660 and os.stat(path).st_gid == OTHER_ID
    assert f"group {group_name(OTHER_ID)} may map it" in out


def test_cli_create_refuses_a_world_writable_mode(capsys, tmp_path):
    assert cli.main(["create", str(tmp_path / "region"), "--mode", "0666"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "every user write" in err
    assert not (tmp_path / "region").exists()


@pytest.mark.parametrize("umask", [0o000, 0o077], indirect=True, ids=["umask000", "umask077"])
def test_job_file_is_private_whatever_the_umask(tmp_path, umask):
    path = tmp_path / "ivmpi-job"
    world._create_job_region(2, str(path)).close()
    assert mode_of(path) == 0o600


def test_job_file_name_under_dev_shm():
    region = world._create_job_region(2)
    try:
        assert os.path.dirname(region.path) == world.JOB_FILE_DIR
        assert os.path.basename(region.path).startswith(f"ivmpi-job-{os.getpid()}-")
        assert mode_of(region.path) == 0o600
    finally:
        region.close()
        os.unlink(region.path)


# ----------------------------------------------------------------------------- per-job files

def test_symlink_at_the_job_file_name_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    name = tmp_path / "ivmpi-job"
    name.symlink_to(victim)
    with pytest.raises(RegionError, match="symbolic link: a per-job region file is always new"):
        world._create_job_region(2, str(name))
    assert victim.read_bytes() == b"precious"
    dangling = tmp_path / "ivmpi-job-2"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(RegionError, match="symbolic link"):
        world._create_job_region(2, str(dangling))
    assert not (tmp_path / "would-be-created").exists()


def test_job_file_is_never_reused(tmp_path):
    path = region_file(tmp_path / "ivmpi-job", 0o600)
    with pytest.raises(RegionError, match="existing file: a per-job region file is always new"):
        world._create_job_region(2, path)
    assert os.path.getsize(path) == 64 << 10


def test_other_ranks_do_not_follow_a_symlink_to_the_job_file(tmp_path):
    target = region_file(tmp_path / "target", 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(RegionError, match="is a symbolic link: refusing to follow it"):
        Region.open(str(link), follow_symlinks=False)
    Region.open(str(link)).close()      # a link the user names is theirs to give


# ----------------------------------------------------------------------------- opening

@pytest.mark.parametrize("mode", [0o666, 0o602])
def test_world_writable_file_is_refused(tmp_path, mode):
    path = region_file(tmp_path / "region", mode)
    with pytest.raises(RegionError) as info:
        Region.open(path)
    message = str(info.value)
    for part in (f"refusing to map {path}", f"mode {mode:04o}", f"owner {ME}:",
                 f"chmod o-rw {path}", "IVMPI_ALLOW_OPEN_REGION=1"):
        assert part in message, message
    # reusing it through create is judged the same way
    with pytest.raises(RegionError, match="refusing to map"):
        Region.create(path, 64 << 10)


def test_world_writable_shm_name_is_refused(tmp_path):
    (tmp_path / "dev" / "shm").mkdir()
    region_file(tmp_path / "dev" / "shm" / "job", 0o666)
    with pytest.raises(RegionError, match="refusing to map .*/dev/shm/job"):
        Region.open("shm:job")


def test_foreign_owned_file_is_refused(tmp_path):
    path = region_file(tmp_path / "region", 0o600, uid=OTHER_ID)
    with pytest.raises(RegionError) as info:
        Region.open(path)
    message = str(info.value)
    for part in (f"refusing to map {path}", "mode 0600", f"owner {user_name(OTHER_ID)}:",
                 f"belongs to {user_name(OTHER_ID)}", f"chown {ME} {path}",
                 "IVMPI_ALLOW_OPEN_REGION=1"):
        assert part in message, message


def test_root_owned_file_opens(tmp_path):
    # root may change any file anyway, so a root-owned one is not foreign
    path = region_file(tmp_path / "region", 0o600, uid=0)
    with no_warnings():
        Region.open(path).close()


def test_cli_refusal_is_one_line(capsys, tmp_path):
    path = region_file(tmp_path / "region", 0o666)
    assert cli.main(["info", path]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "chmod o-rw" in err


def test_override_maps_them_with_a_warning(tmp_path, monkeypatch):
    writable = region_file(tmp_path / "writable", 0o666)
    foreign = region_file(tmp_path / "foreign", 0o600, uid=OTHER_ID)
    monkeypatch.setenv("IVMPI_ALLOW_OPEN_REGION", "1")
    with pytest.warns(RegionWarning, match="every user may write"):
        Region.open(writable).close()
    with pytest.warns(RegionWarning, match=f"belongs to {user_name(OTHER_ID)}"):
        Region.open(foreign).close()
    monkeypatch.setenv("IVMPI_ALLOW_OPEN_REGION", "0")
    with pytest.raises(RegionError, match="refusing"):
        Region.open(writable)


def test_world_readable_file_opens_with_a_warning(tmp_path, capsys):
    path = region_file(tmp_path / "region", 0o644)
    with pytest.warns(RegionWarning, match=f"mode 0644.*every user may read it.*chmod o-r {path}"):
        Region.open(path).close()
    assert cli.main(["info", path]) == 0
    err = capsys.readouterr().err
    assert "ivmpi info: warning:" in err and "chmod o-r" in err


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o640])
def test_private_and_group_files_open_without_a_word(tmp_path, mode):
    path = region_file(tmp_path / "region", mode)
    os.chown(path, -1, OTHER_ID)
    with no_warnings():
        Region.open(path).close()


def test_the_file_judged_is_the_file_opened(tmp_path, monkeypatch):
    """The check reads fstat of the opened descriptor, not the path: a path
    lookup that says 0600 does not get a 0666 file mapped."""
    path = region_file(tmp_path / "region", 0o666)
    real_stat = os.stat

    def reassuring_stat(p, *args, **kwargs):
        st = real_stat(p, *args, **kwargs)
        if os.fspath(p) == path:
            fields = list(st)
            fields[stat.ST_MODE] = stat.S_IFREG | 0o600
            return os.stat_result(fields)
        return st
    monkeypatch.setattr(region_mod.os, "stat", reassuring_stat)
    with pytest.raises(RegionError, match="mode 0666"):
        Region.open(path)


# ----------------------------------------------------------------------------- guests

def add_guest_device(tmp_path, address="0000:00:04.0"):
    d = tmp_path / "sys" / "bus" / "pci" / "devices" / address
    d.mkdir()
    (d / "vendor").write_text("0x1af4\n")
    (d / "device").write_text("0x1110\n")
    (d / "enable").write_text("1\n")
    lines = [(0xFEBF1000, 0xFEBF10FF), (0, 0), (0xFE000000, 0xFE0FFFFF)] + [(0, 0)] * 4
    (d / "resource").write_text("".join(f"{a:#018x} {b:#018x} 0x0\n" for a, b in lines))
    for name in ("resource2", "resource2_wc"):
        with open(d / name, "wb") as f:
            f.truncate(MIB)
        os.chmod(d / name, 0o600)
        os.chown(d / name, 0, 0)
    return d


def test_guest_device_files_follow_their_own_rule(tmp_path):
    """A resource file others may write is not refused like a host file:
    `ivmpi info` reports it instead."""
    d = add_guest_device(tmp_path)
    os.chmod(d / "resource2", 0o666)
    with no_warnings():
        Region.open("pci").close()


def test_info_reports_who_may_map_the_region_in_a_guest(capsys, tmp_path):
    d = add_guest_device(tmp_path)
    os.chmod(d / "resource2_wc", 0o666)
    devmem = tmp_path / "dev" / "mem"
    devmem.write_bytes(b"")
    os.chmod(devmem, 0o640)
    os.chown(devmem, 0, OTHER_ID)
    assert cli.main(["info", "pci"]) == 0
    out = capsys.readouterr().out
    root = f"{user_name(0)}:{group_name(0)}"
    assert "who may map the region here:" in out
    assert f"{d / 'resource2'}: mode 0600, owner {root}: root\n" in out
    assert f"{d / 'resource2_wc'}: mode 0666, owner {root}: root, every user\n" in out
    assert f"warning: every user may map {d / 'resource2_wc'}" in out
    assert (f"{devmem}: mode 0640, owner {user_name(0)}:{group_name(OTHER_ID)}: "
            f"root, group {group_name(OTHER_ID)} (the kernel also wants CAP_SYS_RAWIO") in out
    assert out.count("warning:") == 1       # not for resource2, and /dev/mem needs the capability


def test_info_warns_for_a_group_given_access_by_udev(capsys, tmp_path):
    d = add_guest_device(tmp_path)
    for name in ("resource2", "resource2_wc"):
        os.chmod(d / name, 0o660)
        os.chown(d / name, 0, OTHER_ID)
    assert cli.main(["info", "pci"]) == 0
    out = capsys.readouterr().out
    assert f"warning: group {group_name(OTHER_ID)} may map {d / 'resource2'}" in out
    assert out.count("warning:") == 2


def test_info_reports_ivshmem_uio_devices(capsys, tmp_path):
    add_guest_device(tmp_path)
    for n, vendor in ((0, "0x1af4"), (1, "0x8086")):       # only uio0 is ivshmem
        d = tmp_path / "sys" / "class" / "uio" / f"uio{n}" / "device"
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text("0x1110\n")
        (tmp_path / "dev" / f"uio{n}").write_bytes(b"")
        os.chmod(tmp_path / "dev" / f"uio{n}", 0o666)
    assert cli.main(["info", "pci"]) == 0
    out = capsys.readouterr().out
    assert f"warning: every user may map {tmp_path / 'dev' / 'uio0'}" in out
    assert "uio1" not in out


# ----------------------------------------------------------------------------- a real job

JOB = textwrap.dedent("""
    import json, os
    from ivmpi import MPI, world

    comm = MPI.COMM_WORLD
    umask = os.umask(0)
    os.umask(umask)
    path = world._region.path
    # The file is unlinked once every rank mapped it; the mapping's inode is
    # found in /proc/self/maps and its descriptor (the mmap keeps one) in
    # /proc/self/fd, and fstat'ed there: the mode of the very file mapped.
    inodes = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip().startswith(path):
                inodes.add(int(fields[4]))
    seen = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if st.st_ino in inodes and target.startswith(path):
            seen.append({"mode": st.st_mode & 0o7777, "uid": st.st_uid, "target": target})
    comm.Barrier()
    report = {"rank": comm.rank, "path": path, "umask": umask, "mapped": len(inodes),
              "seen": seen, "exists": os.path.exists(path), "sum": comm.allreduce(comm.rank + 1)}
    print(json.dumps(report), flush=True)
""")


def test_job_file_mode_during_a_two_rank_job(tmp_path):
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        pytest.skip("no mpirun next to the interpreter")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {k: v for k, v in os.environ.items()
           if k not in ("IVMPI_RANK", "IVMPI_SIZE", "IVMPI_REGION", "IVMPI_ALLOW_OPEN_REGION")}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               IVMPI_SYSFS_ROOT=str(tmp_path / "sys"), IVMPI_REGION_SIZE="4M",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    # umask 000: a mode left to the umask would come out 0666.
    result = subprocess.run(
        [mpirun, "--oversubscribe", "-n", "2", "-x", "IVMPI_SYSFS_ROOT", "-x", "PYTHONPATH",
         "-x", "IVMPI_REGION_SIZE", sys.executable, str(script)],
        env=env, capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0))
    assert result.returncode == 0, result.stdout + result.stderr
    reports = sorted((json.loads(line) for line in result.stdout.splitlines()
                      if line.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1], result.stdout + result.stderr
    assert reports[0]["path"] == reports[1]["path"]
    assert os.path.dirname(reports[0]["path"]) == "/dev/shm"
    for report in reports:
        assert report["umask"] == 0 and report["sum"] == 3
        assert report["mapped"] == 1, report
        assert report["seen"] and all(s["mode"] == 0o600 and s["uid"] == os.geteuid()
                                      and s["target"].endswith("(deleted)")
                                      for s in report["seen"]), report
        assert not report["exists"]


FAILING_JOB = textwrap.dedent("""
    import os
    from ivmpi import MPI

    if os.environ.get("OMPI_COMM_WORLD_RANK") == "0":
        print(f"pid {os.getpid()}", flush=True)
    MPI.COMM_WORLD.Barrier()
""")


def test_job_file_of_a_failed_start_is_removed(tmp_path):
    """A region too small for the job: start-up fails on every rank, and rank 0
    removes the per-job file it made rather than leave it in /dev/shm."""
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        pytest.skip("no mpirun next to the interpreter")
    script = tmp_path / "job.py"
    script.write_text(FAILING_JOB)
    env = {k: v for k, v in os.environ.items()
           if k not in ("IVMPI_RANK", "IVMPI_SIZE", "IVMPI_REGION")}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               IVMPI_SYSFS_ROOT=str(tmp_path / "sys"), IVMPI_REGION_SIZE="4K",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    result = subprocess.run(
        [mpirun, "--oversubscribe", "-n", "2", "-x", "IVMPI_SYSFS_ROOT", "-x", "PYTHONPATH",
         "-x", "IVMPI_REGION_SIZE", sys.executable, str(script)],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "rank 0 could not set up the region" in result.stderr, result.stderr
    pid = int(result.stdout.split("pid ")[1].split()[0])
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(f"ivmpi-job-{pid}-")]
