"""OpenDKIM's verifier, ``opendkim-testmsg``, against the records of a test :class:`Zone`.

``opendkim-testmsg`` has no option for a DNS server: libopendkim asks the system
resolver, which reads /etc/resolv.conf and queries port 53. So it runs in private
network and mount namespaces (``unshare``, as root): a loopback of its own, where
dnsmasq serves the same zone on port 53, and a bind-mounted resolv.conf naming it.
Nothing outside the namespaces sees either. Needs root, ``unshare`` and ``mount``
(util-linux) and ``ip`` (iproute2).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tests.integration.conftest import tool
from tests.integration.dnsserver import Zone, dnsmasq_argv


def opendkim_verify(message: bytes, zone: Zone, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``opendkim-testmsg`` on ``message`` (verify mode); returncode 0 = verified."""
    workdir.mkdir(parents=True, exist_ok=True)
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    eml = workdir / "message.eml"
    eml.write_bytes(message)
    pid_file = workdir / "dnsmasq.pid"
    dnsmasq = shlex.join([*dnsmasq_argv(zone, 53), f"--pid-file={pid_file}"])
    script = f"""
set -e
{shlex.quote(tool("ip"))} link set lo up
{shlex.quote(tool("mount"))} --bind {shlex.quote(str(resolv))} /etc/resolv.conf
{dnsmasq}
set +e
{shlex.quote(tool("opendkim-testmsg"))} < {shlex.quote(str(eml))}
rc=$?
kill "$(cat {shlex.quote(str(pid_file))})"
exit $rc
"""
    return subprocess.run(
        [tool("unshare"), "--net", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
