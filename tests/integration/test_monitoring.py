"""What operators plug into their monitoring (issue 16, item 5): the Grafana dashboard
(deploy/grafana/smtplb.json), the Prometheus alert rules
(deploy/prometheus/smtplb-rules.yml) and a scrape config for the 3-node example. The
rules pass `promtool check rules` and their unit tests (`promtool test rules`), the
config `promtool check config`; every metric the dashboard or the rules query is one
a running relay really exports on /metrics."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, tool, wait_until
from tests.integration.redisserver import RedisServer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "smtplb.json"
RULES = DEPLOY / "prometheus" / "smtplb-rules.yml"
METRIC = re.compile(r"\bsmtplb_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(smtplb_[a-z0-9_]+)\{([^}]*)\}")


# Used by the rules and the dashboard, exported by a part merged on its own: the Redis
# state backends (issue 16, items 1-3) export smtplb_cluster_redis_up. Empty this once
# they are in: the test then holds the name to the exports like every other.
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries() -> list[str]:
    """Every PromQL text of the dashboard (panels, variables, annotations) and rules."""
    board = dashboard()
    texts = [t["expr"] for p in panels() for t in p.get("targets", [])]
    texts += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    texts += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return texts + [rule["expr"] for rule in rules()]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60
    )


def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = promtool("check", "rules", RULES.name)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout
    unit = promtool("test", "rules", "smtplb-rules.test.yml")
    assert unit.returncode == 0, unit.stdout + unit.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    scraped = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())
    targets = scraped["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"node-{n}:8025" for n in "abc"]  # the example's nodes


def test_the_rules_alert_on_what_the_issue_names_each_with_a_severity_and_words() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert len(by_name) == len(rules()), "alert names are unique"
    for needed, metric in {
        "SmtplbMemberDown": "smtplb_member_health",
        "SmtplbMemberQuarantined": "smtplb_member_reputation_state",
        "SmtplbSuspensionStorm": "smtplb_provider_suspensions_total",
        "SmtplbQueueOld": "smtplb_queue_oldest_age_seconds",
        "SmtplbHighDeferralRate": "smtplb_messages_total",
        "SmtplbHighComplaintRate": "smtplb_member_reputation_rate",
        "SmtplbRedisFallback": "smtplb_cluster_redis_up",
    }.items():
        assert metric in by_name[needed]["expr"], needed
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "by (instance" in rule["expr"], f"{rule['alert']}: one alert per node"


def test_the_dashboard_shows_nodes_pools_members_and_providers() -> None:
    board = dashboard()
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    rows = [p["title"] for p in panels() if p["type"] == "row"]
    assert rows == ["Nodes", "Pools", "Members", "Providers"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "instance", "pool", "member", "provider"}
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert all("$instance" in t["expr"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def exported(text: str) -> dict[str, set[str]]:
    """Series names in an exposition, each with the label names seen on it."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
        }.get(family.type, ("",))
        for suffix in suffixes:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_every_metric_the_dashboard_and_rules_query_is_exported(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    upstream = sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [upstream.port])
    with RedisServer() as redis:
        node = smtplb(
            f'{text}[cluster]\nredis = "{redis.url}"\nnode = "n1"\n', smtp_port, http_port
        )
        node.start()
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:  # traffic: the counters
            client.ehlo()
            client.mail("app@shop.test")
            client.rcpt("reader@example.org")
            _, reply = client.data(b"Subject: hi\r\n\r\nhi\r\n")
        assert upstream.wait_for(1, 10)
        queue_id = reply.decode().rsplit(" ", 1)[1]
        wait_until(
            lambda: (
                node.api(f"/api/v1/queue/{queue_id}")[1]["recipients"][0]["state"] == "delivered"
            ),
            10,
            "the delivery recorded",
        )
        complaint = {"type": "complaint", "recipient": "reader@example.org", "queue_id": queue_id}
        assert node.api("/api/v1/feedback", "POST", complaint)[0] == 200
        with urllib.request.urlopen(f"{node.api_url}/metrics", timeout=10) as resp:
            names = exported(resp.read().decode())
        assert node.stop() == 0

    used = {name for query in queries() for name in METRIC.findall(query)}
    assert len(used) >= 20, sorted(used)
    missing = used - set(names)
    assert not missing, f"queried but not exported: {sorted(missing)}"
    # Label names in selectors exist on the series (where a sample shows its labels).
    for query in queries():
        for name, matchers in SELECTOR.findall(query):
            seen = names.get(name) or set()
            wanted = {m.split("=")[0].rstrip("!~").strip() for m in matchers.split(",") if m}
            if seen:
                assert wanted <= seen | {"instance", "job"}, (name, wanted - seen)
