"""The 3-node example of deploy/cluster/ (issue 16, item 5): its files hang together
(compose, HAProxy, the node configs, the Dockerfile), each config passes `smtplb
check`, HAProxy accepts its config, and the three shipped configs run as three nodes
on 127.0.0.2/.3/.4 around a redis-server the test starts: each lists all three."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, tool, wait_until
from tests.integration.redisserver import RedisServer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "cluster"
NODES = ("node-a", "node-b", "node-c")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def node_config(name: str) -> dict[str, Any]:
    return tomllib.loads((DEPLOY / f"{name}.toml").read_text())


def test_compose_runs_three_nodes_a_redis_and_haproxy_from_the_shipped_files() -> None:
    services = compose()["services"]
    assert set(NODES) | {"redis", "haproxy", "smarthost"} <= set(services)
    for name in NODES:
        node = services[name]
        assert node["build"]["dockerfile"] == "deploy/cluster/Dockerfile"
        assert (DEPLOY / node["build"]["context"] / node["build"]["dockerfile"]).is_file()
        assert f"./{name}.toml:/etc/smtplb/smtplb.toml:ro" in node["volumes"]
        assert any(v.endswith(":/var/lib/smtplb") for v in node["volumes"])  # its own spool
        assert node["hostname"] == name
        assert set(node["depends_on"]) == {"redis", "smarthost"}
        config = node_config(name)
        assert config["cluster"]["node"] == name
        assert config["cluster"]["redis"].startswith("redis://redis:")  # the redis service
        assert config["data_dir"] == "/var/lib/smtplb"
        relays = [m["relay"].partition(":")[0] for p in config["pools"] for m in p["members"]]
        assert set(relays) <= set(services)
    haproxy = services["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert set(haproxy["depends_on"]) == set(NODES)
    assert {v.rsplit(":", 1)[0] for v in compose()["volumes"]} >= {f"{n}-spool" for n in NODES}


def test_haproxy_fronts_every_node_on_smtp_checking_its_readyz() -> None:
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)", cfg, re.M)
    assert [(name, host) for name, host, _ in servers] == [(n, n) for n in NODES]
    smtp_ports = {int(port) for _, _, port in servers}
    http_ports = {int(p) for p in re.findall(r"check port (\d+)", cfg)}
    for name in NODES:
        config = node_config(name)
        assert {int(a.rsplit(":", 1)[1]) for a in config["smtp"]["listen"]} == smtp_ports
        assert {int(config["http"]["listen"].rsplit(":", 1)[1])} == http_ports
    assert "uri /readyz" in cfg and "http-check expect status 200" in cfg
    result = subprocess.run(
        [tool("haproxy"), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_each_node_config_passes_smtplb_check() -> None:
    for name in NODES:
        result = subprocess.run(
            [sys.executable, "-m", "smtplb", "check", "-c", str(DEPLOY / f"{name}.toml")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        assert "config ok" in result.stdout


def test_the_image_is_small_and_runs_smtplb_as_a_user_not_root() -> None:
    lines = [
        line.split(None, 1)
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith((" ", "#"))
    ]
    instructions = {word: rest for word, rest in lines}
    assert instructions["FROM"] == "python:3.11-slim"
    assert instructions["USER"] not in ("root", "0")
    assert instructions["ENTRYPOINT"] == '["smtplb"]'
    assert instructions["CMD"].startswith('["run"')
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!src/" in ignore  # the build context: only what it installs


class Node(Smtplb):
    """A shipped node config, made to run here: on 127.0.0.x, free ports, a data_dir
    of the test, the test's Redis and sink. Every change is checked to have applied."""

    def __init__(self, workdir: Path, name: str, host: str, redis: str, smarthost: int) -> None:
        text = (DEPLOY / f"{name}.toml").read_text()
        smtp_port, http_port = free_port(host), free_port(host)
        self.host = host
        for old, new in (
            ('data_dir = "/var/lib/smtplb"', f'data_dir = "{workdir / "var"}"'),
            ("workers = 2", "workers = 1"),  # three nodes on a shared 2-core machine
            ('listen = ["0.0.0.0:2525"]', f'listen = ["{host}:{smtp_port}"]'),
            ('listen = "0.0.0.0:8025"', f'listen = "{host}:{http_port}"'),
            ('relay = "smarthost:2525"', f'relay = "127.0.0.1:{smarthost}"'),
            ('redis = "redis://redis:6379/0"', f'redis = "{redis}"'),
        ):
            assert old in text, f"{name}.toml no longer has {old!r}: update this test"
            text = text.replace(old, new)
        super().__init__(workdir, text, smtp_port, http_port)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


def test_the_three_shipped_configs_run_as_three_nodes_sharing_a_redis(
    tmp_path: Path, sinks: Callable[..., ThreadedSink]
) -> None:
    smarthost = sinks()
    with RedisServer() as redis:
        nodes = []
        for i, name in enumerate(NODES):
            (tmp_path / name).mkdir()
            nodes.append(Node(tmp_path / name, name, f"127.0.0.{i + 2}", redis.url, smarthost.port))
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                wait_until(
                    lambda n=node: (
                        {x["node"] for x in n.api("/api/v1/cluster")[1]["nodes"]}  # type: ignore[misc]
                        == set(NODES)
                    ),
                    15,
                    f"{node.host} to list the three nodes",
                )
                assert node.api("/readyz") == (200, {"status": "ready"})  # what HAProxy checks
            for node in nodes:  # mail through each node reaches the upstream
                with smtplib.SMTP(node.host, node.smtp_port, timeout=30) as client:
                    for i in range(5):
                        body = f"Subject: {node.host} {i}\r\n\r\nhi\r\n"
                        client.sendmail("app@shop.test", [f"u{i}@example.org"], body)
            assert smarthost.wait_for(15, 30)

            def rates() -> dict[str, int]:
                view = nodes[0].api("/api/v1/cluster")[1]["nodes"]
                return {n["node"]: n["rate_per_minute"] for n in view}

            wait_until(lambda: rates() == dict.fromkeys(NODES, 5), 10, "each node's rate")
        finally:
            for node in nodes:
                node.stop()
