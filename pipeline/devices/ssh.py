"""The system's OpenSSH, driven with argv lists: ``ssh`` for commands, ``scp`` for files.

Using the user's own ``ssh`` means their ``~/.ssh/config``, keys, agent, ProxyJump and known_hosts all apply,
and the project handles no password. Host names reach ssh as one argument after ``--`` (never inside a shell
string), and the one remote command is built here from fixed words and :func:`shlex.quote`'d values. Host-key
checking is never turned off: ``BatchMode=yes`` makes ssh fail instead of asking, and :func:`fault` turns its
exit 255 and stderr into one paragraph saying what to do (accepting an unknown key is the user's call, with ssh).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError

#: remote folder names we accept (a path is given to scp, which may hand it to a shell on the device)
SAFE_REMOTE = re.compile(r"[A-Za-z0-9._/~-]+")


class DeviceError(PipelineError):
    """A device step failed; ``kind`` says which class of fault (for tests and the summary)."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SshConfig:
    """How to reach devices. ``config``: an ssh_config file instead of ~/.ssh/config (``-F``); ``options``:
    extra ``-o Key=Value``; ``connect_timeout``: seconds before an unreachable host is given up (bounded)."""

    config: Path | None = None
    options: tuple[str, ...] = ()
    connect_timeout: int = 15

    def common(self) -> list[str]:
        argv = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.config is not None:
            argv += ["-F", str(self.config)]
        for opt in self.options:
            key, _, val = (x.strip().lower() for x in opt.partition("="))
            if (key == "stricthostkeychecking" and val in ("no", "off", "accept-new")) or (
                    key.endswith("knownhostsfile") and "/dev/null" in val):
                raise PipelineError(f"--ssh-option {opt} would turn host-key checking off; the pipeline never does. "
                                    "Accept the device's key once with `ssh HOST` instead.")
            argv += ["-o", opt]
        return argv


def check_remote_dir(path: str) -> str:
    if not SAFE_REMOTE.fullmatch(path) or path.startswith("-") or ".." in path.split("/"):
        raise PipelineError(f"--remote-dir {path!r} may hold only letters, digits and . _ / ~ - (no '..'); it is a "
                            "folder on the device, relative to the login's home unless it starts with /.")
    return path


def ssh_argv(cfg: SshConfig, host: str, remote: list[str]) -> list[str]:
    """``ssh [options] -- HOST 'cmd arg ...'``: every remote word quoted, the host one argument."""
    return ["ssh", *cfg.common(), "--", host, " ".join(shlex.quote(w) for w in remote)]


def scp_target(host: str, path: str) -> str:
    return f"[{host}]:{path}" if ":" in host else f"{host}:{path}"


def scp_argv(cfg: SshConfig, src: str, dst: str) -> list[str]:
    return ["scp", "-q", *cfg.common(), "--", src, dst]


@dataclass
class Outcome:
    rc: int
    stdout_lines: list[str]
    stderr: str


def call(argv: list[str], *, stdin: bytes | None = None, on_line=None, procs: list | None = None) -> Outcome:
    """Run ``argv``; each stdout line goes to ``on_line`` as it arrives (progress is streamed), stderr is kept.
    ``procs``: a list the live process is kept in, so Ctrl-C in the main thread can end it."""
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise DeviceError(f"`{argv[0]}` is not installed on this machine; install OpenSSH's client "
                          "(Debian/Ubuntu: `sudo apt-get install openssh-client`).", "local") from None
    if procs is not None:
        procs.append(p)
    err: list[bytes] = []
    t = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
    t.start()
    if stdin is not None:
        try:
            p.stdin.write(stdin)
            p.stdin.close()
        except OSError:  # the connection failed before it read the script; stderr says why
            pass
    lines = []
    for raw in p.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        lines.append(line)
        if on_line is not None:
            on_line(line)
    rc = p.wait()
    t.join()
    if procs is not None and p in procs:
        procs.remove(p)
    return Outcome(rc, lines, b"".join(err).decode("utf-8", "replace"))


#: ssh's exit-255 messages (OpenSSH 8.x/9.x), in the order they are tested, and the class each means
_CLASSES = (
    ("changed_key", ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key for", "Offending")),
    ("unknown_key", ("No ED25519 host key is known", "No RSA host key is known", "No ECDSA host key is known",
                     "host key is known for", "Host key verification failed")),
    ("auth", ("Permission denied", "Too many authentication failures", "no mutual signature")),
    ("resolve", ("Could not resolve hostname", "Name or service not known", "hostname contains invalid characters")),
    ("refused", ("Connection refused",)),
    ("timeout", ("timed out", "No route to host", "Network is unreachable", "Connection timed out")),
    ("dropped", ("closed by remote host", "Connection closed", "Connection reset", "Broken pipe",
                 "Timeout, server", "client_loop", "lost connection", "Connection to")),
    ("disk", ("No space left on device", "Disk quota exceeded")),
)


def classify(stderr: str) -> str:
    for kind, needles in _CLASSES:
        if any(n in stderr for n in needles):
            return kind
    return "other"


def fault(host: str, what: str, out: Outcome, cfg: SshConfig) -> DeviceError:
    """One paragraph for a failed ssh/scp call (``what``: the step, e.g. "copying the bundle")."""
    kind = classify(out.stderr)
    tail = " ".join(out.stderr.strip().split())[-300:]
    said = f" (ssh said: {tail})" if tail else ""
    h = shlex.quote(host)
    msg = {
        "changed_key": f"{host}'s host key differs from the one in your known_hosts, so ssh refused to connect while "
                       f"{what}{said}. That is what a man-in-the-middle looks like, or the device was reinstalled: "
                       f"check the key with the device's owner; only if it is right, remove the old one with "
                       f"`ssh-keygen -R {h}` and accept the new one by running `ssh {h}` once. The pipeline never "
                       "accepts or skips a host key. Nothing was recorded.",
        "unknown_key": f"{host}'s host key is not in your known_hosts, so ssh refused to connect while {what} (the "
                       f"pipeline runs ssh with BatchMode=yes and never accepts a key itself){said}. Run `ssh {h}` "
                       "once, compare the fingerprint it shows with the device's (`ssh-keygen -lf "
                       "/etc/ssh/ssh_host_ed25519_key.pub` on the device) and answer yes; then rerun. Nothing was "
                       "recorded.",
        "auth": f"ssh could not log in to {host} while {what}{said}. Try `ssh {h}` first: it must log in without a "
                "password prompt (a key in your ssh-agent or an IdentityFile in ~/.ssh/config), since the pipeline "
                "runs ssh with BatchMode=yes and handles no passwords. Nothing was recorded.",
        "resolve": f"{host} is not a host name ssh can resolve{said}. Check the name, or add a `Host` entry with its "
                   "HostName to ~/.ssh/config. Nothing was recorded.",
        "refused": f"{host} refused the connection while {what}{said}: no ssh server listens there (check that sshd "
                   "runs on the device and the port in your ssh config). Nothing was recorded.",
        "timeout": f"{host} did not answer within {cfg.connect_timeout} s while {what}{said}: the device is off, "
                   "asleep, on another network or behind a firewall (raise --connect-timeout for a slow link). "
                   "Nothing was recorded.",
        "dropped": f"The connection to {host} dropped while {what}{said}. Nothing was recorded; run the same command "
                   "again: it reuses what was already copied and completes the measurement.",
        "disk": f"The disk on {host} is full while {what}{said}. Free some space on the device (the bundle needs "
                "about 30 MB) or choose another --remote-dir, then rerun. Nothing was recorded.",
    }.get(kind)
    if msg is None:
        msg = (f"{what.capitalize()} on {host} failed (exit {out.rc}){said}. Try `ssh {h}` to see whether the "
               "device is reachable. Nothing was recorded.")
    return DeviceError(msg, kind)
