"""Views of manifests and result records: rich tables for the terminal; Markdown, CSV and a
self-contained HTML page for reports."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekit.artifact import Manifest, model_bytes, write_atomic
from edgekit.benchmarks.metrics import kind_line
from edgekit.benchmarks.rows import row_label, runtime_cell
from edgekit.errors import EdgekitError

console = Console()


def db(value: float | None) -> str:
    """An SQNR: identical outputs have an infinite one, which JSON stores as null."""
    return "∞ dB (identical)" if value is None or value == float("inf") else f"{value:.1f} dB"


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
        detail = ", ".join(f"{k}={v}" for k, v in p.summary.items() if k != "kept_fp32")
        t.add_row(f"pass {p.name}", f"{p.seconds:.1f} s; {detail}")
        for kept in p.summary.get("kept_fp32", []):
            t.add_row(
                "  kept fp32",
                f"{kept['node']}: +{kept['sensitivity_points']:.2f} points kept, "
                f"costs {kept['latency_cost_ms']:+.3f} ms",
            )
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
            f"{exp['max_abs_diff']:.2e}, SQNR {db(exp['sqnr_db'])}",
        )
    for key in ("prune", "int8", "fp16", "bf16"):
        q = m.verification.get(key)
        if q and "fidelity" in q:
            against = "vs the unpruned model, " if key == "prune" else ""
            t.add_row(f"{key} check", against + quality_line(q))
            if "final_vs_unpruned" in q:
                t.add_row("result check", "vs the unpruned model, " + quality_line(q["final_vs_unpruned"]))
        elif q:
            t.add_row(f"{key} check", str(q.get("data")))
    chosen = m.verification.get("selection")
    if chosen:
        shares = [
            f"{name}: same count {v['same_count']:.0%}"
            + (f", rows IoU {v['rows_iou']:.3f}" if "rows_iou" in v else "")
            + (f" ({v['rows_iou_selected']:.3f} where fp32 selects)" if "rows_iou_selected" in v else "")
            for name, v in chosen["outputs"].items()
        ]
        t.add_row(
            "selection check",
            escape(
                f"{', '.join(chosen['ops'])} put back after the passes, which judged "
                f"{', '.join(chosen['judged_on'])}; on {chosen.get('samples', 0)} samples: "
                + "; ".join(shares)
            ),
        )
    for target in ("openvino", "tensorrt"):
        v = m.verification.get(target)
        if v and "fidelity" in v:
            where = f"{v['runtime']} on {v.get('device_name') or v['device']}"
            t.add_row(f"{target} check", f"vs parent, {where}: {quality_line(v)}")
    if m.target_cpu:
        c = m.target_cpu
        t.add_row(
            "made for CPU", escape(f"{c['class']} ({c['from']}): INT8 form {c['form']}, {c['form_means']}")
        )
        if c.get("note"):
            t.add_row("", f"[yellow]{escape(c['note'])}[/yellow]")
    if m.inference_precision:
        t.add_row("inference precision", m.inference_precision)
    if m.parent:
        t.add_row("built from", escape(m.parent))
    for f in m.files:
        t.add_row("file", f"{f.name}  {mb(f.bytes)}  sha256 {f.sha256[:12]}…")
    t.add_row("tools", ", ".join(f"{k} {v}" for k, v in m.tool_versions.items()))
    console.print(t)


def quality_line(q: dict) -> str:
    """A verification entry in words: top-1 with labels, then each output by its kind's metric."""
    parts = [f"on {q['samples']} samples ({q['data']})"]
    if "top1" in q:
        parts.append(f"top-1 {pct(q['parent_top1'])} → {pct(q['top1'])} (drop {q['drop_points']:.2f} points)")
    outputs = _outputs(q["fidelity"])
    for key, fid in outputs.items():
        named = f"{fid.get('name') or key} " if len(outputs) > 1 else ""
        parts.append(f"{named}{kind_line(fid)}")
        if key == "output_0" and "top1_agreement_confident" in q["fidelity"]:
            parts.append(f"{pct(q['fidelity']['top1_agreement_confident'])} where fp32 is confident")
        parts.append(f"SQNR {db(fid['sqnr_db'])}")
    return "; ".join(parts)


def _outputs(fidelity: dict) -> dict[str, dict]:
    """The per-output records of a fidelity entry (output_0, output_1, ...)."""
    return {k: v for k, v in fidelity.items() if k.startswith("output_")}


def short_names(records: list[dict]) -> dict[str, str]:
    """Artifact paths as the table shows them: the variant name for `edgekit run`'s records (their
    artifacts are cache entries named by hash), else the directory name where those are unique (the
    records keep the full path), so a wide table still fits a terminal."""
    paths = {r["artifact"] for r in records}
    names = {Path(p).name for p in paths}
    short = {p: Path(p).name if len(names) == len(paths) else p for p in paths}
    return short | {r["artifact"]: r["variant"] for r in records if "variant" in r}


def bench_table(records: list[dict], title: str = "edgekit bench") -> None:
    names = short_names(records)
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
        "RSS load Δ / peak",
        "J/inference",
        "accuracy",
        "fidelity vs fp32",
    ):
        t.add_column(col, justify="left" if col in ("artifact", "runtime") else "right")
    for r in records:
        if not r.get("ok"):
            t.add_row(
                names[r["artifact"]],
                runtime_cell(r),
                str(r.get("batch", "")),
                f"[yellow]{escape(failure(r))}[/yellow]"
                if r.get("not_applicable")
                else f"[red]{escape(failure(r))}[/red]",
                *[""] * 9,
            )
            continue
        lat = r["latency"]
        acc_s = accuracy_cell(r)
        timing = [
            f"{lat['median_ms']:.3f}",
            f"{lat['p90_ms']:.3f}",
            f"{lat['p99_ms']:.3f}",
            f"{lat['mean_ms']:.3f} ± {lat['std_ms']:.3f}",
            f"{lat['throughput_per_s']:.1f}",
        ]
        if r.get("emulated") and not r["emulated"].get("timing"):
            timing = [f"[dim]emulated {r['emulated']['cpu_class']}[/dim]", *[""] * 4]
        t.add_row(
            names[r["artifact"]],
            runtime_cell(r),
            str(r["batch"]),
            *timing,
            mb(r["size_bytes"]),
            memory_cell(r),
            energy_cell(r),
            acc_s,
            fidelity_cell(r),
        )
    console.print(t)
    for r in records:
        if r.get("ok") and r["latency"]["cv"] > 0.2 and _timed(r):
            console.print(
                f"[yellow]note: {r['artifact']} latency varies a lot (CV {r['latency']['cv']:.0%}); "
                "the machine may be busy: re-run, or use --seconds for longer runs.[/yellow]"
            )
    for note in cpu_notes(records):
        console.print(f"[yellow]note: {escape(note)}[/yellow]")


def cpu_notes(records: list[dict]) -> list[str]:
    """Rows whose INT8 artifact runs on a CPU class it was not made for, and emulated rows."""
    notes = [f"{row_label(r)}: {r['cpu_note']}" for r in records if r.get("cpu_note")]
    return notes + [
        f"{row_label(r)}: {_emulated_as(r['emulated'])}" for r in records if r.get("ok") and r.get("emulated")
    ]


def _emulated_as(how: dict) -> str:
    """One emulated row's note: how it ran as another CPU class, and what its numbers mean."""
    if how.get("by", "qemu") == "qemu":
        return f"run under qemu as {how['cpu_class']} ({how['qemu_cpu']}): {how['note']}"
    return f"run as {how['cpu_class']} with this CPU's other features hidden from CPUID: {how['note']}"


def _timed(r: dict) -> bool:
    """Whether a row's latency is a measurement (not an emulator's speed)."""
    return not r.get("emulated") or bool(r["emulated"].get("timing"))


def memory_cell(r: dict) -> str:
    """Resident memory the model added at load over the runtime's own baseline, and the peak (MiB);
    the peak alone for records from before the baseline was measured."""
    m = r["memory_mb"]
    if "load_delta" not in m:
        return f"{m['peak_rss']:.0f} MiB"
    return f"{m['load_delta']:.0f} / {m['peak_rss']:.0f} MiB"


def energy_cell(r: dict) -> str:
    """Joules per inference (one run of the batch), or that the machine exposes no counter."""
    e = r.get("energy") or {"available": False}
    return f"{e['joules_per_inference']:.3g}" if e["available"] else "n/a"


def accuracy_cell(r: dict) -> str:
    """Which accuracy metric a row has and on how many samples; never a bare number."""
    acc = r.get("accuracy")
    if not acc:
        return "not measured (no --eval)"
    if "top1" in acc:
        return f"top-1 {pct(acc['top1'])}, top-5 {pct(acc['top5'])} (n={acc['samples']})"
    if "fidelity" in acc:
        return f"no labels: see fidelity (n={acc['samples']})"
    return f"{acc['metric']} (n={acc['samples']})"


def fidelity_cell(r: dict) -> str:
    """Each output's metric by its kind (top-1 agreement for class scores) and SQNR against the fp32
    reference, or why there are none."""
    acc = r.get("accuracy")
    if not acc:
        return "—"
    if "fidelity" not in acc:
        return "no fp32 reference"
    cells = []
    for out in _outputs(acc["fidelity"]).values():
        agree = f"agree {pct(out['top1_agreement'])}, " if "top1_agreement" in out else ""
        if not agree and "kind" in out:
            agree = kind_line(out) + ", "
        cells.append(f"{agree}SQNR {db(out['sqnr_db'])}")
    return f"{'; '.join(cells)} (n={acc['samples']})"


def failure(r: dict) -> str:
    """Why a row has no numbers: not applicable (a pair that cannot run) or failed, with the reason."""
    if r.get("not_applicable"):
        return f"not applicable: {r.get('reason')}"
    return f"failed: {r.get('error', 'no reason recorded')}"


COLUMNS = (
    "artifact",
    "runtime",
    "device",
    "batch",
    "median ms",
    "p90 ms",
    "p99 ms",
    "mean ± std ms",
    "CV",
    "throughput/s",
    "size",
    "peak RSS",
    "accuracy",
    "fidelity vs fp32",
)


def row_cells(r: dict) -> list[str]:
    """One record as the report's text cells; a failed row carries its reason instead of numbers."""
    where = r.get("device", "") + (
        f" @ {r['host_target']}" if r.get("host_target", "local") != "local" else ""
    )
    name = f"{r['variant']} ({r['artifact']})" if "variant" in r else r["artifact"]
    head = [name, runtime_cell(r, device=False), where, str(r.get("batch", ""))]
    if not r.get("ok"):
        return [*head, failure(r), *[""] * (len(COLUMNS) - 5)]
    lat = r["latency"]
    return [
        *head,
        f"{lat['median_ms']:.3f}",
        f"{lat['p90_ms']:.3f}",
        f"{lat['p99_ms']:.3f}",
        f"{lat['mean_ms']:.3f} ± {lat['std_ms']:.3f}",
        f"{lat['cv']:.1%}",
        f"{lat['throughput_per_s']:.1f}",
        mb(r["size_bytes"]),
        f"{r['memory_mb']['peak_rss']:.0f} MiB",
        accuracy_cell(r),
        fidelity_cell(r),
    ]


def markdown(records: list[dict], notes: list[str]) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = ["# edgekit benchmark report", "", line(COLUMNS), line(["---"] * len(COLUMNS))]
    lines += [line(row_cells(r)) for r in records]
    lines += ["", *[f"- {n}" for n in notes]] if notes else []
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "artifact",
    "runtime",
    "device",
    "host_target",
    "precision",
    "batch",
    "ok",
    "error",
    "median_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "count",
    "cv",
    "throughput_per_s",
    "size_bytes",
    "peak_rss_mb",
    "baseline_rss_mb",
    "load_delta_mb",
    "inference_delta_mb",
    "joules_per_inference",
    "accuracy_metric",
    "accuracy_samples",
    "top1",
    "top5",
    "reference",
    "top1_agreement",
    "sqnr_db",
    "cosine",
    "max_abs_diff",
)


def csv_text(records: list[dict]) -> str:
    """Raw numbers, one row per record, for spreadsheets; empty cells where a row has no value."""
    out = io.StringIO()
    w = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in records:
        acc = r.get("accuracy") or {}
        row = {k: r.get(k, "") for k in CSV_FIELDS[:8]}
        row["host_target"] = r.get("host_target", "local")
        if r.get("ok"):
            row.update({k: r["latency"][k] for k in CSV_FIELDS[8:19]})
            mem, energy = r["memory_mb"], r.get("energy") or {}
            row.update(
                size_bytes=r["size_bytes"],
                peak_rss_mb=mem["peak_rss"],
                baseline_rss_mb=mem.get("baseline_rss", ""),
                load_delta_mb=mem.get("load_delta", ""),
                inference_delta_mb=mem.get("inference_delta", ""),
                joules_per_inference=energy.get("joules_per_inference", ""),
            )
        row.update(
            accuracy_metric=acc.get("metric", "not measured"),
            accuracy_samples=acc.get("samples", ""),
            top1=acc.get("top1", ""),
            top5=acc.get("top5", ""),
            reference=acc.get("reference", ""),
        )
        fid = (acc.get("fidelity") or {}).get("output_0", {})
        row.update({k: fid.get(k, "") for k in ("top1_agreement", "sqnr_db", "cosine", "max_abs_diff")})
        w.writerow(row)
    return out.getvalue()


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td:nth-child(-n+3) { text-align: left; }
td.failed { color: #b00020; text-align: left; }
img { max-width: 100%; margin-top: 1.5em; display: block; }
"""


def html_page(records: list[dict], notes: list[str], images: dict[str, Path]) -> str:
    """One self-contained page: inline CSS, the PNG plots embedded as base64 data URIs."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rows = []
    for r in records:
        cells = row_cells(r)
        if r.get("ok"):
            body = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        else:
            span = len(COLUMNS) - 4
            body = "".join(f"<td>{html.escape(c)}</td>" for c in cells[:4])
            body += f'<td class="failed" colspan="{span}">{html.escape(cells[4])}</td>'
        rows.append(f"<tr>{body}</tr>")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>edgekit benchmark report</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>edgekit benchmark report</h1>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
        *(f"<p>{html.escape(n)}</p>" for n in notes),
    ]
    for alt, path in images.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


FORMATS = ("md", "csv", "html")


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        bad = ", ".join(map(repr, unknown)) or repr(text)
        raise EdgekitError(f"unknown report format {bad} in --format; use some of {', '.join(FORMATS)}.")
    return formats


def noisy_notes(records: list[dict]) -> list[str]:
    return [
        f"{row_label(r)}: latency varies a lot (CV {r['latency']['cv']:.0%}); the machine may have been busy."
        for r in records
        if r.get("ok") and r["latency"]["cv"] > 0.2 and _timed(r)
    ]


def write_report(
    records: list[dict], formats: list[str], plot: bool, out: Path
) -> tuple[list[Path], list[str]]:
    """Write the chosen formats (and PNG plots with --plot) into OUT. Returns the files written and
    what the plots had to leave out, for the terminal (the files carry it as well)."""
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    plot_notes: list[str] = []
    if plot:
        from edgekit.benchmarks import plots

        left_out = plots.latency_accuracy(records, out / "latency_accuracy.png")
        if len(left_out) < len(records):
            images["latency vs accuracy"] = out / "latency_accuracy.png"
        if left_out:
            names = ", ".join(row_label(r) for r in left_out)
            plot_notes.append(
                f"Left out of the latency-vs-accuracy plot (failed, or no accuracy or agreement): {names}."
            )
        if plots.latency_distribution(records, out / "latency_distribution.png"):
            images["latency distribution"] = out / "latency_distribution.png"
    notes = noisy_notes(records) + cpu_notes(records) + plot_notes
    writers = {
        "md": ("report.md", lambda: markdown(records, notes)),
        "csv": ("report.csv", lambda: csv_text(records)),
        "html": ("report.html", lambda: html_page(records, notes, images)),
    }
    written = list(images.values())
    for f in formats:
        name, render = writers[f]
        write_atomic(out / name, render())
        written.append(out / name)
    return written, plot_notes


def compare_table(c: dict) -> None:
    """`edgekit compare`: each side's median, then the per-round ratio B/A with its interval."""
    ratio = c["ratio_b_over_a"]
    conf = f"{ratio['confidence']:.0%}"
    t = Table(
        title=f"edgekit compare ({c['rounds']} interleaved rounds, A B A B)",
        title_justify="left",
    )
    for col in ("", "variant", "median ms", "per-round medians ms"):
        t.add_column(col, justify="right" if col == "median ms" else "left")
    for side in ("a", "b"):
        rounds = ", ".join(f"{m:.3f}" for m in c[f"{side}_round_medians_ms"])
        t.add_row(side.upper(), c[side], f"{c[f'{side}_median_ms']:.3f}", rounds)
    console.print(t)
    console.print(
        f"latency ratio B/A (below 1: B is faster): median {ratio['median']:.3f}, "
        f"{conf} CI [{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}] over {c['rounds']} rounds; "
        f"speed-up of B over A: {1 / ratio['median']:.2f}x"
    )
    if not c["significant"]:
        console.print(
            f"[yellow]warning: no significant difference: the {conf} interval of B/A includes 1.0; "
            "run more --rounds or longer --seconds to tell them apart.[/yellow]"
        )


def torch_pass_lines(manifest) -> list[str]:
    """Params and MACs before and after pruning, and the sparsity reached (quality against the
    unpruned model is in the manifest table)."""
    lines = []
    for p in manifest.passes:
        s = p.summary
        if p.name == "prune":
            lines.append(
                f"pruned: params {s['params_before']:,} → {s['params_after']:,}, MACs "
                f"{s['macs_before'] / 1e6:.1f} M → {s['macs_after'] / 1e6:.1f} M ({s['macs_ratio']:.0%})"
            )
        elif p.name == "sparsity":
            reached = ", ".join(f"{k} {v['sparsity']:.0%}" for k, v in s["by_layer_type"].items())
            lines.append(f"sparsity: {reached}; note: {s['note']}")
    return lines
