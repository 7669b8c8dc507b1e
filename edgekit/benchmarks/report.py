"""Views of manifests and result records: rich tables for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekit.artifact import Manifest, model_bytes

console = Console()


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def manifest_table(m: Manifest, path: str) -> None:
    """`edgekit inspect`: the manifest, readably."""
    t = Table(title=f"edgekit artifact {path}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("model", f"{m.model_file} ({mb(model_bytes(m))} on disk, {len(m.files)} file(s))")
    t.add_row("source", escape(f"{m.source.path} [{m.source.kind}] sha256 {m.source.sha256[:12]}…"))
    for spec in m.input_spec.inputs:
        t.add_row("input", f"{spec.name}: {spec.dtype}{spec.shape}")
    t.add_row("outputs", ", ".join(m.output_names) or "—")
    for p in m.passes:
        detail = ", ".join(f"{k}={v}" for k, v in p.summary.items())
        t.add_row(f"pass {p.name}", f"{p.seconds:.1f} s; {detail}")
    for name, d in m.data.items():
        t.add_row(name, f"{d.get('source')} ({d.get('count')} samples)")
        if "warning" in d:
            t.add_row("", f"[yellow]{d['warning']}[/yellow]")
    exp = m.verification.get("export")
    if exp and "max_abs_diff" not in exp:
        t.add_row("export check", f"{exp['reference']} ({exp['samples']} {exp['data']})")
    elif exp:
        t.add_row(
            "export check",
            f"vs torch on {exp['samples']} {exp.get('data', 'samples')}: max abs diff "
            f"{exp['max_abs_diff']:.2e}, SQNR {exp['sqnr_db']:.1f} dB",
        )
    q = m.verification.get("int8")
    if q:
        t.add_row("int8 check", quality_line(q))
    for f in m.files:
        t.add_row("file", f"{f.name}  {mb(f.bytes)}  sha256 {f.sha256[:12]}…")
    t.add_row("tools", ", ".join(f"{k} {v}" for k, v in m.tool_versions.items()))
    console.print(t)


def quality_line(q: dict) -> str:
    fid = q["fidelity"]["output_0"]
    parts = [f"on {q['samples']} samples ({q['data']})"]
    if "top1" in q:
        parts.append(f"top-1 {pct(q['parent_top1'])} → {pct(q['top1'])} (drop {q['drop_points']:.2f} points)")
    if "top1_agreement" in fid:
        parts.append(f"top-1 agreement {pct(fid['top1_agreement'])}")
    if "top1_agreement_confident" in q["fidelity"]:
        parts.append(f"{pct(q['fidelity']['top1_agreement_confident'])} where fp32 is confident")
    parts.append(f"SQNR {fid['sqnr_db']:.1f} dB")
    return "; ".join(parts)


def bench_table(records: list[dict], title: str = "edgekit bench") -> None:
    t = Table(title=title, title_justify="left")
    for col in (
        "artifact",
        "runtime",
        "batch",
        "median ms",
        "p90",
        "p99",
        "mean ± std",
        "throughput/s",
        "size",
        "peak RSS",
        "accuracy",
    ):
        t.add_column(col, justify="left" if col in ("artifact", "runtime") else "right")
    for r in records:
        if not r.get("ok"):
            t.add_row(
                r["artifact"],
                r["runtime"],
                str(r.get("batch", "")),
                f"[red]failed: {r.get('error')}[/red]",
                *[""] * 7,
            )
            continue
        lat = r["latency"]
        acc = r.get("accuracy", {})
        acc_s = f"top-1 {pct(acc['top1'])} (n={acc['samples']})" if "top1" in acc else "—"
        t.add_row(
            r["artifact"],
            r["runtime"],
            str(r["batch"]),
            f"{lat['median_ms']:.3f}",
            f"{lat['p90_ms']:.3f}",
            f"{lat['p99_ms']:.3f}",
            f"{lat['mean_ms']:.3f} ± {lat['std_ms']:.3f}",
            f"{lat['throughput_per_s']:.1f}",
            mb(r["size_bytes"]),
            f"{r['memory_mb']['peak_rss']:.0f} MB",
            acc_s,
        )
    console.print(t)
    for r in records:
        if r.get("ok") and r["latency"]["cv"] > 0.2:
            console.print(
                f"[yellow]note: {r['artifact']} latency varies a lot (CV {r['latency']['cv']:.0%}); "
                "the machine may be busy: re-run, or use --seconds for longer runs.[/yellow]"
            )
