"""Debian's ActiveMQ (`apt-get install activemq`), started on a free loopback port with a generated
configuration: STOMP only, non-persistent, nothing outside a temporary directory.

Used by the test fixture `activemq_stomp_url` and by bench/broker_bench.py.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.processes import start_listening, stop

__all__ = ["ACTIVEMQ_HOME", "missing", "command", "start", "stop"]

ACTIVEMQ_HOME = Path("/usr/share/activemq")

ACTIVEMQ_XML = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans
    http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
    http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="{name}"
          persistent="false" dataDirectory="{data}">
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp+nio://127.0.0.1:{port}"/>
    </transportConnectors>
  </broker>
</beans>
"""


def missing() -> str | None:
    """Why ActiveMQ cannot be started here, or None if it can."""
    if shutil.which("java") is None:
        return "java is not installed (Debian's activemq package brings it)"
    if not (ACTIVEMQ_HOME / "bin" / "activemq.jar").exists():
        return "Debian's activemq is not installed (apt-get install activemq)"
    return None


def command(base: Path, port: int, name: str = "tests") -> list[str]:
    """The java command line for a broker whose configuration and data live under ``base``.

    The JVM options are those of Debian's /usr/share/activemq/activemq-options; the broker is
    non-persistent and speaks STOMP over NIO on 127.0.0.1:``port``.
    """
    (base / "conf").mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir(parents=True, exist_ok=True)
    config = base / "conf" / "activemq.xml"
    config.write_text(ACTIVEMQ_XML.format(name=name, data=base / "data", port=port))
    return [
        shutil.which("java") or "java", "-Xms512M", "-Xmx512M", "-Dorg.apache.activemq.UseDedicatedTaskRunner=true",
        "--add-opens", "java.base/java.lang=ALL-UNNAMED",
        f"-Dactivemq.classpath={base / 'conf'}", f"-Dactivemq.home={ACTIVEMQ_HOME}",
        f"-Dactivemq.base={base}", f"-Dactivemq.conf={base / 'conf'}", f"-Dactivemq.data={base / 'data'}",
        "-jar", str(ACTIVEMQ_HOME / "bin" / "activemq.jar"), "start", f"xbean:file:{config}",
    ]


def start(base: Path, port: int, timeout: float = 90.0, name: str = "tests") -> subprocess.Popen:
    """Start ActiveMQ and return once its STOMP port accepts connections (its log: base/activemq.log)."""
    return start_listening("ActiveMQ", command(base, port, name), port, base / "activemq.log", cwd=base, timeout=timeout)
