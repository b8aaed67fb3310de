"""A real OpenSSH server on 127.0.0.1 and a bare "device" Python for the `pipeline device` tests.

:func:`start_sshd` runs ``/usr/sbin/sshd -D -e -f CONFIG`` with a temporary config, host key and authorized key on
a free port; the client side is a temporary ssh_config (``--ssh-config``) with its own key and known_hosts, so the
user's ~/.ssh is never read or touched. :func:`bare_python` makes a virtualenv that has numpy and onnxruntime (and
their few dependencies, linked from this interpreter's site-packages, so the device computes with the very same
builds) and nothing else: no torch, no repository.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def unavailable() -> str | None:
    """Why the tests cannot run a real sshd here (None when they can)."""
    if not os.path.exists(SSHD):
        return "OpenSSH's server (/usr/sbin/sshd) is not installed (Debian: apt-get install openssh-server)"
    for tool in ("ssh", "scp", "ssh-keygen"):
        if not shutil.which(tool):
            return f"OpenSSH's {tool} is not installed"
    if os.geteuid() != 0:
        return "sshd must run as root to log a user in (it changes to the user); these tests run it only as root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    proc: subprocess.Popen
    port: int
    folder: Path
    client_config: Path
    known_hosts: Path
    client_key: Path
    host_pub: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener): killing one drops that connection."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    out.append(int(d.name))
        return out


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def start_sshd(folder: Path) -> Sshd:
    folder.mkdir(parents=True, exist_ok=True)
    host_key = keygen(folder / "host_key")
    client_key = keygen(folder / "client_key")
    auth = folder / "authorized_keys"
    shutil.copy(str(client_key) + ".pub", auth)
    os.chmod(auth, 0o600)
    port = free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if os.path.exists(p)), "internal-sftp")
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}", f"AuthorizedKeysFile {auth}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin yes", "StrictModes no", "UsePAM no", "PidFile none", f"Subsystem sftp {sftp}",
        "LogLevel ERROR", ""]))
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} " + " ".join(Path(str(host_key) + ".pub").read_text().split()[:2]) + "\n")
    client = folder / "ssh_config"
    client.write_text("\n".join([
        "Host *", "  HostName 127.0.0.1", f"  Port {port}", f"  User {os.environ.get('USER') or 'root'}",
        f"  IdentityFile {client_key}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {known}",
        "  StrictHostKeyChecking yes", "  IdentityAgent none", ""]))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder (Debian's unit makes it)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(folder / "sshd.log", "wb"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(folder / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return Sshd(proc, port, folder, client, known, client_key, Path(str(host_key) + ".pub"))


#: what `import numpy, onnxruntime` needs, as distributions (their import names found from RECORD files)
DEVICE_DISTS = ("numpy", "onnxruntime", "flatbuffers", "packaging", "protobuf")


def bare_python(folder: Path, dists=DEVICE_DISTS, extra: dict[str, str] | None = None) -> Path:
    """A venv at ``folder`` with only ``dists`` (linked from this interpreter's site-packages) and ``extra``
    modules (file name -> source). Returns its python."""
    import importlib.metadata as md

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python*/site-packages"))
    for dist in dists:
        d = md.distribution(dist)
        tops = {Path(str(f)).parts[0] for f in d.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(d.locate_file(top))
            if src.exists() and not (site / top).exists() and not top.endswith(".pth"):
                (site / top).symlink_to(src)
    for rel, text in (extra or {}).items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    py = folder / "bin" / "python"
    return py
