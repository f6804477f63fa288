"""Render results.json as a Markdown table and PNG plots.

The table needs only the standard library (run.py imports it); the plots need
matplotlib, so run.py runs ``python report.py plots results.json OUTDIR`` in
the peers' venv.

``python report.py combine SAME_DIR CROSS_DIR OUT_DIR`` puts a same-host run
and a ``--cross-host`` run side by side: every system gets a second column,
``<system> cross-host``, and the plots draw it dashed (lines) or hatched (bars).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SYSTEM_ORDER = ("ipython1", "ipyparallel", "dask")
PEERS = ("ipyparallel", "dask")
WORKLOAD_ORDER = ("START", "W1", "MEM", "W2", "W3", "W4", "W5")
WORKLOAD_TITLES = {
    "START": "start-up until all N engines registered",
    "W1": "latency-all: a no-op on all N engines",
    "MEM": "memory per engine (PSS, incl. nanny)",
    "W2": "latency-one: a no-op round trip on one engine",
    "W3": "throughput: no-op tasks through the load balancer, 2 engines",
    "W4": "data: float64 array to/from engines",
    "W5": "fault: 200 tasks of 50 ms on 4 engines, one engine SIGKILLed at 0.5 s",
}
# The workloads each phase of a system module measures (see common.PHASES).
PHASE_ROWS = {"SCALE": ("START", "W1", "MEM"), "THROUGHPUT": ("W3",), "DATA": ("W4",),
              "FAULT": ("W5",)}
METRIC_ORDER = ("startup_s", "p50_ms", "p90_ms", "min_ms", "pss_mib_per_engine", "tasks_per_s",
                "completed", "tasks_lost", "wall_s", "nofault_wall_s", "wall_over_nofault",
                "errors")

CROSS = " cross-host"  # suffix of a system measured across hosts in a combined document

Key = tuple[str, str, Any]  # workload, metric, engines


def combine(same: dict[str, Any], cross: dict[str, Any]) -> dict[str, Any]:
    """Merge a same-host and a cross-host results document into one.

    Each system of the cross-host run appears again as ``<system> cross-host``;
    the reference limits of both runs are kept, the cross-host ones suffixed.
    """
    systems = {}
    for name in [*same["systems"], *(s for s in cross["systems"] if s not in same["systems"])]:
        if name in same["systems"]:
            systems[name] = same["systems"][name]
        if name in cross["systems"]:
            systems[name + CROSS] = cross["systems"][name]
    reference = list(same.get("reference", {}).get("entries", []))
    reference += [dict(e, variant=e["variant"] + CROSS)
                  for e in cross.get("reference", {}).get("entries", [])]
    meta = dict(same["meta"], engines=sorted({*same["meta"]["engines"],
                                              *cross["meta"]["engines"]}),
                quick=same["meta"]["quick"] and cross["meta"]["quick"],
                cross_host_date=cross["meta"]["date"])
    meta.pop("cross_host", None)
    return {"meta": meta, "reference": {"entries": reference}, "systems": systems}


def ordered_systems(doc: dict[str, Any]) -> list[str]:
    """Systems in table order: each known system, then its cross-host twin."""
    return [name for s in SYSTEM_ORDER for name in (s, s + CROSS) if name in doc["systems"]]


def ratio_columns(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(header, ipython1 column, peer column) for each ratio the table shows."""
    out = []
    for suffix in ("", CROSS):
        mine = "ipython1" + suffix
        entries = doc["systems"].get(mine, {}).get("entries", [])
        if not any("value" in e for e in entries):
            continue
        out += [(f"ipython1/{p}{suffix}", mine, p + suffix) for p in PEERS
                if p + suffix in doc["systems"]]
    return out


def higher_is_better(metric: str) -> bool | None:
    """Tell which way a metric improves; None when it is not a number to compare."""
    if metric.endswith("_mbps") or metric.endswith("_per_s"):
        return True
    if metric in ("completed", "errors"):
        return None
    return False


def best(values: list[Any], metric: str) -> Any:
    """Return the best of several variants' values of one metric."""
    direction = higher_is_better(metric)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if direction is None or not numbers:
        return None
    return max(numbers) if direction else min(numbers)


def collect(doc: dict[str, Any]) -> dict[Key, dict[str, list[tuple[str, Any]]]]:
    """Group entries as {(workload, metric, engines): {system: [(variant, value|error)]}}."""
    rows: dict[Key, dict[str, list[tuple[str, Any]]]] = {}
    for system, sysdoc in doc["systems"].items():
        for entry in expand_phase_errors(sysdoc["entries"]):
            if entry["workload"] not in WORKLOAD_ORDER:
                continue
            metric = entry.get("metric", "error")
            key = (entry["workload"], metric, entry.get("engines"))
            value = entry["value"] if "error" not in entry else Error(entry["error"])
            rows.setdefault(key, {}).setdefault(system, []).append((entry["variant"], value))
    # An error has no metric: show it on every row of that workload and N
    # (any N when the error has none), and drop the bare error rows.
    for (workload, metric, engines), cells in list(rows.items()):
        if metric != "error":
            continue
        for key, other in rows.items():
            same_n = engines is None or key[2] == engines
            if key[0] == workload and key[1] != "error" and same_n:
                for system, entries in cells.items():
                    other.setdefault(system, []).extend(entries)
        if any(k[0] == workload and k[1] != "error" and (engines is None or k[2] == engines)
               for k in rows):
            del rows[(workload, metric, engines)]
    return rows


def expand_phase_errors(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn a failed or skipped phase into an error on each workload it measures."""
    out = []
    for entry in entries:
        if "error" in entry and entry["workload"] in PHASE_ROWS:
            for workload in PHASE_ROWS[entry["workload"]]:
                expanded = dict(entry, workload=workload)
                if entry["workload"] != "SCALE":  # only scale's rows are per N
                    expanded.pop("engines", None)
                out.append(expanded)
        else:
            out.append(entry)
    return out


class Error(str):
    """A failed workload's message, in place of a value."""


def sort_key(key: Key) -> tuple[Any, ...]:
    """Order rows by workload, N, then metric (W4: by size, push before pull)."""
    workload, metric, engines = key
    metric_rank: tuple[Any, ...]
    if metric in METRIC_ORDER:
        metric_rank = (METRIC_ORDER.index(metric),)
    elif workload == "W4" and metric.count("_") == 2:
        op, size, _ = metric.split("_")
        ops = ("push", "pull", "scatter", "gather")
        metric_rank = (int(size.rstrip("MiB") or 0), ops.index(op) if op in ops else 9)
    else:
        metric_rank = (len(METRIC_ORDER),)
    return (WORKLOAD_ORDER.index(workload), engines or 0, metric_rank, metric)


def fmt(value: Any) -> str:
    if isinstance(value, Error):
        return "error"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def cell(entries: list[tuple[str, Any]] | None) -> str:
    if not entries:
        return "–"
    if all(isinstance(value, Error) for _, value in entries):
        return "error"
    variants = {v for v, _ in entries}
    if len(entries) == 1 and len(variants) == 1:
        variant, value = entries[0]
        return f"{fmt(value)} ({variant})"
    return "<br>".join(f"{fmt(value)} ({variant})" for variant, value in entries)


def ratio(mine: list[tuple[str, Any]] | None, theirs: list[tuple[str, Any]] | None,
          metric: str) -> str:
    """Return ipython1's best / the peer's best, or '' when either is missing."""
    if not mine or not theirs:
        return ""
    a = best([v for _, v in mine], metric)
    b = best([v for _, v in theirs], metric)
    if a is None or b is None or b == 0:
        return ""
    return f"{a / b:.2f}"


def markdown(doc: dict[str, Any]) -> str:
    """Return the side-by-side Markdown report of a results document."""
    meta = doc["meta"]
    systems = ordered_systems(doc)
    ratios = ratio_columns(doc)
    where = ""
    if meta.get("cross_host_date"):
        where = (f" (same host), and {meta['cross_host_date']} across network-namespace hosts "
                 "(columns `cross-host`: controller/scheduler, engines/workers on two hosts "
                 "and the client each on its own host)")
    elif meta.get("cross_host"):
        where = " across network-namespace hosts"
    lines = [
        "# Benchmark: ipython1 side by side with ipyparallel and dask.distributed",
        "",
        f"Run {meta['date']}{where} on {meta['machine']}; "
        f"{'quick' if meta['quick'] else 'full'} run, N = {', '.join(map(str, meta['engines']))}.",
        "",
        "Versions: " + "; ".join(f"{s} {doc['systems'][s].get('version', '?')}" for s in systems
                                 if not s.endswith(CROSS))
        + ".",
        "",
        "Each cell is one figure per variant of the workload (the variant in brackets). "
        "Ratios are ipython1 / peer, using each system's best variant: for ms, s, MiB and "
        "the fault/no-fault ratio lower is better; for tasks/s and MB/s (10^6 bytes/s) "
        "higher is better.",
        "",
    ]
    header = ["workload", "N", "metric", *systems, *[h for h, _, _ in ratios]]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    rows = collect(doc)
    for key in sorted(rows, key=sort_key):
        workload, metric, engines = key
        cells = rows[key]
        row = [workload, "" if engines is None else str(engines), metric]
        row += [cell(cells.get(s)) for s in systems]
        row += [ratio(cells.get(mine), cells.get(peer), metric) for _, mine, peer in ratios]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Workloads:", ""]
    lines += [f"- **{w}**: {t}" for w, t in WORKLOAD_TITLES.items()]
    ref = doc.get("reference", {}).get("entries", [])
    if ref:
        lines += ["", "## Reference: physical limits of this machine", "",
                  "| limit | MB/s |", "|---|---|"]
        for entry in ref:
            lines.append(f"| {entry['variant']} | "
                         f"{fmt(entry['value']) if 'value' in entry else 'error'} |")
    errors = [(s, e) for s in systems for e in doc["systems"][s]["entries"] if "error" in e]
    if errors:
        lines += ["", "## Failures", ""]
        seen = set()
        for system, entry in errors:
            text = (f"- {system} {entry['workload']} {entry['variant']}"
                    f"{'' if entry.get('engines') is None else ' N=' + str(entry['engines'])}: "
                    f"{entry['error'].splitlines()[0] if entry['error'] else ''}")
            if text not in seen:
                seen.add(text)
                lines.append(text)
    plots = [p for p in ("latency_vs_engines.png", "throughput.png", "bandwidth.png")]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plots(doc: dict[str, Any], outdir: Path) -> list[Path]:
    """Write the three PNG plots; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = ordered_systems(doc)
    written = []
    colours: dict[str, Any] = {}  # one colour per system and variant, shared by its twin

    def colour(system: str, variant: str) -> Any:
        key = system.removesuffix(CROSS) + " " + variant
        return colours.setdefault(key, f"C{len(colours) % 10}")

    # Latency of a no-op on all N engines against N, log-log.
    fig, ax = plt.subplots(figsize=(7, 5))
    all_ns: set[int] = set()
    for system in systems:
        series: dict[str, dict[int, dict[str, float]]] = {}
        for e in doc["systems"][system]["entries"]:
            if e["workload"] == "W1" and "value" in e:
                series.setdefault(e["variant"], {}).setdefault(e["engines"], {})[e["metric"]] = \
                    e["value"]
        for variant, by_n in sorted(series.items()):
            ns = sorted(n for n in by_n if "p50_ms" in by_n[n])
            all_ns.update(ns)
            p50 = [by_n[n]["p50_ms"] for n in ns]
            p90 = [by_n[n].get("p90_ms", by_n[n]["p50_ms"]) for n in ns]
            lows = [by_n[n].get("min_ms", by_n[n]["p50_ms"]) for n in ns]
            yerr = [[max(0.0, a - b) for a, b in zip(p50, lows, strict=True)],
                    [max(0.0, b - a) for a, b in zip(p50, p90, strict=True)]]
            ax.errorbar(ns, p50, yerr=yerr, marker="o", capsize=3, label=f"{system} {variant}",
                        color=colour(system, variant),
                        linestyle="--" if system.endswith(CROSS) else "-")
    ax.axhline(100, color="grey", linestyle=":", label="100 ms target")
    ax.set_xscale("log", base=2)
    if all_ns:
        ax.set_xticks(sorted(all_ns), [str(n) for n in sorted(all_ns)])
    ax.set_yscale("log")
    ax.set_xlabel("engines N")
    ax.set_ylabel("p50 latency, ms (bars: min to p90)")
    ax.set_title("W1: no-op on all N engines")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(outdir / "latency_vs_engines.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    def bars(workload: str, metrics: list[str], title: str, ylabel: str, name: str,
             lines: dict[str, float]) -> None:
        labels, values = [], {m: [] for m in metrics}  # type: ignore[var-annotated]
        crossed = []  # which bars are cross-host: hatched
        for system in systems:
            by_variant: dict[str, dict[str, float]] = {}
            for e in doc["systems"][system]["entries"]:
                if e["workload"] == workload and "value" in e and e["metric"] in metrics:
                    by_variant.setdefault(e["variant"], {})[e["metric"]] = e["value"]
            for variant, figures in by_variant.items():
                labels.append(f"{system.removesuffix(CROSS)}\n{variant}"
                              + ("\ncross-host" if system.endswith(CROSS) else ""))
                crossed.append(system.endswith(CROSS))
                for m in metrics:
                    values[m].append(figures.get(m, 0.0))
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) + 2), 5))
        width = 0.8 / len(metrics)
        for i, m in enumerate(metrics):
            xs = [x + (i - (len(metrics) - 1) / 2) * width for x in range(len(labels))]
            rects = ax.bar(xs, values[m], width, label=m)
            for rect, cross in zip(rects, crossed, strict=True):
                if cross:
                    rect.set_hatch("//")
            ax.bar_label(rects, fmt="%.0f", fontsize=7)
        for text, y in lines.items():
            ax.axhline(y, linestyle=":", color="grey")
            ax.annotate(text, (0, y), textcoords="offset points", xytext=(2, 3), fontsize=8)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if len(metrics) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(outdir / name)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    bars("W3", ["tasks_per_s"], "W3: no-op tasks with 2 engines", "tasks/s", "throughput.png",
         {"1,000 tasks/s target": 1000.0})
    ref = {e["variant"]: e["value"] for e in doc.get("reference", {}).get("entries", [])
           if "value" in e}
    size = max((int(e["metric"].split("_")[1][:-3]) for s in systems
                for e in doc["systems"][s]["entries"]
                if e["workload"] == "W4" and "value" in e and e["metric"].startswith("push_")),
               default=256)
    bars("W4", [f"push_{size}MiB_mbps", f"pull_{size}MiB_mbps"],
         f"W4: {size} MiB float64 array to and from one engine", "MB/s", "bandwidth.png",
         {label: ref[k] for label, k in (("loopback TCP", "loopback_tcp"),
                                         ("TCP between hosts", "tcp_between_hosts"),
                                         ("TCP between hosts", "tcp_between_hosts" + CROSS))
          if k in ref})
    return written


def main(argv: list[str]) -> None:
    """Usage: report.py plots|markdown RESULTS_JSON OUTDIR, or combine SAME_DIR CROSS_DIR OUTDIR."""
    if argv[1] == "combine":
        same, cross, outdir = (Path(a) for a in argv[2:5])
        doc = combine(json.loads((same / "results.json").read_text()),
                      json.loads((cross / "results.json").read_text()))
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        (outdir / "results.md").write_text(markdown(doc))
        for p in plots(doc, outdir):
            print(p)
        return
    what, path, outdir = argv[1], Path(argv[2]), Path(argv[3])
    doc = json.loads(path.read_text())
    if what == "plots":
        for p in plots(doc, outdir):
            print(p)
    else:
        (outdir / "results.md").write_text(markdown(doc))


if __name__ == "__main__":
    main(sys.argv)
