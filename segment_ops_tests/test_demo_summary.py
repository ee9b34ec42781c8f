"""`segment-ops demo`'s summary on a pinned clock (a Sunday whose last complete hour has no audit event):
the audit trail still forwards events, a failed WARN check shows with its figure, the counts add up, and the
last line says to start the sandbox before `dagster dev`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SUNDAY = "2026-11-29T11:30:00Z"  # the clock's last complete hour, 10:00 on a Sunday, holds no audit event


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo's output, run once as the CLI runs it, in a folder of its own."""
    folder = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "DAGSTER_"))}
    env |= {"SEGMENT_OPS_CLOCK": SUNDAY, "SEGMENT_OPS_HOME": str(folder / "home"),
            "DAGSTER_HOME": str(folder / "dagster_home")}
    done = subprocess.run([sys.executable, "-m", "segment_ops.cli", "demo"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def line(summary: str, start: str) -> str:
    [found] = [text.strip() for text in summary.splitlines() if text.strip().startswith(start)]
    return found


@pytest.mark.slow
def test_the_audit_trail_forwards_a_window_with_events_and_splunk_receives_them(summary):
    counts = line(summary, "audit_trail:")
    forwarded = int(re.search(r"= ([\d,]+) in Splunk", counts)[1].replace(",", ""))
    assert forwarded > 0
    assert f"Splunk HEC received {forwarded:,} events" in summary
    # Widened back from the empty Sunday hour to the newest one with events, as one run.
    assert re.search(r"partitions 2026-11-29-0\d:00 to 2026-11-29-10:00, one run", counts), counts


@pytest.mark.slow
def test_a_failed_warn_check_is_shown_with_its_figure(summary):
    check = line(summary, "WARN segment/reverse_etl/account_traits rejected_ratio")
    assert "ratio 0.06" in check and "max_ratio 0.01" in check


@pytest.mark.slow
def test_each_syncs_counts_add_up_in_its_own_terms(summary):
    # The demo's regulated user has two lines in the file: suppressed, not sent.
    replay = ("replay: 3,770 lines read = 3,764 sent + 2 suppressed (a regulated user) + 3 rejected "
              "+ 1 duplicate in the file")
    assert line(summary, "replay:") == replay
    syncs = ("regulations", "replay", "reverse_etl", "pendo", "heap", "audit_trail")
    for equation in [line(summary, f"{sync}:") for sync in syncs]:
        sums = re.sub(r" \(partitions? [^)]*\)$", "", equation).split(";")[0]  # the window, the note
        read, terms = re.fullmatch(r"\w+: ([\d,]+) [a-zA-Z ]+ = (.*)", sums).groups()
        parts = re.findall(r"(?:^| \+ )([\d,]+) ", terms)
        assert sum(int(p.replace(",", "")) for p in parts) == int(read.replace(",", "")), equation


@pytest.mark.slow
def test_the_table_names_what_was_already_there(summary):
    header = line(summary, "sync ")
    assert "already delivered" in header and "pending from earlier" in header
    assert "planned before" not in summary


@pytest.mark.slow
def test_the_delivery_health_alert_says_why(summary):
    # The demo data holds 9 accounts without a user on purpose: 6% rejected, above the 5% alert line.
    health = line(summary, "delivery health")
    assert "1 Slack alert(s) posted to the sandbox's webhook" in health, health
    why = line(summary, "reverse_etl_account_traits:")
    # 149 of the 150 accounts: the one whose first user the demo's regulation erased is withheld.
    assert "9 of 149 messages rejected or failed (6.0%)" in why and "why: 9 x" in why


@pytest.mark.slow
def test_the_last_line_starts_the_sandbox_before_the_ui(summary):
    last = summary.strip().splitlines()[-1]
    assert last.startswith("open the UI on these runs")
    sandbox, dagster = last.index("bin/segment-ops sandbox &"), last.index("bin/dagster dev -m segment_ops")
    assert sandbox < dagster
    assert Path(last[dagster - 100:dagster].split()[-1] + "bin/dagster").exists()  # an absolute, real path
    assert last.count(f"SEGMENT_OPS_CLOCK={SUNDAY}") == 2
    assert re.search(r"SEGMENT_OPS_HOME=\S+/home/demo DAGSTER_HOME=\S+dagster_home", last)
    assert Path(re.search(r"SEGMENT_OPS_HOME=(\S+)", last)[1]).is_dir()


@pytest.mark.slow
def test_one_regulation_is_filed_finished_and_honoured(summary):
    regulations = line(summary, "regulations:")
    assert regulations.startswith("regulations: 1 requests read = 1 new, filed with Segment;")
    assert "1 finished at Segment, 0 still running, 0 failed; 1 subject(s) erased" in regulations
    assert re.search(r"regulations +ok +1 +1 ", summary)
    # The erased user's rows are withheld from the models and the audiences, and the sums still hold.
    assert "row(s) of a user erased by a regulation withheld" in line(summary, "reverse_etl:")
    assert "withheld (a user erased by a regulation)" in line(summary, "heap:")
