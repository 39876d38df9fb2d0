"""Debian's StompServer 0.9.9 (`apt-get install stompserver`), a STOMP 1.0 broker in Ruby, started
on a free loopback port with its files in a temporary directory.

Debian's launcher (/usr/bin/stompserver) sets the protocol handler's class variables with
`@@name = ...` inside `instance_eval`, which Ruby 3 refuses to run. The harness runs a copy of the
launcher with those assignments turned into `class_variable_set` calls; the system file is never
changed. Used by the `stompserver_stomp_url` test fixture and by the browser tests
(E2E_BROKER=stompserver).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.processes import start_listening, stop

__all__ = ["LAUNCHER", "missing", "patched_launcher", "command", "start", "stop"]

LAUNCHER = Path("/usr/bin/stompserver")
LIBRARY = Path("/usr/lib/ruby/vendor_ruby/stomp_server.rb")
# `@@auth_required=stomp.auth_required` -> `self.class.class_variable_set(:@@auth_required, stomp.auth_required)`
_CLASS_VARIABLE = re.compile(r"@@(\w+)\s*=\s*(stomp\.\w+)")


def missing() -> str | None:
    """Why StompServer cannot be started here, or None if it can."""
    if shutil.which("ruby") is None:
        return "ruby is not installed (Debian's stompserver package brings it)"
    if not LAUNCHER.exists() or not LIBRARY.exists():
        return "Debian's stompserver is not installed (apt-get install stompserver)"
    return None


def patched_launcher(text: str) -> str:
    """Debian's launcher with its class-variable assignments made valid for Ruby 3."""
    patched, count = _CLASS_VARIABLE.subn(r"self.class.class_variable_set(:@@\1, \2)", text)
    if count == 0:
        raise RuntimeError(f"{LAUNCHER} has no `@@name = stomp.name` lines to patch; has the package changed?")
    return patched


def command(base: Path, port: int) -> list[str]:
    """The ruby command line for a StompServer whose files live under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    launcher = base / "stompserver.rb"
    launcher.write_text(patched_launcher(LAUNCHER.read_text()))
    return [shutil.which("ruby") or "ruby", str(launcher), "-b", "127.0.0.1", "-p", str(port), "-w", str(base / "work")]


def start(base: Path, port: int, timeout: float = 30.0) -> subprocess.Popen:
    """Start StompServer and return once its port accepts connections (its output: base/stompserver.log)."""
    return start_listening("StompServer", command(base, port), port, base / "stompserver.log", cwd=base, timeout=timeout)
