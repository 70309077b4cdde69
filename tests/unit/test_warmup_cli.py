"""`smtplb warmup plan` and `smtplb warmup simulate` on files, no service."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from smtplb.cli import main
from smtplb.observability.record import DeliveryRecord, encode

CONFIG = """
data_dir = "{data}"
[warmup]
schedule = [50, 70, 100]
max_hourly_share = 1.0
[[pools]]
name = "ips"
  [[pools.members]]
  name = "warm"
  source_ip = "127.0.0.2"
  [[pools.members]]
  name = "new"
  source_ip = "127.0.0.3"
  warmup = true
"""


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "smtplb.toml"
    path.write_text(CONFIG.format(data=tmp_path / "var"))
    return path


def test_plan_prints_caps_by_date_and_creates_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = CliRunner().invoke(
        main, ["warmup", "plan", "new", "--provider", "gmail", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "new × gmail: today day 1, sent 0"
    assert [ln.split()[1:] for ln in lines[2:]] == [
        ["1", "50", "50"],
        ["2", "70", "70"],
        ["3", "100", "100"],
        ["4", "warm", "-"],
    ]
    assert not (tmp_path / "var").exists()
    refused = CliRunner().invoke(main, ["warmup", "plan", "warm", "-c", str(config)])
    assert refused.exit_code == 1 and "'warm' has no warmup = true (warming: new)" in refused.output


def test_simulate_replays_a_log_against_the_schedule(tmp_path: Path) -> None:
    t0 = 20_000 * 86400.0
    records = [
        DeliveryRecord(ts=t0 + d * 86400 + i, event="delivered", recipient=f"u{i}@gmail.com",
                       recipient_domain="gmail.com", member="new", code=250, enhanced_code="2.0.0")
        for d in range(2)
        for i in range(80)
    ]  # fmt: skip
    log = tmp_path / "delivery.jsonl"
    log.write_bytes(b"\n".join(encode(r) for r in records) + b"\n")
    result = CliRunner().invoke(
        main, ["warmup", "simulate", "--log", str(log), "-c", str(_config(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    assert "160 attempts replayed" in result.output
    row = next(ln for ln in result.output.splitlines() if ln.startswith("new"))
    assert row.split() == ["new", "gmail", str(50 + 70), str(30 + 10), "2"]
    assert "warmup_advanced" in result.output and "gmail: day 1 → 2" in result.output
    missing = CliRunner().invoke(main, ["warmup", "simulate", "--log", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such file" in missing.output
