"""After a compress chain ran: each compressing pass's model held to its fidelity floors
(edgekit.floors), a per-layer probe and what to try next where one is missed, and a short timing
against the fp32 export; all recorded in the manifest's verification."""

from __future__ import annotations

from edgekit import floors, passes
from edgekit.compress.quantize import Int8Config
from edgekit.data import Samples
from edgekit.errors import EdgekitError


def review(w: passes.Work) -> floors.FloorNotMet | None:
    """Each compressing pass's verification against its fidelity floors, a per-layer probe where one
    is missed (on real data), and a short timing against fp32; all recorded in the manifest. Returns
    the miss, raised once the artifact is written."""
    ver = w.manifest.verification
    steps = [s for s in floors.JUDGED if isinstance(ver.get(s), dict) and "fidelity" in ver[s]]
    if not steps:
        return None
    judged = ver.get("selection", {}).get("judged_on", [])  # what a selection reads (compress.selection)
    floors.check_names(w.req.min_fidelity, [*(w.manifest.output_names or []), *judged])
    below = None
    for step in steps:
        records = floors.judge(ver[step], _floors(w, step))
        ver[step]["floors"] = records
        miss = next((r for r in records if not r["met"]), None)
        if miss is None or below is not None:
            continue
        if floors.on_noise(ver[step]):
            ver[step]["floors_note"] = "measured on random inputs: a miss is a warning, not a failure"
            continue
        probe = _probe(w, step)
        layers = []
        if probe:
            ver[step]["probe"] = probe
            layers = [x for x in probe["layers"] if x["node"] in probe["worst"]]
            layers.sort(key=lambda x: probe["worst"].index(x["node"]))
        label = _step_label(w, step)
        said = floors.sentence(str(w.req.out), label, miss, layers, _hints(w, step, layers))
        ver[step]["floor_missed"] = said
        below = floors.FloorNotMet(said)
    _speed(w, steps[-1])
    return below


def _floors(w: passes.Work, step: str) -> dict[str, float]:
    """The floors STEP is held to: with mixed precision, the first output's is the accuracy budget
    the user gave (unless a floor names that output), which mixed itself enforces."""
    mixed = passes.step_config(w.req.chain, "mixed")
    chosen = dict(w.req.min_fidelity)
    first = (w.manifest.output_names or ["output_0"])[0]
    if step != "int8" or mixed is None or not any(chosen.values()) or {"output_0", first} & set(chosen):
        return chosen
    if w.manifest.verification["int8"]["fidelity"]["output_0"].get("kind") == "other":
        return chosen  # its budget counts decisions IoU, its floor SQNR: mixed holds the budget itself
    top1 = w.manifest.verification["int8"].get("parent_top1")
    points = mixed.max_accuracy_drop / 100
    chosen["output_0"] = max(0.0, 1 - (points / top1 if top1 else points))
    return chosen


def _step_label(w: passes.Work, step: str) -> str:
    names = [s.name for s in w.req.chain]
    if step == "prune":
        return "+".join(n for n in names if passes.PASSES[n].accepts == passes.TORCH)
    return "mixed-precision int8" if step == "int8" and "mixed" in names else step


def _probe(w: passes.Work, step: str) -> dict | None:
    """The per-layer probe (edgekit.compress.layer_probe) of STEP's model against the fp32 export;
    None for the torch passes (a pruned layer has other shapes than the unpruned one)."""
    from edgekit.compress.layer_probe import probe

    if step == "prune":
        return None
    data, fixed = _data(w), w.loaded.input_spec.fixed_batch
    if step == "bf16":
        from edgekit.runtimes import ov

        bf16 = lambda path: ov.load(path, "cpu", ov.Options(precision="bf16"))  # noqa: E731
        return probe(w.fp32, w.fp32, data, fixed, bf16)
    return probe(w.fp32, w.model, data, fixed)


def _data(w: passes.Work) -> Samples:
    """The samples the passes were verified on: the evaluation data, else the calibration data."""
    return w.evals if w.evals is not None else w.calib


def _hints(w: passes.Work, step: str, layers: list[dict]) -> list[str]:
    """What to try next for a miss in STEP: options compress and edgekit.yaml really have."""
    named = ", ".join(x["node"] for x in layers) or "NAME"
    if step == "prune":
        return [
            "a smaller --prune or --prune-macs",
            "--finetune DATA to recover",
            "--ignore-layer NAME for the layers that matter",
        ]
    if step == "fp16":
        return [
            f"fp16: {{block_nodes: [{named}]}} in edgekit.yaml to keep them fp32",
            "--bf16 where the CPU has it",
        ]
    if step == "bf16":
        return ["the fp32 export (no --bf16)", "--fp16 for a GPU target"]
    from edgekit.compress.precision import bf16_unsupported
    from edgekit.compress.sensitivity import drop_points

    cfg = w.int8 or Int8Config()
    made = w.manifest.target_cpu or {}
    hints = [f"--calibration {'percentile' if cfg.calibration == 'minmax' else 'minmax'}"]
    # u8 x u8 only helps where the target's u8 x s8 pair sums saturate; TensorRT's form is its own
    if cfg.form != "u8u8" and w.req.target != "tensorrt" and made.get("u8s8_saturates", True):
        hints.append("--int8-form u8u8 (cannot saturate)")
    try:  # a budget counts points of top-1 or of the first output's main fidelity (sensitivity.drop_points)
        drop_points(w.manifest.verification[step])
        counted = True
    except (EdgekitError, KeyError):  # KeyError: no fidelity recorded
        counted = False
    if counted and passes.step_config(w.req.chain, "mixed") is not None:
        hints.append("a larger --max-fp32-layers or --max-accuracy-drop")
    elif counted:
        hints.append("--max-accuracy-drop POINTS with --eval to keep the worst layers fp32")
    hints.append(f"int8: {{exclude_nodes: [{named}]}} in edgekit.yaml")
    if made.get("from") == "this machine" and w.req.target != "tensorrt" and bf16_unsupported() is None:
        hints.append("--bf16 instead (this CPU computes bf16)")
    return [*hints, "`edgekit sensitivity` for the full per-layer table"] if counted else hints


def _speed(w: passes.Work, step: str) -> None:
    """STEP's model timed against the fp32 export on the runtime it is for (edgekit.speedup),
    recorded as its verification's `speed`."""
    from edgekit import speedup

    entry = w.manifest.verification[step]
    runtime = "openvino-bf16" if step == "bf16" else w.req.target
    if step == "prune":
        entry["speed"] = {
            "measured": False,
            "why": "the unpruned model is not exported; `edgekit compare` times both",
        }
        return
    if runtime == "tensorrt":
        entry["speed"] = {
            "measured": False,
            "why": "TensorRT runs on a GPU: `edgekit build` and `edgekit compare` there",
        }
        return
    model, fixed = (w.fp32 if step == "bf16" else w.model), w.loaded.input_spec.fixed_batch
    # on the kernels of the CPU class it is made for where they can be timed here, else this CPU's
    target = (w.manifest.target_cpu or {}).get("class") if runtime in ("ort", "openvino") else None
    try:
        on = speedup.kernels(target) or speedup.kernels()
        entry["speed"] = speedup.measure(w.fp32, model, _data(w), fixed, runtime, on)
    except EdgekitError as e:
        entry["speed"] = {"measured": False, "why": str(e)}
