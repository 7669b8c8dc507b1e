"""The option stacks of edgekit's commands, as named decorator groups, and the range types they use
(cli.py keeps the commands themselves)."""

from __future__ import annotations

import math
from pathlib import Path

import click


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


def options(*opts):
    """One decorator applying OPTS as if stacked in the order listed (the order --help shows)."""

    def apply(f):
        for opt in reversed(opts):
            f = opt(f)
        return f

    return apply


DEBUG = click.option("--debug", is_flag=True, help="Show tracebacks.")
# Ray for independent jobs: search candidates, per-layer trials (edgekit.cluster)
RAY_ADDRESS = click.option(
    "--ray-address",
    metavar="local|auto|HOST:PORT|ray://HOST:PORT",
    help="Run the trials on Ray: local (this machine), or an existing cluster.",
)

# how a model file is loaded: export, compress, sensitivity and check
LOADING = (
    click.option("--arch", help="package.module:factory building the model, for a state_dict."),
    click.option(
        "--trust-pickle", is_flag=True, help="Allow a fully pickled nn.Module (runs code from the file)."
    ),
    click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="1,3,224,224",
        help="Input shape, or name:shape (input_ids:1,64); repeat per input.",
    ),
    click.option(
        "--input-dtype",
        multiple=True,
        metavar="DTYPE|NAME=DTYPE",
        help="dtype of a torch model's inputs given by --input-shape: DTYPE for all (default float32), "
        "NAME=DTYPE for one (input_ids=int64); repeatable.",
    ),
)

PATH = click.Path(path_type=Path)
JSON = click.option("--json", "json_path", type=PATH, help="Save the records (JSON).")
TIMEOUT = click.option("--timeout", type=POSITIVE, default=600, show_default=True, help="Per measurement.")
THREADS = click.option(
    "--threads", type=NONNEGATIVE, default=0, help="Intra-op threads (0: the runtime's default)."
)
JUNIT = click.option("--junit", type=PATH, help="Write JUnit XML: one test case per gate.")
BASELINE = click.option(
    "--baseline",
    type=PATH,
    help="Results of the last release (a directory or .jsonl), for max_latency_regression gates.",
)

# --arch and --trust-pickle for eager rows, which run the source torch model: the user's own
# permission, since an artifact's manifest never grants it
eager_trust = options(
    click.option(
        "--arch", help="Eager rows: package.module:factory building the model, for a state_dict source."
    ),
    click.option(
        "--trust-pickle",
        is_flag=True,
        help="Eager rows: allow a fully pickled nn.Module source (runs code from the file).",
    ),
)

# ssh devices `bench` measures on
bench_hosts = options(
    click.option(
        "--host",
        help="Measure on this device over ssh: ssh://user@host[:port], user@host or an ssh config alias.",
    ),
    click.option(
        "--hosts",
        "hosts_file",
        type=PATH,
        help="A file of ssh targets, one a line (# comments): measured in parallel, rows per host.",
    ),
    click.option(
        "--remote-python",
        default="python3",
        show_default=True,
        help="The device's Python, with numpy and the runtime (e.g. a venv's bin/python there).",
    ),
    click.option(
        "--remote-cache",
        envvar="EDGEKIT_REMOTE_CACHE",
        help="Cache directory on the device (default: ~/.cache/edgekit-remote).",
    ),
    click.option(
        "--ssh-config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="ssh client config file (ssh -F) instead of ~/.ssh/config.",
    ),
    click.option(
        "--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE", help="ssh -o option; repeatable."
    ),
)

METRIC = click.option(
    "--metric",
    metavar="MODULE:FUNCTION",
    help="Your task metric: FUNCTION(outputs, labels) returns a number, or a dict of numbers whose first "
    "is judged (higher is better); measured beside fidelity on every model and its fp32 parent "
    "(docs/guide/quantize.md).",
)

bench_options = options(
    click.option(
        "--runtime",
        default="ort",
        show_default=True,
        help="Runtimes, comma-separated (eager, ort, openvino, tensorrt): one row per artifact and runtime.",
    ),
    click.option(
        "--device",
        default="cpu",
        show_default=True,
        help="cpu; cuda (eager, ort, tensorrt), tensorrt (ort's TensorRT EP), gpu/npu (openvino).",
    ),
    click.option(
        "--precision",
        help="Inference precisions, comma-separated (f32, bf16, f16): one row each, where the runtime can "
        "lower (openvino, eager); f32 keeps the model's own precision. Default: the precision the artifact "
        "was verified at (an OpenVINO bf16 build: bf16), else f32.",
    ),
    THREADS,
    click.option(
        "--batch", default="1", show_default=True, help="Batch sizes, comma-separated: one row each."
    ),
    click.option("--warmup", type=NONNEGATIVE, default=10, show_default=True),
    click.option("--runs", type=COUNT, default=None, help="A fixed number of timed runs ..."),
    click.option(
        "--seconds", type=POSITIVE, default=3.0, show_default=True, help="... or at least this long."
    ),
    click.option(
        "--eval",
        "eval_",
        help="Evaluation data (image folder, .npz, module:function): top-1/top-5 with labels, and "
        "fidelity to the fp32 reference.",
    ),
    click.option("--eval-size", type=COUNT, default=None),
    METRIC,
    click.option(
        "--reference",
        type=PATH,
        help="The fp32 artifact fidelity is measured against (default: an fp32 artifact of the same "
        "source among ARTIFACTS).",
    ),
    bench_hosts,
    TIMEOUT,
    click.option(
        "--emulate-cpu",
        metavar="CLASS",
        help="Run as on a CPU of this class (x86-sse, x86-avx2, x86-avx512, x86-vnni): outputs, accuracy "
        "and fidelity as there (INT8 saturation included). Natively with CPUID masked where the class is "
        "below this CPU's and Linux can fault on CPUID (latency shown: that class's kernels on these "
        "cores), else under qemu (x86-sse, x86-avx2; latency not shown).",
    ),
    eager_trust,
    JSON,
    click.option("-o", "--output", "out_dir", type=PATH, help="Append the records to DIR/results.jsonl."),
)

compare_options = options(
    click.option("--runtime", default="ort", show_default=True, help="One runtime, or two to compare them."),
    click.option("--precision", help="One precision, or two to compare them (default: the artifact's)."),
    click.option("--device", default="cpu", show_default=True),
    click.option(
        "--rounds", type=COUNT, default=10, show_default=True, help="Interleaved rounds, A B A B ..."
    ),
    click.option(
        "--seconds",
        type=POSITIVE,
        default=10.0,
        show_default=True,
        help="Timed seconds per side, all rounds.",
    ),
    THREADS,
    click.option(
        "--warmup", type=NONNEGATIVE, default=10, show_default=True, help="Untimed runs in each worker."
    ),
    TIMEOUT,
    click.option(
        "--json",
        "json_path",
        type=PATH,
        help="Save the comparison and its two records (JSON; `report` and `gate` read it).",
    ),
    eager_trust,
)

build_options = options(
    click.option("--target", type=click.Choice(["openvino", "tensorrt"]), required=True),
    click.option(
        "--precision",
        help="openvino: fp32 (default), fp16 (fp16 weights), bf16 (bf16 inference on CPUs that have it); "
        "tensorrt: fp32, fp16, int8 (from the artifact's Q/DQ nodes).",
    ),
    click.option(
        "--quantizer",
        type=click.Choice(["qdq", "nncf"]),
        default="qdq",
        show_default=True,
        help="openvino: convert the artifact as it is (qdq), or quantize an fp32 artifact with NNCF "
        "(needs --calib).",
    ),
    click.option("--workspace", help="tensorrt: builder workspace limit (default 2G)."),
    click.option("--min-batch", type=COUNT, help="tensorrt: optimization profile (default 1)."),
    click.option("--opt-batch", type=COUNT, help="tensorrt: optimization profile (default 1)."),
    click.option("--max-batch", type=COUNT, help="tensorrt: optimization profile (default 32)."),
    click.option("--calib", help="Calibration data (--quantizer nncf), also used to verify without --eval."),
    click.option("--calib-size", type=COUNT, default=300, show_default=True),
    click.option(
        "--eval", "eval_", help="Data to verify the engine against its parent (labels give accuracy)."
    ),
    click.option("--eval-size", type=COUNT, default=None),
    click.option("-o", "--output", "out", required=True, type=PATH, help="Output artifact directory."),
    click.option("--force", is_flag=True, help="Replace an existing output artifact."),
    DEBUG,
)

report_options = options(
    click.option("--format", "formats", help="Files to write, comma-separated: md, csv, html."),
    click.option(
        "--plot", is_flag=True, help="PNG plots: latency vs accuracy, latency distribution (matplotlib)."
    ),
    click.option("-o", "--output", "out", type=PATH, help="Where to write (default: next to RESULTS)."),
)

check_options = options(
    click.option("--target", type=click.Choice(["tensorrt", "openvino", "ort"]), required=True),
    click.option(
        "--precision",
        type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
        default="fp32",
        show_default=True,
        help="int8 needs a Q/DQ model (edgekit compress --int8).",
    ),
    *LOADING,
    click.option("--static-batch", is_flag=True, help="Check the model with its batch axis fixed."),
    click.option("--opset", type=int, default=None, help="ONNX opset to export a torch model at."),
    DEBUG,
)

run_options = options(
    click.option(
        "-o",
        "--output",
        "out",
        type=PATH,
        default=Path("edgekit-results"),
        show_default=True,
        help="Results directory: results.jsonl and verdict.json.",
    ),
    click.option(
        "--cache", type=PATH, help="Stage cache (default: ${XDG_CACHE_HOME:-~/.cache}/edgekit/run)."
    ),
    click.option(
        "--no-cache", is_flag=True, help="Build every stage again (the cache entries are replaced)."
    ),
    BASELINE,
    JUNIT,
    DEBUG,
)

search_options = options(
    click.option(
        "-o",
        "--output",
        "out",
        type=PATH,
        default=Path("edgekit-search"),
        show_default=True,
        help="Search directory: results.jsonl (kept across runs: a rerun resumes), candidates/, search.json.",
    ),
    click.option(
        "--ray-address",
        metavar="auto|HOST:PORT|ray://HOST:PORT",
        help="An existing Ray cluster (default: a local Ray on this machine).",
    ),
    click.option(
        "--apply", "apply_name", metavar="NAME", help="Write candidate NAME into CONFIG as a variant."
    ),
    DEBUG,
)

gate_options = options(
    click.option("--config", "config", type=PATH, default="edgekit.yaml", show_default=True),
    BASELINE,
    JUNIT,
    click.option("--json", "json_path", type=PATH, help="Write the verdict as JSON."),
)


def model_options(output_required: bool = True):
    """Loading the model, the export check, the output and the data: export, compress, sensitivity."""
    return options(
        *LOADING,
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
            type=PATH,
            help="Output artifact directory.",
        ),
        click.option("--force", is_flag=True, help="Replace an existing output directory."),
        click.option("--calib", help="Calibration data: image folder, .npz, module:function, or 'random'."),
        click.option("--calib-size", type=COUNT, default=300, show_default=True),
        click.option(
            "--calib-const",
            "constants",
            multiple=True,
            metavar="NAME=VALUE",
            help="An input that is the same in every sample (a scalar: sr=16000); also for --eval.",
        ),
        click.option(
            "--batch-axis",
            "batch_axes",
            multiple=True,
            metavar="NAME=AXIS",
            help="An input whose batch axis is not the first (state=1 for [2, N, 64]); repeatable.",
        ),
        click.option(
            "--resize", type=COUNT, help="Images: shorter side before the crop (default crop/0.875)."
        ),
        click.option("--crop", type=COUNT, help="Images: center crop (default: the model's input size)."),
        click.option("--mean", default="0.485,0.456,0.406", show_default=True),
        click.option("--std", default="0.229,0.224,0.225", show_default=True),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True),
        click.option(
            "--layout",
            type=click.Choice(["auto", "nchw", "nhwc"]),
            default="auto",
            show_default=True,
            help="Image tensor layout; auto: from where the model's input has 1 or 3 channels.",
        ),
        DEBUG,
    )


# the torch passes of `compress`, before the export: prune, finetune, sparsity (edgekit.passes)
torch_pass_options = options(
    click.option("--prune", type=FRACTION, help="Remove this fraction of every prunable layer's channels."),
    click.option("--prune-macs", type=FRACTION, help="Prune until MACs drop by this fraction (0.5: half)."),
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
    click.option("--epochs", type=COUNT, default=3, show_default=True, help="Fine-tuning epochs at most."),
    click.option("--lr", type=POSITIVE, default=1e-3, show_default=True, help="Fine-tuning learning rate."),
    click.option("--sparsity", help="Zero weights: a fraction (0.5: unstructured) or 2:4."),
)

# the ONNX passes of `compress`: int8 (with mixed), fp16, bf16, and the runtime it is for
compress_options = options(
    click.option("--int8", "int8", is_flag=True, help="Static INT8 post-training quantization (QDQ)."),
    click.option(
        "--calibration",
        type=click.Choice(["minmax", "mean_minmax", "entropy", "percentile", "mse"]),
        default="percentile",
        show_default=True,
    ),
    click.option("--percentile", type=Real(min=90, max=100, min_open=True), default=99.99, show_default=True),
    click.option("--per-tensor", is_flag=True, help="Per-tensor weight scales (default: per channel)."),
    click.option(
        "--equalize/--no-equalize",
        default=None,
        help="Cross-layer equalization of conv pairs before INT8 calibration (default: off).",
    ),
    click.option(
        "--equalize-activations/--no-equalize-activations",
        default=None,
        help="Bring each channel's activation range before a depthwise conv to the tensor's range, the "
        "gain moved into the per-channel weights (default: on, unless --per-tensor or --equalize).",
    ),
    click.option(
        "--bias-correction/--no-bias-correction",
        default=None,
        help="Correct INT8 layers' biases for their weights' rounding on the calibration data (default: on).",
    ),
    click.option(
        "--adaround/--no-adaround",
        default=None,
        help="Round INT8 weights up or down by their layers' outputs on the calibration data (AdaRound; "
        "default: on, within a time budget; named, whatever it costs).",
    ),
    click.option(
        "--range-search/--no-range-search",
        default=None,
        help="Scale each INT8 activation range by what brings the outputs closest to fp32's on the "
        "calibration data (default: on, within a time budget; never for transformers).",
    ),
    click.option(
        "--output-fit/--no-output-fit",
        default=None,
        help="Refit a classifier's last layer to the features the INT8 model computes, by least squares "
        "on the calibration data, and requantize it (default: on; never for transformers).",
    ),
    click.option(
        "--input-grid/--no-input-grid",
        default=None,
        help="Move a graph input's INT8 scale off the grid its data lies on (8-bit pixels) where that "
        "rounds it with less error and the outputs gain (default: on).",
    ),
    click.option(
        "--input-levels/--no-input-levels",
        default=None,
        help="Give a picture input normalized per channel to its first convolution as its 8-bit levels, "
        "quantized exactly by one per-channel QuantizeLinear (default: on; ONNX Runtime only).",
    ),
    click.option(
        "--fused-activations/--no-fused-activations",
        default=None,
        help="Write GELU and SiLU activations spelled out as elementwise ops as ONNX Runtime's fused "
        "ops, in float (default: on; ONNX Runtime only).",
    ),
    click.option(
        "--symmetric-activations",
        is_flag=True,
        help="TensorRT's form: int8 activations with zero-point 0, float biases.",
    ),
    click.option("--eval", "eval_", help="Evaluation data (labels give accuracy; else fidelity)."),
    click.option("--eval-size", type=COUNT, default=None, help="At most this many evaluation samples."),
    click.option(
        "--output-kind",
        "output_kinds",
        multiple=True,
        metavar="NAME=KIND",
        help="Verify output NAME (or output_N) as classes, embedding, sequence, dense, image, segmentation, "
        "labels or other (default: inferred from its name, shape and values); repeatable.",
    ),
    METRIC,
    click.option(
        "--min-fidelity",
        "min_fidelity",
        multiple=True,
        metavar="VALUE|KIND=VALUE|OUTPUT=VALUE",
        help="The fidelity floor below which compress exits 1 (the model is still written): VALUE for "
        "every fraction-valued floor, KIND=VALUE (classes, embedding, sequence, dense, image, segmentation, "
        "labels, accuracy; other=DB), OUTPUT=VALUE for one output; 0 turns floors off; repeatable "
        "(docs/guide/quantize.md).",
    ),
    click.option(
        "--target",
        type=click.Choice(["ort", "openvino", "tensorrt"]),
        default="ort",
        show_default=True,
        help="The runtime it is for: its operator check runs before calibration; tensorrt implies "
        "--symmetric-activations.",
    ),
    click.option("--fp16", is_flag=True, help="fp16 ONNX; fp32 inputs/outputs, reductions, softmax, norms."),
    click.option(
        "--bf16",
        is_flag=True,
        help="bf16 compute in OpenVINO on CPUs with AVX-512 BF16/AMX; ONNX stays fp32.",
    ),
    click.option(
        "--max-accuracy-drop",
        type=Real(min=0),
        metavar="POINTS",
        help="With --int8 and --eval: keep the most sensitive layers in fp32 until top-1 (or, without "
        "labels, the first output's fidelity to fp32: top-1 agreement, mean cosine, mask IoU, ...) drops "
        "at most this many points.",
    ),
    click.option(
        "--max-fp32-layers", type=COUNT, help="--max-accuracy-drop: keep at most this many layers fp32."
    ),
    RAY_ADDRESS,
)


def cpu_options(f):
    """The CPU an INT8 model is made for: its form follows it (edgekit.target_cpu)."""
    from edgekit.target_cpu import CLASSES, FORMS

    return options(
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
    )(f)


demo_options = options(
    click.option("--work-dir", type=PATH, help="Where to write artifacts (default: the cache)."),
    click.option("--retrain", is_flag=True, help="Train the digits model again even if cached."),
)

init_options = options(
    click.option("--dir", "directory", type=PATH, default=Path("."), show_default=True),
    click.option("--force", is_flag=True, help="Replace existing files."),
)
