"""A real DNS server on loopback for integration tests: dnsmasq, started by the test.

Tests that resolve MX, A, TXT (DKIM, SPF, DMARC) records point smtplb's
``[dns] nameservers`` at it instead of the system resolver::

    zone = Zone()
    zone.mx("gmail.test", "mx1.gmail.test", 10)
    zone.a("mx1.gmail.test", "127.0.0.2")
    zone.txt("s1._domainkey.example.test", "v=DKIM1; k=rsa; p=…")
    with DnsServer(zone) as dns:
        config = {"dns": {"nameservers": [dns.address]}}

dnsmasq answers only for what the zone holds (``--no-resolv --no-hosts``, never
forwarding) and NXDOMAIN for the rest of each ``local`` domain; a missing dnsmasq
fails the test (never skips). Records are fixed for the server's life: a test that
needs other records starts another server.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.integration.conftest import free_port, tool


@dataclass
class Zone:
    """The records a :class:`DnsServer` serves, as dnsmasq options."""

    options: list[str] = field(default_factory=list)
    domains: set[str] = field(default_factory=set)

    def mx(self, domain: str, host: str, preference: int = 10) -> Zone:
        self.domains.add(domain)
        self.options.append(f"--mx-host={domain},{host},{preference}")
        return self

    def null_mx(self, domain: str) -> Zone:
        """RFC 7505: ``MX 0 .`` — the domain accepts no mail."""
        return self.mx(domain, ".", 0)

    def a(self, name: str, address: str) -> Zone:
        self.options.append(f"--host-record={name},{address}")
        return self

    def txt(self, name: str, *strings: str) -> Zone:
        """One TXT record; several strings (each ≤ 255 bytes) make one long value.
        dnsmasq takes the strings comma-separated on its command line, so none may hold a
        comma."""
        if any("," in s for s in strings):
            raise ValueError(f"TXT strings for {name} may not contain a comma")
        self.options.append(f"--txt-record={name},{','.join(strings)}")
        return self

    def nxdomain(self, domain: str) -> Zone:
        """Answer NXDOMAIN for the domain and every name below it."""
        self.domains.add(domain)
        return self


def dnsmasq_argv(zone: Zone, port: int) -> list[str]:
    """dnsmasq serving ``zone`` on 127.0.0.1:``port``, forwarding nothing."""
    return [
        tool("dnsmasq"),
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--except-interface=nonexistent",  # no DHCP, no other interface
        f"--port={port}",
        "--user=root",
        "--log-facility=-",
        "--cache-size=0",
        *(f"--local=/{d}/" for d in sorted(zone.domains)),
        *zone.options,
    ]


class DnsServer:
    """dnsmasq on 127.0.0.1:PORT (UDP and TCP) serving a :class:`Zone`."""

    def __init__(self, zone: Zone, workdir: Path | None = None, ttl: int = 0) -> None:
        self.zone = zone
        self.ttl = ttl  # of the zone's answers (dnsmasq's --local-ttl; 0: not to be cached)
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port``, the form of ``[dns] nameservers``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            *dnsmasq_argv(self.zone, self.port),
            "--keep-in-foreground",
            "--pid-file=",
            f"--local-ttl={self.ttl}",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        """Until dnsmasq answers a query (any answer, NXDOMAIN included)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        query = dns.message.make_query("ready.invalid.", dns.rdatatype.A)
        while True:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise RuntimeError(f"dnsmasq exited {self.proc.returncode}: {out}")
            try:
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
                return
            except (dns.exception.Timeout, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dnsmasq did not answer on {self.address}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
