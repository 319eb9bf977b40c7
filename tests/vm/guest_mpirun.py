"""Runs in each of N networked guests: sshd on guest1..N-1, mpirun on guest0.

Usage: guest_mpirun.py KEYS_DIR SSHD SSHD_LIBDIR RANK_SCRIPT [GUESTS]
KEYS_DIR holds this job's ssh keys (made by the host); GUESTS is N (default
2), guest i being 10.77.0.(i+1).  guest0 waits for the others' sshd, runs
`mpirun` over a hostfile naming every guest (one rank each), prints its
output, then tells the others to stop.  Exit code: mpirun's (guest0), 0
(the others).
"""
import os
import shutil
import socket
import subprocess
import sys
import time

HOSTS = {}     # name -> address, for the guests of this job (set by main)
DONE = "/tmp/ivmpi-mpirun-done"
TIMEOUT = float(os.environ.get("IVMPI_TIMEOUT", "120"))
# What mpirun's daemon and ranks on the other guest need: sshd gives its
# sessions a minimal environment otherwise.
PASS_ENV = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "HOME", "LANG", "IVMPI_TIMEOUT",
            "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def common_setup(keys):
    with open("/etc/hosts", "a") as f:
        f.writelines(f"{ip} {name}\n" for name, ip in HOSTS.items())
    os.makedirs("/root/.ssh", mode=0o700, exist_ok=True)
    shutil.copy(os.path.join(keys, "id_ed25519"), "/root/.ssh/id_ed25519")
    os.chmod("/root/.ssh/id_ed25519", 0o600)
    shutil.copy(os.path.join(keys, "id_ed25519.pub"), "/root/.ssh/authorized_keys")
    write("/root/.ssh/config", "Host *\n  IdentityFile /root/.ssh/id_ed25519\n"
          "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
          "  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 30\n", 0o600)


def start_sshd(keys, sshd, libdir):
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    with open("/etc/passwd") as f:
        has_user = any(line.startswith("sshd:") for line in f)
    if not has_user:  # sshd drops privileges to this user (the guest's copy only)
        with open("/etc/passwd", "a") as f:
            f.write("sshd:x:65533:65534::/run/sshd:/usr/sbin/nologin\n")
    os.makedirs("/tmp/sshd", exist_ok=True)
    shutil.copy(os.path.join(keys, "host_key"), "/tmp/sshd/host_key")
    os.chmod("/tmp/sshd/host_key", 0o600)
    setenv = " ".join(f'{k}="{os.environ[k]}"' for k in PASS_ENV if k in os.environ)
    write("/tmp/sshd/config", f"""ListenAddress 0.0.0.0
HostKey /tmp/sshd/host_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
AuthorizedKeysFile /root/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
SetEnv {setenv}
""")
    env = dict(os.environ, LD_LIBRARY_PATH=libdir)
    proc = subprocess.run([sshd, "-f", "/tmp/sshd/config", "-E", "/tmp/sshd/log"], env=env)
    if proc.returncode != 0:
        with open("/tmp/sshd/log") as f:
            raise SystemExit(f"sshd failed (exit {proc.returncode}):\n{f.read()}")
    print("SSHD-READY", flush=True)


def wait_for_port(host, port, deadline):
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{host}:{port} never accepted a connection")
            time.sleep(0.5)


def run_mpirun(rank_script):
    write("/tmp/hostfile", "".join(f"{name} slots=1\n" for name in HOSTS))
    cmd = ["mpirun", "--hostfile", "/tmp/hostfile", "-n", str(len(HOSTS)), "--map-by", "node",
           "--mca", "btl_tcp_if_include", "eth0", "--mca", "oob_tcp_if_include", "eth0",
           sys.executable, rank_script]
    print("MPIRUN " + " ".join(cmd), flush=True)
    try:
        # The ranks learn who they are from mpirun, not from the harness's
        # standalone-mode variables.
        env = {k: v for k, v in os.environ.items() if k not in ("IVMPI_RANK", "IVMPI_SIZE")}
        proc = subprocess.run(cmd, timeout=TIMEOUT, stdin=subprocess.DEVNULL, env=env)
        return proc.returncode
    except subprocess.TimeoutExpired:
        print("MPIRUN-TIMEOUT", flush=True)
        return 124


def main():
    keys, sshd, libdir, rank_script = sys.argv[1:5]
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    HOSTS.update((f"guest{i}", f"10.77.0.{i + 1}") for i in range(count))
    name = socket.gethostname()
    common_setup(keys)
    deadline = time.monotonic() + TIMEOUT
    if name != "guest0":
        start_sshd(keys, sshd, libdir)
        while not os.path.exists(DONE):
            if time.monotonic() > deadline + TIMEOUT:
                raise SystemExit("guest0 never said it was done")
            time.sleep(0.5)
        return 0
    others = [h for h in HOSTS if h != "guest0"]
    for host in others:
        wait_for_port(HOSTS[host], 22, deadline)
    rc = run_mpirun(rank_script)
    for host in others:
        try:
            subprocess.run(["ssh", host, "touch", DONE], timeout=TIMEOUT)
        except subprocess.TimeoutExpired:   # that guest stops at its own deadline
            print(f"could not tell {host} to stop", flush=True)
    print(f"MPIRUN-EXIT {rc}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
