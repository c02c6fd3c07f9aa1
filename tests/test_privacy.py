"""No traffic off the machine: the whole flow, watched by strace, in a loopback-only network.

Every connect() of every process (Python or native code, Hearth or any library's telemetry) is
recorded; any address other than loopback, and any DNS lookup, fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS, SMOLLM, free_port

pytestmark = pytest.mark.real  # real servers, models or a browser

FLOW = Path(__file__).with_name("network_flow.py")
ADDRESS = re.compile(r'sin6?_port=htons\((\d+)\).*?(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")')


def loopback_namespace() -> list[str]:
    """A command prefix for a network namespace with only loopback, where the kernel allows it."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        return []
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def offending(trace: str) -> list[str]:
    bad = []
    for line in trace.splitlines():
        if "connect(" not in line or "AF_UNIX" in line:
            continue
        match = ADDRESS.search(line)
        if not match:
            continue
        port, v4, v6 = match.groups()
        host = v4 or v6
        loopback = host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")
        if not loopback or port == "53":
            bad.append(line.strip())
    return bad


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (Debian package)")
def test_the_whole_flow_talks_to_nothing_but_loopback(tmp_path: Path) -> None:
    trace = tmp_path / "connect.trace"
    env = {**os.environ, "HEARTH_MODELS_DIR": str(MODELS), "HEARTH_LLAMACPP_MODEL": SMOLLM,
           "HEARTH_MAX_NEW_TOKENS": "32", "HEARTH_DOCS_DIR": str(tmp_path / "no-docs")}
    for name in ("HF_HUB_OFFLINE", "DO_NOT_TRACK", "ANONYMIZED_TELEMETRY"):
        env.pop(name, None)  # Hearth must switch these off itself
    command = [*loopback_namespace(), "strace", "-f", "-qq", "-e", "trace=connect",
               "-o", str(trace), sys.executable, str(FLOW), str(tmp_path / "flow"),
               str(free_port())]
    (tmp_path / "flow").mkdir()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "flow ok" in result.stdout
    text = trace.read_text()
    assert "127.0.0.1" in text, "strace saw the flow's own loopback connections"
    assert offending(text) == []


def test_the_trace_check_catches_other_addresses() -> None:
    lines = [
        '12 connect(5, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("104.18.1.1")}, 16) = -1',
        '12 connect(5, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 0',
        '12 connect(5, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2606:4700::1", &sin6_addr), sin6_scope_id=0}, 28) = -1',
        '12 connect(5, {sa_family=AF_INET, sin_port=htons(8000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '12 connect(5, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1',
    ]
    assert len(offending("\n".join(lines))) == 3
