"""The `edgekit` command: parse, call the library, print, map errors to exit codes.

Exit codes: 0 success, 1 a failed check (verification, gate), 2 bad input or usage, 130 Ctrl-C,
143 SIGTERM (what `timeout` and CI runners send).
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from pathlib import Path
from typing import NoReturn

import click

from edgekit import __version__, interrupts
from edgekit.cli_options import (  # noqa: F401 (the range types, importable from here as before)
    COUNT,
    FRACTION,
    NONNEGATIVE,
    POSITIVE,
    RAY_ADDRESS,
    Real,
    bench_options,
    build_options,
    check_options,
    compare_options,
    compress_options,
    cpu_options,
    demo_options,
    gate_options,
    init_options,
    model_options,
    report_options,
    run_options,
    search_options,
    torch_pass_options,
)
from edgekit.errors import EdgekitError, first_line


def _fail(e: EdgekitError) -> None:
    click.echo(f"edgekit: error: {e}", err=True)
    sys.exit(e.exit_code)


def _run(fn, debug: bool):
    """Call the library; an EdgekitError becomes one sentence and its exit code, Ctrl-C exit 130,
    SIGTERM exit 143."""
    if not sys.warnoptions:  # as main() keeps Python's warnings off stderr, ONNX Runtime's own too
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    try:
        return fn()
    except KeyboardInterrupt as e:
        _interrupted(isinstance(e, interrupts.Terminated))
    except Exception as e:
        # the signal's raise replaced by another error (edgekit.interrupts), unless this is edgekit's
        # own answer to it (search's "run the same command again to resume", exit 130)
        answered = isinstance(e, EdgekitError) and e.exit_code in (130, 143)
        if interrupts.received() is not None and not answered:
            _interrupted(interrupts.received() == signal.SIGTERM)
        if debug or not isinstance(e, (EdgekitError, MemoryError)):
            raise
        if isinstance(e, MemoryError):  # an input too large for this machine, found only as it was allocated
            e = EdgekitError(
                f"out of memory ({first_line(e)}); use a smaller --input-shape or fewer samples."
            )
        _fail(e)


def _interrupted(terminated: bool) -> NoReturn:
    """Ctrl-C's exit 130 or SIGTERM's 143, with the sentence that says nothing was written."""
    click.echo(f"edgekit: {'terminated' if terminated else 'interrupted'}; nothing was written.", err=True)
    sys.exit(143 if terminated else 130)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgekit")
def cli() -> None:
    """edgekit: from a trained PyTorch model to a verified, benchmarked edge model."""


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@model_options()
def export(model, **kw):
    """Export MODEL to a verified fp32 ONNX artifact: the baseline for every comparison."""
    from edgekit import flags
    from edgekit.benchmarks.report import manifest_table
    from edgekit.pipeline import compress as run

    manifest = _run(lambda: run(flags.request(model, kw)), kw["debug"])
    manifest_table(manifest, str(kw["out"]))


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@model_options()
@torch_pass_options
@compress_options
@cpu_options
def compress(model, eval_, eval_size, target, **kw):
    """Compress MODEL into an artifact; with no pass flags, the verified fp32 ONNX export."""
    from dataclasses import replace

    from edgekit import flags, passes
    from edgekit.benchmarks.report import manifest_table, torch_pass_lines
    from edgekit.pipeline import compress as run
    from edgekit.pipeline import warnings as warning_lines

    def go():
        chain = passes.from_flags(**flags.torch_passes(kw), **flags.precision_passes(kw, target))
        req = flags.request(model, kw, chain, eval_, eval_size)
        return run(replace(req, target=target, target_cpu=flags.target_cpu(kw)))

    manifest = _run(go, kw["debug"])
    manifest_table(manifest, str(kw["out"]))
    for line in torch_pass_lines(manifest):
        click.echo(line)
    for line in warning_lines(manifest, str(kw["out"])):
        click.echo(f"edgekit: warning: {line}", err=True)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@model_options(output_required=False)
@click.option(
    "--eval",
    "eval_",
    help="Evaluation data: labels give top-1 points, else the first output's fidelity to fp32.",
)
@click.option("--eval-size", type=COUNT, default=None, help="At most this many evaluation samples.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the table as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a bar plot (PNG).")
@cpu_options
@RAY_ADDRESS
def sensitivity(model, eval_, eval_size, json_path, plot_path, **kw):
    """Per-layer INT8 sensitivity of MODEL: each quantized layer's op, MACs, the points restoring it
    alone to fp32 gains, and its share of fp32 latency (ONNX Runtime's profiler). -o DIR writes
    DIR/sensitivity.json and DIR/sensitivity.png."""
    from dataclasses import replace

    from edgekit import flags
    from edgekit.compress.quantize import Int8Config
    from edgekit.compress.sensitivity import plot, print_table
    from edgekit.passes import Step
    from edgekit.pipeline import sensitivity as run

    out = kw["out"]
    json_path = json_path or (out and out / "sensitivity.json")
    plot_path = plot_path or (out and out / "sensitivity.png")

    def go():
        _outputs(("--json", json_path), ("--plot", plot_path))
        cfg = Int8Config(form=kw["int8_form"]) if kw["int8_form"] else Int8Config()
        req = flags.request(model, kw, [Step("int8", cfg)], eval_, eval_size)
        return run(replace(req, target_cpu=flags.target_cpu(kw)))

    result = _run(go, kw["debug"])
    print_table(result, f"edgekit sensitivity {model}")
    if json_path:
        _write_json(json_path, result)
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        _run(lambda: plot(result, plot_path), kw["debug"])
        click.echo(f"wrote {plot_path}")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
def inspect(artifact, as_json):
    """Show an artifact's manifest: source, passes, verification, files, versions."""
    from edgekit.artifact import read_manifest
    from edgekit.benchmarks.report import manifest_table

    m = _run(lambda: read_manifest(artifact), False)
    if as_json:
        click.echo(m.model_dump_json(indent=2))
    else:
        manifest_table(m, str(artifact))


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@bench_options
def bench(artifacts, json_path, out_dir, **kw):
    """Measure latency, memory, size, energy (and accuracy or fidelity with --eval) of artifacts,
    each in a fresh worker process: here, or on devices over ssh (--host, --hosts)."""
    from edgekit.benchmarks.results import append_records
    from edgekit.benchmarks.session import BenchRequest, tables
    from edgekit.benchmarks.session import bench as run

    def go():
        _outputs(("--json", json_path), folders=(("-o", out_dir),))
        return run(BenchRequest(list(artifacts), **kw))

    records, notes = _run(go, False)
    tables(records)
    for note in notes:
        click.echo(f"note: {note}")
    if json_path:
        _write_json(json_path, records)
    if out_dir:
        path = _run(lambda: append_records(out_dir, records), False)
        click.echo(f"appended {len(records)} record(s) to {path}")
    if not all(r.get("ok") or r.get("not_applicable") for r in records):
        sys.exit(1)


@cli.command()
def runtimes():
    """List the runtimes: installed or not, version, and the devices each one sees here."""
    from rich.console import Console

    from edgekit.runtimes.listing import cpu_line, table

    Console().print(table())
    click.echo(_run(cpu_line, False))


def _write_json(path: Path, obj) -> None:
    from edgekit.artifact import write_atomic

    _run(lambda: write_atomic(path, json.dumps(obj, indent=2) + "\n"), False)


def _outputs(*files: tuple[str, Path | None], folders: tuple[tuple[str, Path | None], ...] = ()) -> None:
    """Check every output path of a command before its work starts: (flag, path) pairs."""
    from edgekit.artifact import check_output_file, check_output_folder

    for flag, path in files:
        check_output_file(path, flag)
    for flag, path in folders:
        check_output_folder(path, flag)


@cli.command()
@demo_options
def demo(work_dir, retrain):
    """Train a small CNN on scikit-learn's digits, export, quantize to INT8, benchmark both."""
    from edgekit.demo import run

    def go():
        _outputs(folders=(("--work-dir", work_dir),))
        return run(work_dir, retrain)

    _run(go, False)


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@build_options
def build(artifact, debug, **kw):
    """Build an engine for a target runtime from an ONNX artifact (OpenVINO IR, TensorRT plan),
    verified against the artifact it was built from."""
    from edgekit.benchmarks.report import manifest_table
    from edgekit.build import build as run
    from edgekit.build import placement_note
    from edgekit.flags import build_request

    manifest = _run(lambda: run(build_request(artifact, **kw)), debug)
    manifest_table(manifest, str(kw["out"]))
    note = placement_note(manifest, kw["target"])
    if note:
        click.echo(f"edgekit: note: {note}", err=True)


@cli.command()
@click.argument("results", type=click.Path(path_type=Path))
@report_options
def report(results, formats, plot, out):
    """Show benchmark records (a results directory, a .jsonl file, a `bench --json` or `compare --json`
    file) as a table, and write Markdown, CSV, a self-contained HTML page and plots; for an `edgekit
    search` directory, its Pareto front (--plot: search.png, the front ringed)."""
    from edgekit.benchmarks.report import bench_table, parse_formats, write_report
    from edgekit.benchmarks.results import load_records
    from edgekit.search import SUMMARY, print_front, read_summary

    found = results / SUMMARY if results.is_dir() else results
    if found.name == SUMMARY and found.is_file():  # an `edgekit search` directory: its front
        summary = _run(lambda: read_summary(found), False)
        print_front(summary)
        if plot:
            from edgekit.benchmarks.plots import search_front

            png = (out or found.parent) / "search.png"
            _run(lambda: (_outputs(folders=(("-o", out),)), search_front(summary, png)), False)
            click.echo(f"wrote {png}")
        return

    def go():
        _outputs(folders=(("-o", out),))
        chosen = parse_formats(formats) if formats else []
        records = load_records(results)
        bench_table(records, title=f"edgekit report {results}")
        if not chosen and not plot:
            return [], []
        return write_report(records, chosen, plot, out or (results if results.is_dir() else results.parent))

    written, notes = _run(go, False)
    for note in notes:
        click.echo(note)
    for path in written:
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@compare_options
def compare(artifacts, runtime, precision, rounds, json_path, **kw):
    """Measure two variants interleaved (A B A B, fresh workers each round) and report the latency
    ratio B/A with a 95 % bootstrap confidence interval. The two are two ARTIFACTS on one runtime,
    or one artifact on two runtimes (--runtime ort,openvino) or at two precisions (--precision f32,bf16)."""
    from edgekit.benchmarks.compare import CompareConfig
    from edgekit.benchmarks.compare import compare as run
    from edgekit.benchmarks.report import compare_table
    from edgekit.benchmarks.runner import BenchConfig
    from edgekit.benchmarks.session import compared

    def go():
        _outputs(("--json", json_path))
        variants = compared(artifacts, runtime, precision, BenchConfig(**kw))
        return run(variants, CompareConfig(rounds=rounds))

    result = _run(go, False)
    compare_table(result)
    if json_path:
        _write_json(json_path, result)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@check_options
def check(model, target, precision, opset, debug, **load):
    """Pre-flight: list the ops of MODEL (a torch or ONNX file, or an artifact) that TARGET cannot
    run at PRECISION, with the node and the torch module each came from. Exit 0: none; 1: some."""
    from edgekit.export.check import preflight, print_findings

    findings, incomplete = _run(lambda: preflight(model, target, precision, opset, **load), debug)
    print_findings(findings, f"edgekit check {model} --target {target} --precision {precision}")
    if incomplete:
        _fail(incomplete)
    sys.exit(1 if findings else 0)


@cli.command(name="run")
@click.argument("config", type=click.Path(path_type=Path), default="edgekit.yaml")
@run_options
def run_config(config, out, cache, no_cache, baseline, junit, debug):
    """Build every variant of CONFIG (cached by content), benchmark the targets in interleaved rounds,
    and check the gates: exit 0 all pass, 1 a gate failed, 2 bad config or input."""
    from edgekit.benchmarks import gate
    from edgekit.config import load
    from edgekit.run import RunOptions, run

    cfg = _run(lambda: (_outputs(("--junit", junit), folders=(("-o", out),)), load(config))[1], debug)
    opts = RunOptions(out=out, cache=cache, rebuild=no_cache, baseline=baseline)
    done = _run(lambda: run(cfg, opts, click.echo), debug)
    click.echo(f"appended {len(done['records'])} record(s) to {out / 'results.jsonl'}")
    stages = {"stages": done["stages"]}
    _run(lambda: gate.publish(done["results"], out / "verdict.json", junit, stages), False)
    sys.exit(1 if gate.failed(done["results"]) else 0)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path), default="edgekit.yaml")
@search_options
def search(config, out, ray_address, apply_name, debug):
    """Search CONFIG's `search:` space on Ray: build and score every candidate, time those that meet
    the constraints on the target, print the Pareto front and write OUT/search.json. A rerun resumes;
    --apply NAME writes a candidate into CONFIG as a variant (no search)."""
    from edgekit import search as searching
    from edgekit.config import load

    if apply_name:
        entry = _run(lambda: searching.apply(config, out, apply_name), debug)
        click.echo(f"wrote variant {apply_name} to {config}:\n{entry.rstrip()}")
        click.echo(
            f"add {apply_name} to a target's variants (and a gate) to measure and gate it with `edgekit run`."
        )
        return
    cfg = _run(lambda: (_outputs(folders=(("-o", out),)), load(config))[1], debug)
    opts = searching.SearchOptions(out=out, ray_address=ray_address)
    summary = _run(lambda: searching.run(cfg, opts, click.echo), debug)
    searching.print_front(summary)
    click.echo(f"wrote {out / searching.SUMMARY} ({len(summary['front'])} on the front)")


@cli.command(name="gate")
@click.argument("results", type=click.Path(path_type=Path))
@gate_options
def gate_results(results, config, baseline, junit, json_path):
    """Check the gates of CONFIG against RESULTS (no measuring) from `edgekit run`, `bench -o`/`--json`
    or `compare --json`: exit 0 all pass, 1 a gate failed, 2 bad config or input. An inconclusive
    latency gate stays so here."""
    from edgekit.benchmarks import gate
    from edgekit.benchmarks.results import load_records
    from edgekit.config import load

    def go():
        _outputs(("--junit", junit), ("--json", json_path))
        cfg = load(config, check_files=False)
        saved = load_records(baseline) if baseline else None
        return gate.evaluate(cfg.gates, load_records(results), saved, cfg.targets)

    verdict = _run(go, False)
    _run(lambda: gate.publish(verdict, json_path, junit), False)
    sys.exit(1 if gate.failed(verdict) else 0)


@cli.command()
@init_options
def init(directory, force):
    """Write a commented edgekit.yaml and a GitHub Actions workflow (.github/workflows/edgekit.yml)."""
    from edgekit.init_files import init as write

    for path in _run(lambda: write(directory, force), False):
        click.echo(f"wrote {path}")


@cli.command()
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), help="Write to a file.")
def schema(out):
    """The JSON schema of edgekit.yaml, for editors (yaml-language-server) and linters."""
    from edgekit.config import schema as config_schema

    if out:
        _run(lambda: _outputs(("-o", out)), False)
        _write_json(out, config_schema())
        click.echo(f"wrote {out}")
    else:
        click.echo(json.dumps(config_schema(), indent=2))


def main() -> None:
    """The console script: click's usage errors become one sentence too (exit 2), SIGTERM is
    handled as Ctrl-C is (both remembered: edgekit.interrupts), and library warnings stay off
    stderr (-W or PYTHONWARNINGS shows them)."""
    interrupts.install()
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # bare `edgekit`: the help, as click shows it
        click.echo(e.format_message(), err=True)
        sys.exit(2)
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx else "edgekit"
        click.echo(f"edgekit: error: {e.format_message().rstrip('.')}; see `{command} --help`.", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"edgekit: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort as e:  # Ctrl-C or SIGTERM outside a library call (click turns them into Abort)
        terminated = isinstance(e.__cause__, interrupts.Terminated)
        click.echo(f"edgekit: {'terminated' if terminated else 'interrupted'}.", err=True)
        sys.exit(143 if terminated else 130)
    sys.exit(code if isinstance(code, int) else 0)
