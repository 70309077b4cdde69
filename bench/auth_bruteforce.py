"""AUTH brute force against smtplb on loopback: how far do wrong passwords get?

    .venv/bin/python bench/auth_bruteforce.py [--attempts 200] [--limit 900]

smtplb runs as a subprocess (``smtplb run``, STARTTLS with a throwaway self-signed
certificate, one user with a default-cost scrypt hash, every [smtp] AUTH key at its
default). From 127.0.0.1 the script sends ``--attempts`` wrong passwords for that user
with AUTH PLAIN after STARTTLS, reconnecting whenever smtplb closes the session, then
the right one; then the right one from 127.0.0.3. Printed: the answers by code, when
the first refusal came, how long the attempts took, and the two right-password logins.
Stops after ``--limit`` seconds of attempts whatever happens. The config sets no new
key, so the same script runs against older smtplb versions too.
"""

from __future__ import annotations

import argparse
import base64
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import SmtplbServer, toml_str
from procs import become_subreaper, free_port

USER, PASSWORD = "alice", "correct horse battery staple"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def connect(port: int, source: str) -> smtplib.SMTP:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the throwaway certificate of this run
    smtp = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=60)
    smtp.starttls(context=context)
    smtp.ehlo("bruteforce.test")
    return smtp


def login(port: int, source: str, password: str) -> tuple[int, str, float]:
    started = time.monotonic()
    with connect(port, source) as smtp:
        code, text = smtp.docmd("AUTH", "PLAIN " + plain(USER, password))
    return code, text.decode(errors="replace"), time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--attempts", type=int, default=200)
    p.add_argument("--limit", type=float, default=900.0, help="seconds of attempts at most")
    args = p.parse_args()
    become_subreaper()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from smtplb.intake.auth import hash_password

    with tempfile.TemporaryDirectory(prefix="smtplb-auth-") as tmp:
        work = Path(tmp)
        cert, key = work / "cert.pem", work / "key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-nodes", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", str(key),
                "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        server = SmtplbServer(work, [f"127.0.0.1:{free_port()}"])
        relay_line = 'relay_networks = ["127.0.0.0/8"]\n'
        smtp_keys = (
            f"tls_cert = {toml_str(str(cert))}\ntls_key = {toml_str(str(key))}\n"
            f"users = [{{ name = {toml_str(USER)}, "
            f"password_hash = {toml_str(hash_password(PASSWORD))} }}]\n"
        )
        server.config_text = server.config_text.replace(relay_line, relay_line + smtp_keys)
        server.start()
        try:
            codes: dict[int, int] = {}
            first_refusal: tuple[int, float, str] | None = None
            sessions = 0
            started = time.monotonic()
            attempt = 0
            while attempt < args.attempts and time.monotonic() - started < args.limit:
                sessions += 1
                try:
                    with connect(server.port, "127.0.0.1") as smtp:
                        while attempt < args.attempts:
                            if time.monotonic() - started >= args.limit:
                                break
                            code, text = smtp.docmd("AUTH", "PLAIN " + plain(USER, f"w{attempt}"))
                            attempt += 1
                            codes[code] = codes.get(code, 0) + 1
                            if code != 535 and first_refusal is None:
                                first_refusal = (attempt, time.monotonic() - started, text.decode())
                            if code == 421:
                                break
                except (smtplib.SMTPServerDisconnected, ConnectionError):
                    pass
            took = time.monotonic() - started
            same_ip = login(server.port, "127.0.0.1", PASSWORD)
            other_ip = login(server.port, "127.0.0.3", PASSWORD)
            log = [
                line
                for line in (work / "smtplb.log").read_text(errors="replace").splitlines()
                if "AUTH " in line
            ]
        finally:
            server.stop()
    print(f"AUTH brute force: {attempt} wrong passwords from 127.0.0.1 in {took:.1f}s")
    print(f"  over {sessions} sessions; answers by code: {dict(sorted(codes.items()))}")
    if first_refusal is not None:
        n, at, text = first_refusal
        print(f"  first answer other than 535: attempt {n} after {at:.1f}s: {text}")
    print(f"  right password from 127.0.0.1 then: {same_ip[0]} {same_ip[1]} ({same_ip[2]:.2f}s)")
    print(f"  right password from 127.0.0.3 then: {other_ip[0]} {other_ip[1]} ({other_ip[2]:.2f}s)")
    print(f"  smtplb log lines with AUTH: {len(log)}; first and last:")
    for line in log[:1] + log[-1:]:
        print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
