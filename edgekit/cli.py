"""The `edgekit` command: parse, call the library, print, map errors to exit codes.

Exit codes: 0 success, 1 a failed check (verification, gate), 2 bad input or usage, 130 Ctrl-C,
143 SIGTERM (what `timeout` and CI runners send).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import warnings
from pathlib import Path

import click

from edgekit import __version__
from edgekit.errors import EdgekitError, first_line


class Real(click.FloatRange):
    """A finite number in a range (click's FloatRange lets nan and inf through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number in the range {self._describe_range()}", param, ctx)
        return number


COUNT = click.IntRange(min=1)  # sample counts, runs, epochs, batch sizes, pixels
NONNEGATIVE = click.IntRange(min=0)  # threads (0: the runtime's default), warm-up runs
POSITIVE = Real(min=0, min_open=True)  # seconds, tolerances, learning rates
FRACTION = Real(min=0, max=1, min_open=True, max_open=True)  # what pruning removes


def _fail(e: EdgekitError) -> None:
    click.echo(f"edgekit: error: {e}", err=True)
    sys.exit(e.exit_code)


def _common_model_options(f, output_required: bool = True):
    opts = [
        click.option("--arch", help="package.module:factory building the model, for a state_dict."),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow a fully pickled nn.Module (runs code from the file).",
        ),
        click.option(
            "--input-shape",
            "input_shapes",
            multiple=True,
            metavar="1,3,224,224",
            help="Input shape; repeat per input.",
        ),
        click.option("--input-dtype", default="float32", show_default=True),
        click.option("--static-batch", is_flag=True, help="Keep the batch axis fixed in the ONNX model."),
        click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 20)."),
        click.option(
            "--tolerance",
            type=POSITIVE,
            default=1e-3,
            show_default=True,
            help="Export check: max |torch-onnx| relative to max |torch|.",
        ),
        click.option(
            "-o",
            "--output",
            "out",
            required=output_required,
            type=click.Path(path_type=Path),
            help="Output artifact directory.",
        ),
        click.option("--force", is_flag=True, help="Replace an existing output directory."),
        click.option("--calib", help="Calibration data: image folder, .npz, module:function, or 'random'."),
        click.option("--calib-size", type=COUNT, default=300, show_default=True),
        click.option(
            "--resize", type=COUNT, help="Images: shorter side before the crop (default crop/0.875)."
        ),
        click.option("--crop", type=COUNT, help="Images: center crop (default: the model's input size)."),
        click.option("--mean", default="0.485,0.456,0.406", show_default=True),
        click.option("--std", default="0.229,0.224,0.225", show_default=True),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True),
        click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise EdgekitError(f"{flag} {text!r} must be comma-separated numbers.") from None


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise EdgekitError(f"{flag} {text!r} must be comma-separated whole numbers, e.g. 1,8,32.") from None


def _request(model, kw, int8=None, eval_=None, eval_size=None):
    from edgekit.data import Preprocess
    from edgekit.export.onnx import ExportConfig
    from edgekit.model import LoadOptions, parse_shape
    from edgekit.pipeline import CompressRequest

    return CompressRequest(
        model=Path(model),
        out=kw["out"],
        load=LoadOptions(
            arch=kw["arch"],
            trust_pickle=kw["trust_pickle"],
            input_shapes=tuple(parse_shape(s) for s in kw["input_shapes"]),
            input_dtype=kw["input_dtype"],
            static_batch=kw["static_batch"],
        ),
        export=ExportConfig(opset=kw["opset"], tolerance=kw["tolerance"]),
        int8=int8,
        calib=kw["calib"],
        eval=eval_,
        calib_size=kw["calib_size"],
        eval_size=eval_size,
        preprocess=Preprocess(
            resize=kw["resize"],
            crop=kw["crop"],
            mean=_floats(kw["mean"], "--mean"),
            std=_floats(kw["std"], "--std"),
            channel_order=kw["channel_order"],
            layout=kw["layout"],
        ),
        force=kw["force"],
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `finally` (staging directories, temporary files, worker
    processes) cleans up before the exit."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def _run(fn, debug: bool):
    """Call the library; an EdgekitError becomes one sentence and its exit code, Ctrl-C exit 130,
    SIGTERM exit 143."""
    try:
        return fn()
    except EdgekitError as e:
        if debug:
            raise
        _fail(e)
    except MemoryError as e:  # an input too large for this machine, found only as it was allocated
        if debug:
            raise
        _fail(EdgekitError(f"out of memory ({first_line(e)}); use a smaller --input-shape or fewer samples."))
    except Terminated:
        click.echo("edgekit: terminated; nothing was written.", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("edgekit: interrupted; nothing was written.", err=True)
        sys.exit(130)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgekit")
def cli() -> None:
    """edgekit: from a trained PyTorch model to a verified, benchmarked edge model."""


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@_common_model_options
def export(model, **kw):
    """Export MODEL to a verified fp32 ONNX artifact: the baseline for every comparison."""
    from edgekit.benchmarks.report import manifest_table
    from edgekit.pipeline import compress as run

    manifest = _run(lambda: run(_request(model, kw)), kw["debug"])
    manifest_table(manifest, str(kw["out"]))


def _cpu_options(f):
    """The CPU an INT8 model is made for: its form follows it (edgekit.target_cpu)."""
    from edgekit.target_cpu import CLASSES, FORMS

    opts = [
        click.option(
            "--target-cpu",
            type=click.Choice(list(CLASSES)),
            help="The CPU class the INT8 model will run on (default: $EDGEKIT_TARGET_CPU, else this "
            "machine's, which `edgekit runtimes` shows).",
        ),
        click.option(
            "--host",
            "cpu_host",
            metavar="SSH_TARGET",
            help="Make the INT8 model for this device's CPU, read over ssh (as bench --host).",
        ),
        click.option(
            "--remote-python",
            default="python3",
            show_default=True,
            help="--host: the device's Python (it needs no packages to report its CPU).",
        ),
        click.option(
            "--ssh-config",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="--host: ssh client config file (ssh -F) instead of ~/.ssh/config.",
        ),
        click.option(
            "--int8-form",
            type=click.Choice(list(FORMS)),
            help="Override the INT8 form chosen for the target CPU (u8s8: VNNI/AMX/Arm; u8s8-pair: "
            "cannot saturate without VNNI; see docs/guide/quantize.md).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _target_cpu(kw: dict):
    """The TargetCpu of --target-cpu or --host (None: the int8 config's, else this machine)."""
    from edgekit.runtimes.remote import remotes
    from edgekit.target_cpu import resolve

    if kw["target_cpu"] and kw["cpu_host"]:
        raise EdgekitError("--target-cpu and --host both name the CPU to make the model for; give one.")
    if kw["cpu_host"]:
        device = remotes(kw["cpu_host"], None, python=kw["remote_python"], ssh_config=kw["ssh_config"])[0]
        return resolve(host_fingerprint=device.fingerprint(), host=str(device.target))
    return resolve(kw["target_cpu"]) if kw["target_cpu"] else None


def _torch_pass_options(f):
    """`compress` options of the torch passes that run before the export: prune, fine-tune, sparsity."""
    opts = [
        click.option(
            "--prune", type=FRACTION, help="Remove this fraction of every prunable layer's channels."
        ),
        click.option(
            "--prune-macs", type=FRACTION, help="Prune until MACs drop by this fraction (0.5: half)."
        ),
        click.option(
            "--importance",
            default="l2",
            show_default=True,
            help="How channels are ranked: l1, l2 (weight magnitude), bn (BatchNorm scale), taylor "
            "(gradients on --finetune or --calib data).",
        ),
        click.option("--round-to", type=COUNT, default=8, show_default=True, help="Channel counts multiple."),
        click.option(
            "--ignore-layer",
            "ignore_layers",
            multiple=True,
            metavar="NAME",
            help="Never prune this layer's output channels (repeatable); the classifier never is.",
        ),
        click.option("--finetune", help="Recovery fine-tuning data after pruning (as --calib), distilled."),
        click.option(
            "--epochs", type=COUNT, default=3, show_default=True, help="Fine-tuning epochs at most."
        ),
        click.option(
            "--lr", type=POSITIVE, default=1e-3, show_default=True, help="Fine-tuning learning rate."
        ),
        click.option("--sparsity", help="Zero weights: a fraction (0.5: unstructured) or 2:4."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _torch_passes(kw) -> dict:
    """The prune / fine-tune / sparsity configs of a CompressRequest, from the compress options."""
    from edgekit.compress.finetune import FinetuneConfig
    from edgekit.compress.prune import PruneConfig
    from edgekit.compress.sparsity import SparsityConfig

    prune = None
    if kw["prune"] is not None or kw["prune_macs"] is not None:
        prune = PruneConfig(
            ratio=kw["prune"],
            macs=kw["prune_macs"],
            importance=kw["importance"],
            round_to=kw["round_to"],
            ignore_layers=list(kw["ignore_layers"]),
        )
    finetune = None
    if kw["finetune"]:
        finetune = FinetuneConfig(data=kw["finetune"], epochs=kw["epochs"], lr=kw["lr"])
    sparsity = SparsityConfig.parse(kw["sparsity"]) if kw["sparsity"] is not None else None
    return dict(prune=prune, finetune=finetune, sparsity=sparsity)


def _torch_pass_lines(manifest) -> None:
    """Params and MACs before and after pruning, and the sparsity reached (quality against the
    unpruned model is in the manifest table)."""
    for p in manifest.passes:
        s = p.summary
        if p.name == "prune_channels":
            click.echo(
                f"pruned: params {s['params_before']:,} → {s['params_after']:,}, MACs "
                f"{s['macs_before'] / 1e6:.1f} M → {s['macs_after'] / 1e6:.1f} M ({s['macs_ratio']:.0%})"
            )
        elif p.name == "sparsity":
            reached = ", ".join(f"{k} {v['sparsity']:.0%}" for k, v in s["by_layer_type"].items())
            click.echo(f"sparsity: {reached}; note: {s['note']}")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@_common_model_options
@_torch_pass_options
@click.option("--int8", "int8", is_flag=True, help="Static INT8 post-training quantization (QDQ).")
@click.option(
    "--calibration",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="percentile",
    show_default=True,
)
@click.option("--percentile", type=Real(min=90, max=100, min_open=True), default=99.99, show_default=True)
@click.option("--per-tensor", is_flag=True, help="Per-tensor weight scales (default: per channel).")
@click.option(
    "--symmetric-activations",
    is_flag=True,
    help="TensorRT's form: int8 activations with zero-point 0, float biases.",
)
@click.option("--eval", "eval_", help="Evaluation data (labels give accuracy; else fidelity).")
@click.option("--eval-size", type=COUNT, default=None, help="At most this many evaluation samples.")
@click.option(
    "--target",
    type=click.Choice(["ort", "openvino", "tensorrt"]),
    default="ort",
    show_default=True,
    help="The runtime it is for: its operator check runs before calibration; tensorrt implies "
    "--symmetric-activations.",
)
@click.option("--fp16", is_flag=True, help="fp16 ONNX; fp32 inputs/outputs, reductions, softmax, norms.")
@click.option(
    "--bf16", is_flag=True, help="bf16 compute in OpenVINO on CPUs with AVX-512 BF16/AMX; ONNX stays fp32."
)
@click.option(
    "--max-accuracy-drop",
    type=Real(min=0),
    metavar="POINTS",
    help="With --int8 and --eval: keep the most sensitive layers in fp32 until top-1 (or, without labels, "
    "top-1 agreement with fp32) drops at most this many points.",
)
@click.option(
    "--max-fp32-layers", type=COUNT, help="--max-accuracy-drop: keep at most this many layers fp32."
)
@_cpu_options
def compress(
    model, int8, calibration, percentile, per_tensor, symmetric_activations, eval_, eval_size, target, **kw
):
    """Compress MODEL into an artifact; with no pass flags, the verified fp32 ONNX export."""
    from dataclasses import replace

    from edgekit.benchmarks.report import manifest_table
    from edgekit.compress.quantize import Int8Config
    from edgekit.pipeline import compress as run

    def go():
        cfg = None
        given = [
            f
            for f, k in (("--target-cpu", "target_cpu"), ("--host", "cpu_host"), ("--int8-form", "int8_form"))
            if kw[k]
        ]
        if given and not int8:
            raise EdgekitError(f"{given[0]} chooses the INT8 form for a CPU; add --int8.")
        if int8:
            options = dict(calibration=calibration, percentile=percentile, per_channel=not per_tensor)
            if kw["int8_form"]:
                options["form"] = kw["int8_form"]
            tensorrt_form = symmetric_activations or target == "tensorrt"
            cfg = Int8Config.tensorrt(**options) if tensorrt_form else Int8Config(**options)
        passes = {**_torch_passes(kw), **_precision_passes(kw)}
        req = _request(model, kw, cfg, eval_, eval_size)
        return run(replace(req, target=target, target_cpu=_target_cpu(kw), **passes))

    manifest = _run(go, kw["debug"])
    manifest_table(manifest, str(kw["out"]))
    _torch_pass_lines(manifest)


def _precision_passes(kw: dict) -> dict:
    """The CompressRequest fields of --fp16, --bf16 and --max-accuracy-drop."""
    from edgekit.compress.mixed import MixedConfig
    from edgekit.compress.precision import Fp16Config

    drop, most = kw["max_accuracy_drop"], kw["max_fp32_layers"]
    if most is not None and drop is None:
        raise EdgekitError("--max-fp32-layers limits --max-accuracy-drop; add --max-accuracy-drop POINTS.")
    mixed = None if drop is None else MixedConfig(max_accuracy_drop=drop, max_fp32_layers=most)
    return {"fp16": Fp16Config() if kw["fp16"] else None, "bf16": kw["bf16"], "mixed": mixed}


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@(lambda f: _common_model_options(f, output_required=False))
@click.option("--eval", "eval_", help="Evaluation data: labels give top-1 points, else agreement with fp32.")
@click.option("--eval-size", type=COUNT, default=None, help="At most this many evaluation samples.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the table as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a bar plot (PNG).")
@_cpu_options
def sensitivity(model, eval_, eval_size, json_path, plot_path, **kw):
    """Per-layer INT8 sensitivity of MODEL: each quantized layer's op, MACs, the points restoring it
    alone to fp32 gains, and its share of fp32 latency (ONNX Runtime's profiler). -o DIR writes
    DIR/sensitivity.json and DIR/sensitivity.png."""
    from dataclasses import replace

    from edgekit.compress.quantize import Int8Config
    from edgekit.compress.sensitivity import plot, print_table
    from edgekit.pipeline import sensitivity as run

    out = kw["out"]
    json_path = json_path or (out and out / "sensitivity.json")
    plot_path = plot_path or (out and out / "sensitivity.png")

    def go():
        _outputs(("--json", json_path), ("--plot", plot_path))
        cfg = Int8Config(form=kw["int8_form"]) if kw["int8_form"] else Int8Config()
        return run(replace(_request(model, kw, cfg, eval_, eval_size), target_cpu=_target_cpu(kw)))

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


def _eager_trust_options(f):
    """--arch and --trust-pickle for eager rows, which run the source torch model: the user's own
    permission, since an artifact's manifest never grants it."""
    f = click.option(
        "--trust-pickle",
        is_flag=True,
        help="Eager rows: allow a fully pickled nn.Module source (runs code from the file).",
    )(f)
    return click.option(
        "--arch", help="Eager rows: package.module:factory building the model, for a state_dict source."
    )(f)


def _names(text: str, flag: str, example: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise EdgekitError(f"{flag} needs at least one value, e.g. {flag} {example}.")
    return names


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--runtime",
    default="ort",
    show_default=True,
    help="Runtimes, comma-separated (eager, ort, openvino, tensorrt): one row per artifact and runtime.",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="cpu; cuda (eager, ort, tensorrt), tensorrt (ort's TensorRT EP), gpu/npu (openvino).",
)
@click.option(
    "--precision",
    help="Inference precisions, comma-separated (f32, bf16, f16): one row each, where the runtime can "
    "lower (openvino, eager); f32 keeps the model's own precision. Default: the precision the artifact "
    "was verified at (an OpenVINO bf16 build: bf16), else f32.",
)
@click.option("--threads", type=NONNEGATIVE, default=0, help="Intra-op threads (0: the runtime's default).")
@click.option("--batch", default="1", show_default=True, help="Batch sizes, comma-separated: one row each.")
@click.option("--warmup", type=NONNEGATIVE, default=10, show_default=True)
@click.option("--runs", type=COUNT, default=None, help="A fixed number of timed runs ...")
@click.option("--seconds", type=POSITIVE, default=3.0, show_default=True, help="... or at least this long.")
@click.option(
    "--eval",
    "eval_",
    help="Evaluation data (image folder, .npz, module:function): top-1/top-5 with labels, and "
    "fidelity to the fp32 reference.",
)
@click.option("--eval-size", type=COUNT, default=None)
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    help="The fp32 artifact fidelity is measured against (default: an fp32 artifact of the same "
    "source among ARTIFACTS).",
)
@click.option(
    "--host",
    help="Measure on this device over ssh: ssh://user@host[:port], user@host or an ssh config alias.",
)
@click.option(
    "--hosts",
    "hosts_file",
    type=click.Path(path_type=Path),
    help="A file of ssh targets, one a line (# comments): measured in parallel, rows per host.",
)
@click.option(
    "--remote-python",
    default="python3",
    show_default=True,
    help="The device's Python, with numpy and the runtime (e.g. a venv's bin/python there).",
)
@click.option(
    "--remote-cache",
    envvar="EDGEKIT_REMOTE_CACHE",
    help="Cache directory on the device (default: ~/.cache/edgekit-remote).",
)
@click.option(
    "--ssh-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ssh client config file (ssh -F) instead of ~/.ssh/config.",
)
@click.option(
    "--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE", help="ssh -o option; repeatable."
)
@click.option("--timeout", type=POSITIVE, default=600, show_default=True, help="Per measurement.")
@click.option(
    "--emulate-cpu",
    metavar="CLASS",
    help="Run as on a CPU of this class (x86-avx2, x86-sse) under qemu: outputs, accuracy and fidelity "
    "as there (INT8 saturation included); latency is the emulator's and is not shown.",
)
@_eager_trust_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Save the records (JSON).")
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Append the records to DIR/results.jsonl.",
)
def bench(
    artifacts,
    runtime,
    device,
    precision,
    batch,
    eval_,
    eval_size,
    reference,
    json_path,
    out_dir,
    host,
    hosts_file,
    remote_python,
    remote_cache,
    ssh_config,
    ssh_options,
    **kw,
):
    """Measure latency, memory, size, energy (and accuracy or fidelity with --eval) of artifacts,
    each in a fresh worker process: here, or on devices over ssh (--host, --hosts)."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from edgekit.benchmarks.report import bench_table
    from edgekit.benchmarks.runner import BenchConfig, batch_sizes, measure
    from edgekit.progress import progress
    from edgekit.runtimes import get as get_runtime
    from edgekit.runtimes.remote import remotes

    notes: list[str] = []

    def go():
        _outputs(("--json", json_path), folders=(("-o", out_dir),))
        batches = _ints(batch, "--batch")
        if min(batches) < 1:
            raise EdgekitError(f"--batch {batch} must list batch sizes of 1 or more.")
        settings = dict(python=remote_python, cache=remote_cache, ssh_config=ssh_config)
        devices = remotes(host, hosts_file, ssh_options=tuple(ssh_options), **settings)
        if kw["emulate_cpu"]:
            from edgekit.target_cpu import emulator

            if devices:
                raise EdgekitError("--emulate-cpu runs here; it cannot be combined with --host or --hosts.")
            emulator(kw["emulate_cpu"])  # one sentence now if it cannot run here
            if kw["runs"] is None:  # emulated latency means nothing: a few runs, for the outputs
                kw.update(runs=2, warmup=min(kw["warmup"], 1))
        # a device needs the runtime, not this machine: there the name is only checked
        names = [get_runtime(n).NAME for n in _names(runtime, "--runtime", "ort")] if devices else None
        names = names or _checked_runtimes(runtime)
        precisions = _names(precision, "--precision", "f32,bf16") if precision is not None else [None]
        cfg = BenchConfig(device=device, **kw)
        evals = _evaluation(artifacts, eval_, eval_size, reference)
        warned = (s.description.get("warning") for s, _ in evals.values())
        notes.extend(f"--eval: {w}" for w in dict.fromkeys(warned) if w)
        jobs = []
        for a in artifacts:
            sizes, note = batch_sizes(_manifest(a).input_spec, batches)
            if note:
                notes.append(f"{a}: {note}")
            jobs += [
                (a, replace(cfg, runtime=n, batch=b, precision=p))
                for b in sizes
                for n in names
                for p in precisions
            ]

        def rows(device, bar) -> list[dict]:
            """Every job's record, in order, measured here (DEVICE None) or on DEVICE over ssh."""
            label = f"{device.target} · " if device else ""
            task = bar.add_task(f"{label}measuring", total=len(jobs))
            records = []
            for a, c in jobs:
                what = f"{label}{Path(a).name} · {c.runtime} {c.precision or ''} · batch {c.batch}"
                bar.update(task, description=what)
                on = device and replace(
                    device, status=lambda s, w=what: bar.update(task, description=f"{w}: {s}")
                )
                records.append(measure(a, c, *evals.get(Path(a), (None, None)), host=on))
                bar.advance(task)
            return records

        with progress() as bar:
            if not devices:
                return rows(None, bar)
            with ThreadPoolExecutor(len(devices)) as pool:  # one thread per device
                return [r for records in pool.map(lambda d: rows(d, bar), devices) for r in records]

    records = _run(go, False)
    for target in dict.fromkeys(r["host_target"] for r in records):  # a table per device
        title = "edgekit bench" if target == "local" else f"edgekit bench on {target}"
        bench_table([r for r in records if r["host_target"] == target], title)
    for note in notes:
        click.echo(f"note: {note}")
    if json_path:
        _write_json(json_path, records)
    if out_dir:
        from edgekit.benchmarks.results import append_records

        path = _run(lambda: append_records(out_dir, records), False)
        click.echo(f"appended {len(records)} record(s) to {path}")
    if not all(r.get("ok") or r.get("not_applicable") for r in records):
        sys.exit(1)


def _manifest(directory: Path):
    from edgekit.artifact import read_manifest

    return read_manifest(directory)


def _checked_runtimes(text: str) -> list[str]:
    """The --runtime names; an unknown or absent runtime fails before any measurement."""
    from edgekit.benchmarks.runner import runtime as check_runtime

    names = _names(text, "--runtime", "ort,openvino")
    for name in names:
        check_runtime(name)
    return names


def _evaluation(artifacts, eval_: str | None, eval_size: int | None, explicit: Path | None) -> dict:
    """Per artifact: its evaluation samples (with the preprocessing its manifest recorded) and the
    fp32 reference outputs on them, or None where there is no fp32 reference."""
    from dataclasses import asdict

    from edgekit.benchmarks.runner import reference_outputs, references
    from edgekit.data import load_samples, recorded_preprocess

    if not eval_:
        if explicit:
            raise EdgekitError("--reference needs --eval: fidelity is measured on evaluation data.")
        return {}
    refs = references([Path(a) for a in artifacts], explicit)
    samples: dict[str, object] = {}
    outputs: dict[tuple, object] = {}
    result = {}
    for a in artifacts:
        m = _manifest(a)
        pre = recorded_preprocess(m)
        key = json.dumps(asdict(pre), sort_keys=True)
        if key not in samples:
            samples[key] = load_samples(eval_, m.input_spec, eval_size, pre, 0, "eval")
        ref = refs[Path(a)]
        if ref is not None and (ref, key) not in outputs:
            outputs[ref, key] = reference_outputs(ref, samples[key])
        result[Path(a)] = (samples[key], outputs.get((ref, key)))
    return result


@cli.command()
def runtimes():
    """List the runtimes: installed or not, version, and the devices each one sees here."""
    from rich.console import Console
    from rich.table import Table

    from edgekit import target_cpu
    from edgekit.runtimes import ALL, get

    t = Table(title="edgekit runtimes", title_justify="left")
    for col in ("runtime", "available", "version", "devices"):
        t.add_column(col)
    for name in ALL:
        rt = get(name)
        if not rt.available():
            t.add_row(name, "no", rt.INSTALL, "")
            continue
        d = rt.describe()
        t.add_row(name, "yes", d["version"], ", ".join(d["devices"]))
    Console().print(t)
    here = target_cpu.here()
    made = _run(target_cpu.resolve, False)
    click.echo(
        f"CPU: {here.cpu} ({', '.join(here.flags) or 'no INT8/bf16 flags'}): class {here.cpu_class}"
        f" ({target_cpu.CLASSES[here.cpu_class].examples if here.cpu_class in target_cpu.CLASSES else '?'}); "
        f"--int8 makes the {target_cpu.auto_form(made)} form for {made.cpu_class}"
        + (f" ({made.source})" if made.source != "this machine" else "")
        + "."
    )


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
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    help="Where to write artifacts (default: the cache).",
)
@click.option("--retrain", is_flag=True, help="Train the digits model again even if cached.")
def demo(work_dir, retrain):
    """Train a small CNN on scikit-learn's digits, export, quantize to INT8, benchmark both."""
    from edgekit.demo import run

    def go():
        _outputs(folders=(("--work-dir", work_dir),))
        return run(work_dir, retrain)

    _run(go, False)


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["openvino", "tensorrt"]), required=True)
@click.option(
    "--precision",
    help="openvino: fp32 (default), fp16 (fp16 weights), bf16 (bf16 inference on CPUs that have it); "
    "tensorrt: fp32, fp16, int8 (from the artifact's Q/DQ nodes).",
)
@click.option(
    "--quantizer",
    type=click.Choice(["qdq", "nncf"]),
    default="qdq",
    show_default=True,
    help="openvino: convert the artifact as it is (qdq), or quantize an fp32 artifact with NNCF "
    "(needs --calib).",
)
@click.option("--workspace", default="2G", show_default=True, help="tensorrt: builder workspace limit.")
@click.option("--min-batch", type=COUNT, help="tensorrt: optimization profile (default 1).")
@click.option("--opt-batch", type=COUNT, help="tensorrt: optimization profile (default 1).")
@click.option("--max-batch", type=COUNT, help="tensorrt: optimization profile (default 32).")
@click.option("--calib", help="Calibration data (--quantizer nncf), also used to verify without --eval.")
@click.option("--calib-size", type=COUNT, default=300, show_default=True)
@click.option("--eval", "eval_", help="Data to verify the engine against its parent (labels give accuracy).")
@click.option("--eval-size", type=COUNT, default=None)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output artifact directory."
)
@click.option("--force", is_flag=True, help="Replace an existing output artifact.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def build(artifact, target, precision, quantizer, workspace, min_batch, opt_batch, max_batch, **kw):
    """Build an engine for a target runtime from an ONNX artifact (OpenVINO IR, TensorRT plan),
    verified against the artifact it was built from."""
    from edgekit.benchmarks.report import manifest_table
    from edgekit.build import BuildRequest
    from edgekit.build import build as run
    from edgekit.export.openvino import OpenVINOConfig

    def go():
        req = BuildRequest(
            parent=artifact,
            out=kw["out"],
            target=target,
            calib=kw["calib"],
            calib_size=kw["calib_size"],
            eval=kw["eval_"],
            eval_size=kw["eval_size"],
            force=kw["force"],
        )
        if target == "openvino":
            req.openvino = OpenVINOConfig(precision=precision or "fp32", quantizer=quantizer)
        else:
            from edgekit.export.tensorrt import TensorRTConfig, parse_bytes

            req.tensorrt = TensorRTConfig(
                precision=precision or "fp32",
                workspace=parse_bytes(workspace),
                min_batch=min_batch,
                opt_batch=opt_batch,
                max_batch=max_batch,
            )
        return run(req)

    manifest = _run(go, kw["debug"])
    manifest_table(manifest, str(kw["out"]))


@cli.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--format", "formats", help="Files to write, comma-separated: md, csv, html.")
@click.option(
    "--plot", is_flag=True, help="PNG plots: latency vs accuracy, latency distribution (matplotlib)."
)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(path_type=Path),
    help="Where to write (default: next to RESULTS).",
)
def report(results, formats, plot, out):
    """Show benchmark records (a results directory, a .jsonl file or a --json file) as a table, and
    write Markdown, CSV, a self-contained HTML page and plots."""
    from edgekit.benchmarks.report import bench_table, parse_formats, write_report
    from edgekit.benchmarks.results import load_records

    def go():
        _outputs(folders=(("-o", out),))
        chosen = parse_formats(formats) if formats else []
        records = load_records(results)
        bench_table(records, title=f"edgekit report {results}")
        if not chosen and not plot:
            return
        target = out or (results if results.is_dir() else results.parent)
        written, notes = write_report(records, chosen, plot, target)
        for note in notes:
            click.echo(note)
        for path in written:
            click.echo(f"wrote {path}")

    _run(go, False)


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runtime", default="ort", show_default=True, help="One runtime, or two to compare them.")
@click.option("--precision", help="One precision, or two to compare them (default: the artifact's).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--rounds", type=COUNT, default=10, show_default=True, help="Interleaved rounds, A B A B ...")
@click.option(
    "--seconds", type=POSITIVE, default=10.0, show_default=True, help="Timed seconds per side, all rounds."
)
@click.option("--threads", type=NONNEGATIVE, default=0, help="Intra-op threads (0: the runtime's default).")
@click.option(
    "--warmup", type=NONNEGATIVE, default=10, show_default=True, help="Untimed runs in each worker."
)
@click.option("--timeout", type=POSITIVE, default=600, show_default=True, help="Per measurement.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Save the comparison (JSON).")
@_eager_trust_options
def compare(artifacts, runtime, precision, rounds, json_path, **kw):
    """Measure two variants interleaved (A B A B, fresh workers each round) and report the latency
    ratio B/A with a 95 % bootstrap confidence interval. The two are two ARTIFACTS on one runtime,
    or one artifact on two runtimes (--runtime ort,openvino) or at two precisions (--precision f32,bf16)."""
    from dataclasses import replace

    from edgekit.benchmarks.compare import CompareConfig
    from edgekit.benchmarks.compare import compare as run
    from edgekit.benchmarks.report import compare_table
    from edgekit.benchmarks.runner import BenchConfig

    def go():
        _outputs(("--json", json_path))
        names = _checked_runtimes(runtime)
        precisions = _names(precision, "--precision", "f32,bf16") if precision is not None else [None]
        variants = [
            (Path(a), replace(BenchConfig(**kw), runtime=n, precision=p))
            for a in artifacts
            for n in names
            for p in precisions
        ]
        if len(variants) != 2 or sum(len(x) == 2 for x in (artifacts, names, precisions)) != 1:
            raise EdgekitError(
                "compare needs exactly two variants: two artifacts, or one artifact with two --runtime "
                f"names or two --precision values (got {len(artifacts)} artifact(s), runtimes "
                f"{','.join(names)}, precisions {','.join(p or 'default' for p in precisions)})."
            )
        for a in artifacts:
            _manifest(a)  # a missing artifact fails before any measurement
        return run(variants, CompareConfig(rounds=rounds))

    result = _run(go, False)
    compare_table(result)
    if json_path:
        _write_json(json_path, result)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["tensorrt", "openvino", "ort"]), required=True)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
    default="fp32",
    show_default=True,
    help="int8 needs a Q/DQ model (edgekit compress --int8).",
)
@click.option("--arch", help="package.module:factory building the model, for a state_dict.")
@click.option(
    "--trust-pickle", is_flag=True, help="Allow a fully pickled nn.Module (runs code from the file)."
)
@click.option("--input-shape", "input_shapes", multiple=True, metavar="1,3,224,224", help="Repeat per input.")
@click.option("--input-dtype", default="float32", show_default=True)
@click.option("--static-batch", is_flag=True, help="Check the model with its batch axis fixed.")
@click.option("--opset", type=int, default=None, help="ONNX opset to export a torch model at.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def check(model, target, precision, opset, debug, **load):
    """Pre-flight: list the ops of MODEL (a torch or ONNX file, or an artifact) that TARGET cannot
    run at PRECISION, with the node and the torch module each came from. Exit 0: none; 1: some."""
    from edgekit.export.check import ParserUnavailable, check_model, print_findings
    from edgekit.model import LoadOptions, parse_shape

    def go():
        opts = LoadOptions(**{**load, "input_shapes": tuple(parse_shape(s) for s in load["input_shapes"])})
        try:
            return check_model(model, target, precision, opts, opset), None
        except ParserUnavailable as e:  # TensorRT absent: show what the ONNX graph showed, then say so
            return e.findings, e

    findings, incomplete = _run(go, debug)
    print_findings(findings, f"edgekit check {model} --target {target} --precision {precision}")
    if incomplete:
        _fail(incomplete)
    sys.exit(1 if findings else 0)


@cli.command(name="run")
@click.argument("config", type=click.Path(path_type=Path), default="edgekit.yaml")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(path_type=Path),
    default=Path("edgekit-results"),
    show_default=True,
    help="Results directory: results.jsonl and verdict.json.",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    help="Stage cache (default: ${XDG_CACHE_HOME:-~/.cache}/edgekit/run).",
)
@click.option("--no-cache", is_flag=True, help="Build every stage again (the cache entries are replaced).")
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    help="Results of the last release (a directory or .jsonl), for max_latency_regression gates.",
)
@click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML: one test case per gate.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
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


@cli.command(name="gate")
@click.argument("results", type=click.Path(path_type=Path))
@click.option(
    "--config", "config", type=click.Path(path_type=Path), default="edgekit.yaml", show_default=True
)
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    help="Results of the last release (a directory or .jsonl), for max_latency_regression gates.",
)
@click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML: one test case per gate.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the verdict as JSON.")
def gate_results(results, config, baseline, junit, json_path):
    """Check the gates of CONFIG against RESULTS from `edgekit run` (no measuring): exit 0 all pass,
    1 a gate failed, 2 bad config or input. An inconclusive latency gate stays so here."""
    from edgekit.benchmarks import gate
    from edgekit.benchmarks.results import load_records
    from edgekit.config import load

    def go():
        _outputs(("--junit", junit), ("--json", json_path))
        cfg = load(config, check_files=False)
        saved = load_records(baseline) if baseline else None
        return gate.evaluate(cfg.gates, load_records(results), saved)

    verdict = _run(go, False)
    _run(lambda: gate.publish(verdict, json_path, junit), False)
    sys.exit(1 if gate.failed(verdict) else 0)


@cli.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@click.option("--force", is_flag=True, help="Replace existing files.")
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
    handled as Ctrl-C is, and library warnings stay off stderr (-W or PYTHONWARNINGS shows them)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
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
        terminated = isinstance(e.__cause__, Terminated)
        click.echo(f"edgekit: {'terminated' if terminated else 'interrupted'}.", err=True)
        sys.exit(143 if terminated else 130)
    sys.exit(code if isinstance(code, int) else 0)
