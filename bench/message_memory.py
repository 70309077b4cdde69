"""RSS of a running smtplb around large messages (issue 10, item 6).

Starts ``smtplb run`` (one process) with its one member pointing at a port
where nothing listens, so what is measured is intake: the SMTP session, the
header work and the spool write (the one delivery attempt fails at connect and
defers). Sends ``--count`` messages of ``--size`` MB at once with smtplib and
prints VmRSS before, the peak (VmHWM), and after: once every message is
deferred (the dispatcher has let go of it), read from the queue API.

    .venv/bin/python bench/message_memory.py --size 24 --count 1
    .venv/bin/python bench/message_memory.py --size 24 --count 4
"""

from __future__ import annotations

import argparse
import json
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def deferred(http_port: int) -> int:
    url = f"http://127.0.0.1:{http_port}/api/v1/queue?limit=1"
    with urllib.request.urlopen(url, timeout=10) as resp:
        stats: dict[str, int] = json.loads(resp.read())["stats"]
    return stats.get("deferred", 0)


def message(size: int) -> bytes:
    """A plain message of about ``size`` bytes: 76-character base64-like lines."""
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    header = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: big\r\n\r\n"
    return header + line * (size // len(line))


def send(port: int, data: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        try:
            client.sendmail("a@example.test", ["b@example.test"], data)
            return "250"
        except smtplib.SMTPResponseException as exc:
            return f"{exc.smtp_code} {exc.smtp_error.decode()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=24.0, help="message size in MB")
    parser.add_argument("--count", type=int, default=1, help="messages sent at once")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the batch")
    parser.add_argument("--max-message-size", default="25MB")
    args = parser.parse_args()

    smtp_port, http_port, dead_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="smtplb-mem-") as tmp:
        work = Path(tmp)
        (work / "smtplb.toml").write_text(
            f'data_dir = "{work / "var"}"\n'
            'hostname = "relay.smtplb.test"\n'
            "[smtp]\n"
            f'listen = ["127.0.0.1:{smtp_port}"]\n'
            f'max_message_size = "{args.max_message_size}"\n'
            "[http]\n"
            f'listen = "127.0.0.1:{http_port}"\n'
            "[[pools]]\n"
            'name = "main"\n'
            "[[pools.members]]\n"
            'name = "nowhere"\n'
            f'relay = "127.0.0.1:{dead_port}"\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtplb", "run", "-c", str(work / "smtplb.toml")],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "smtplb listening" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            if not ready.wait(30):
                print("smtplb did not start", file=sys.stderr)
                return 1
            data = message(int(args.size * 1e6))
            before = status(proc.pid)["VmRSS"]
            print(f"message {len(data) / 1e6:.1f} MB x {args.count}, {args.rounds} round(s)")
            print(f"RSS before         {before / 1024:7.1f} MB")
            for round_no in range(1, args.rounds + 1):
                started = time.monotonic()
                with ThreadPoolExecutor(args.count) as pool:
                    answers = list(pool.map(lambda _: send(smtp_port, data), range(args.count)))
                took = time.monotonic() - started
                deadline = time.monotonic() + 60
                while deferred(http_port) < round_no * args.count:
                    if time.monotonic() > deadline:
                        print("messages not deferred within 60 s", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
                st = status(proc.pid)
                print(
                    f"round {round_no}: answers {answers} in {took:.1f} s; "
                    f"RSS after {st['VmRSS'] / 1024:7.1f} MB (anon {st['RssAnon'] / 1024:.1f}, "
                    f"file {st['RssFile'] / 1024:.1f}), peak {st['VmHWM'] / 1024:7.1f} MB"
                )
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
