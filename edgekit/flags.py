"""compress, export and sensitivity's command-line flags as the library's request: the load
options, the data, and the chain of passes (edgekit.passes) the flags ask for."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError


def request(model, kw, chain=(), eval_=None, eval_size=None):
    """The CompressRequest of the flags KW (click's keyword arguments) for MODEL and CHAIN."""
    from edgekit import floors
    from edgekit.data import Preprocess, parse_constants
    from edgekit.export.onnx import ExportConfig
    from edgekit.model import LoadOptions, parse_shapes
    from edgekit.pipeline import CompressRequest

    return CompressRequest(
        model=Path(model),
        out=kw["out"],
        load=LoadOptions(
            arch=kw["arch"],
            trust_pickle=kw["trust_pickle"],
            input_shapes=parse_shapes(kw["input_shapes"]),
            input_dtype=kw["input_dtype"],
            static_batch=kw["static_batch"],
            batch_axes=_axes(kw["batch_axes"]),
        ),
        export=ExportConfig(opset=kw["opset"], tolerance=kw["tolerance"]),
        chain=list(chain),
        calib=kw["calib"],
        eval=eval_,
        calib_size=kw["calib_size"],
        eval_size=eval_size,
        constants=parse_constants(kw["constants"]),
        preprocess=Preprocess(
            resize=kw["resize"],
            crop=kw["crop"],
            mean=_floats(kw["mean"], "--mean"),
            std=_floats(kw["std"], "--std"),
            channel_order=kw["channel_order"],
            layout=kw["layout"],
        ),
        force=kw["force"],
        output_kinds=output_kinds(kw.get("output_kinds", ())),
        metric=kw.get("metric"),
        min_fidelity=floors.parse(kw.get("min_fidelity", ())),
        ray_address=kw.get("ray_address"),
    )


def output_kinds(pairs) -> dict[str, str]:
    """--output-kind NAME=KIND pairs as {name: kind}, each kind one that verification knows."""
    from edgekit.benchmarks.metrics import KINDS

    kinds = {}
    for pair in pairs:
        name, _, kind = pair.partition("=")
        if not name or kind not in KINDS:
            raise EdgekitError(f"--output-kind {pair!r} must be NAME=KIND, KIND one of {', '.join(KINDS)}.")
        kinds[name] = kind
    return kinds


def _axes(texts: tuple[str, ...]) -> dict[str, int]:
    """--batch-axis values (`state=1`) as {input name: axis}."""
    out = {}
    for text in texts:
        name, _, axis = text.partition("=")
        if not name or not axis.isdigit():
            raise EdgekitError(f"--batch-axis {text!r} is not NAME=AXIS with a whole number (state=1).")
        out[name] = int(axis)
    return out


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise EdgekitError(f"{flag} {text!r} must be comma-separated numbers.") from None


def target_cpu(kw: dict):
    """The TargetCpu of --target-cpu or --host (None: the int8 config's, else this machine)."""
    from edgekit.runtimes.remote import remotes
    from edgekit.target_cpu import resolve

    if kw["target_cpu"] and kw["cpu_host"]:
        raise EdgekitError("--target-cpu and --host both name the CPU to make the model for; give one.")
    if kw["cpu_host"]:
        device = remotes(kw["cpu_host"], None, python=kw["remote_python"], ssh_config=kw["ssh_config"])[0]
        return resolve(host_fingerprint=device.fingerprint(), host=str(device.target))
    return resolve(kw["target_cpu"]) if kw["target_cpu"] else None


def torch_passes(kw) -> dict:
    """The prune / finetune / sparsity configs of compress's flags (edgekit.passes)."""
    from edgekit import passes
    from edgekit.compress.sparsity import SparsityConfig

    if kw["finetune"] and kw["prune"] is None and kw["prune_macs"] is None:
        raise EdgekitError(
            "--finetune recovers accuracy after pruning; add --prune RATIO or --prune-macs REDUCTION."
        )
    prune = finetune = None
    if kw["prune"] is not None or kw["prune_macs"] is not None:
        prune = passes.config(
            "prune",
            ratio=kw["prune"],
            macs=kw["prune_macs"],
            importance=kw["importance"],
            round_to=kw["round_to"],
            ignore_layers=list(kw["ignore_layers"]),
        )
    if kw["finetune"]:
        finetune = passes.config("finetune", data=kw["finetune"], epochs=kw["epochs"], lr=kw["lr"])
    sparsity = SparsityConfig.parse(kw["sparsity"]) if kw["sparsity"] is not None else None
    return dict(prune=prune, finetune=finetune, sparsity=sparsity)


def precision_passes(kw: dict, target: str) -> dict:
    """The int8 / mixed / fp16 / bf16 configs of compress's flags (edgekit.passes); mixed times its
    candidates on TARGET."""
    from edgekit import passes
    from edgekit.compress.quantize import Int8Config

    flags = (("--target-cpu", "target_cpu"), ("--host", "cpu_host"), ("--int8-form", "int8_form"))
    cpu = [f for f, k in flags if kw[k]]
    if cpu and not kw["int8"]:
        raise EdgekitError(f"{cpu[0]} chooses the INT8 form for a CPU; add --int8.")
    drop, most = kw["max_accuracy_drop"], kw["max_fp32_layers"]
    if most is not None and drop is None:
        raise EdgekitError("--max-fp32-layers limits --max-accuracy-drop; add --max-accuracy-drop POINTS.")
    if kw.get("ray_address") and drop is None:
        raise EdgekitError(
            "--ray-address runs --max-accuracy-drop's per-layer trials; add --max-accuracy-drop."
        )
    if drop is not None and not kw["int8"]:
        raise EdgekitError("--max-accuracy-drop budgets INT8 quantization; add --int8.")
    algorithms = {
        k: kw[k]
        for k in (
            "equalize",
            "equalize_activations",
            "bias_correction",
            "adaround",
            "range_search",
            "output_fit",
            "input_grid",
            "input_levels",
            "fused_activations",
        )
        if kw[k] is not None
    }
    if algorithms and not kw["int8"]:
        key, on = next(iter(algorithms.items()))
        flag = f"--{'' if on else 'no-'}{key.replace('_', '-')}"
        raise EdgekitError(f"{flag} changes INT8 quantization; add --int8.")
    int8 = None
    if kw["int8"]:
        options = dict(calibration=kw["calibration"], percentile=kw["percentile"])
        options["per_channel"] = not kw["per_tensor"]
        options.update(algorithms)
        for name in ("range_search", "adaround"):  # asked for by name: run whatever it costs
            if algorithms.get(name):
                options[f"{name}_budget"] = None
        if kw["int8_form"]:
            options["form"] = kw["int8_form"]
        tensorrt_form = kw["symmetric_activations"] or target == "tensorrt"
        int8 = Int8Config.tensorrt(**options) if tensorrt_form else passes.config("int8", **options)
    mixed = None
    if drop is not None:
        mixed = passes.config("mixed", max_accuracy_drop=drop, max_fp32_layers=most, runtime=target)
    fp16 = passes.config("fp16") if kw["fp16"] else None
    bf16 = passes.config("bf16") if kw["bf16"] else None
    return dict(int8=int8, mixed=mixed, fp16=fp16, bf16=bf16)


def build_request(artifact: Path, eval_: str | None, out: Path, force: bool, **kw):
    """The BuildRequest of `build`'s flags: a BuildConfig (edgekit.passes' build step) from the
    options given, so an option of the other target is refused only when given."""
    from edgekit.build import BuildRequest
    from edgekit.passes import config

    data = {k: kw.pop(k) for k in ("calib", "calib_size", "eval_size")}
    cfg = config("build", **{k: v for k, v in kw.items() if v is not None})
    return BuildRequest(parent=artifact, out=out, config=cfg, eval=eval_, force=force, **data)
