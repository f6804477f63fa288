"""bench/report.py: a same-host and a cross-host run side by side (pure logic)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # noqa: E402


def run(date: str, figures: dict[str, float], engines: list[int],
        loopback: float, cross: bool = False) -> dict:
    """A results document: W1 p50 at N=8 per system, and a loopback reference."""
    meta = {"date": date, "machine": "vm", "quick": True, "engines": engines}
    if cross:
        meta["cross_host"] = True
    return {
        "meta": meta,
        "reference": {"entries": [{"workload": "REF", "variant": "loopback_tcp",
                                   "metric": "mbps", "value": loopback}]},
        "systems": {s: {"version": "1", "entries": [
            {"workload": "W1", "variant": "execute", "engines": 8, "metric": "p50_ms",
             "value": v}]} for s, v in figures.items()},
    }


SAME = run("day 1", {"ipython1": 2.0, "ipyparallel": 8.0, "dask": 4.0}, [1, 8], 3700.0)
CROSS = run("day 2", {"ipython1": 6.0, "ipyparallel": 12.0, "dask": 3.0}, [8, 32], 620.0,
            cross=True)


def test_combine_puts_each_system_next_to_its_cross_host_twin():
    doc = report.combine(SAME, CROSS)
    assert report.ordered_systems(doc) == [
        "ipython1", "ipython1 cross-host", "ipyparallel", "ipyparallel cross-host",
        "dask", "dask cross-host"]
    assert doc["systems"]["dask cross-host"] is CROSS["systems"]["dask"]
    assert doc["meta"]["engines"] == [1, 8, 32]
    assert doc["meta"]["cross_host_date"] == "day 2"
    assert [e["variant"] for e in doc["reference"]["entries"]] == [
        "loopback_tcp", "loopback_tcp cross-host"]


def test_combine_keeps_a_system_measured_in_one_run_only():
    cross = run("day 2", {"dask": 3.0}, [8], 620.0, cross=True)
    doc = report.combine(SAME, cross)
    assert report.ordered_systems(doc) == [
        "ipython1", "ipyparallel", "dask", "dask cross-host"]
    # No cross-host ipython1: no cross-host ratio columns.
    assert [h for h, _, _ in report.ratio_columns(doc)] == ["ipython1/ipyparallel",
                                                            "ipython1/dask"]


def test_combined_table_has_cross_host_columns_and_ratios_within_each_run():
    table = report.markdown(report.combine(SAME, CROSS))
    header = next(line for line in table.splitlines() if line.startswith("| workload"))
    assert header.split(" | ")[3:] == [
        "ipython1", "ipython1 cross-host", "ipyparallel", "ipyparallel cross-host", "dask",
        "dask cross-host", "ipython1/ipyparallel", "ipython1/dask",
        "ipython1/ipyparallel cross-host", "ipython1/dask cross-host |"]
    row = next(line for line in table.splitlines() if line.startswith("| W1 | 8 |"))
    # Same-host ratios compare same-host figures; cross-host ones cross-host figures.
    assert row.split(" | ")[3:] == ["2 (execute)", "6 (execute)", "8 (execute)",
                                    "12.0 (execute)", "4 (execute)", "3 (execute)",
                                    "0.25", "0.50", "0.50", "2.00 |"]
    assert "day 2 across network-namespace hosts" in table
