"""A throwaway OpenSSH server on 127.0.0.1 for the remote-target tests: real ssh, real sshd, a key made here.

The client side is an ssh_config with one host alias; the tests point edgeforge at it with EDGEFORGE_SSH_COMMAND,
so nothing of the user's ~/.ssh is read or changed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ALIAS = "edgeforge-test-device"
SSHD = next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if os.access(p, os.X_OK)), None) or shutil.which("sshd")


class LoopbackSshd:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="edgeforge-sshd-"))
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.process: subprocess.Popen | None = None
        self.port = 0

    alias = ALIAS

    @property
    def client_config(self) -> Path:
        return self.dir / "ssh_config"

    def ssh_command(self) -> str:
        """What EDGEFORGE_SSH_COMMAND is set to: ssh with this server's client config."""
        return f"ssh -F {self.client_config}"

    def start(self, timeout: float = 15.0) -> LoopbackSshd:
        if os.geteuid() == 0:  # sshd as root needs its privilege-separation directory
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True)
        (self.dir / "authorized_keys").write_text((self.dir / "client_key.pub").read_text())
        for _ in range(5):  # a port freed by bind(0) can be taken before sshd binds it: try another
            self.port = free_port()
            self._write_configs()
            log = (self.dir / "sshd.log").open("wb")
            config = str(self.dir / "sshd_config")
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=log, stderr=subprocess.STDOUT)
            if self._ready(time.monotonic() + timeout):
                return self
            self.stop(remove=False)
            if "Address already in use" not in (self.dir / "sshd.log").read_text(errors="replace"):
                raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text(errors='replace')}")
        raise RuntimeError("sshd found no free port in 5 tries")

    def _write_configs(self) -> None:
        d = self.dir
        (d / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\nStrictModes no\nUsePAM no\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nPrintMotd no\nUseDNS no\n"
        )
        key_type, key = (d / "host_key.pub").read_text().split()[:2]
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {key_type} {key}\n")
        self.client_config.write_text(
            f"Host {ALIAS}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
            f"  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n  UserKnownHostsFile {d / 'known_hosts'}\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n"
        )

    def _ready(self, deadline: float) -> bool:
        """A real login works (an open port is not enough: a bad config shows only at login)."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            login = subprocess.run(["ssh", "-F", str(self.client_config), ALIAS, "true"], capture_output=True)
            if login.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def stop(self, remove: bool = True) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
