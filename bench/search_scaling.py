"""Issue 15's numbers: `edgekit search` and `edgekit sensitivity` on EfficientNet-Lite1 (published
weights, real photo crops) on a local Ray cluster of 1 node, then of 2 nodes, one CPU each.

    make zoo && .venv/bin/python bench/search_scaling.py [--calib 32] [--eval 64] [--work DIR]

1. A 24-candidate grid (int8 calibration x per-channel x bias correction x runtime) built and
   scored, objectives accuracy and size (the timing phase runs one candidate at a time on the one
   device whatever the cluster, so it is left out of the scaling), wall clock per cluster size.
2. One `edgekit sensitivity` pass (every quantized layer restored alone) per cluster size.
3. From the measured per-candidate costs, an estimate of a 500-candidate search with ImageNet-val-size
   evaluation (50,000 images) on 32 nodes.
Clusters are Ray's own multi-node test utility on this machine (each node a raylet of its own); the
runs go through the real CLI with --ray-address. The 1-node run is a one-CPU machine: the cluster and
the CLI (whose own work, the calibration, AdaRound and the range search of a sensitivity pass, would
otherwise take the second core) are pinned to one core, with EDGEKIT_THREADS=1; the 2-node run has
both cores. The machine's load average is recorded: on a
shared machine it moves the numbers. Writes bench/results/search_scaling.json and its section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo
from _markdown import cpu_line, write_section

from edgekit.benchmarks.fingerprint import host

ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite1"
# token mode with the token given (a fresh machine has no ~/.ray/auth_token to read one from)
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
    "PYTHONPATH": str(ROOT),
    "COLUMNS": "200",
}
CLUSTER = """
import sys
from ray.cluster_utils import Cluster
c = Cluster(initialize_head=True, connect=False, head_node_args={
    "num_cpus": 1, "resources": {"edgekit_device_cpu": 1}, "include_dashboard": False})
for _ in range(int(sys.argv[1]) - 1):
    c.add_node(num_cpus=1)
print(c.address, flush=True)
sys.stdin.read()
c.shutdown()
"""


def config(root: Path, args) -> Path:
    """edgekit.yaml for Lite1's ONNX export, the photos, and the 24-candidate space (AdaRound and the
    activation range search off in every candidate: on one CPU they add two minutes to each Lite1
    build, docs/guide/quantize.md)."""
    m = zoo.MODELS[MODEL]
    text = f"""\
model:
  path: lite1/model.onnx
data:
  calibration: calib
  calib_size: {args.calib}
  evaluation: eval
  eval_size: {args.eval}
  preprocess: {{resize: {m.resize}, mean: {list(m.mean)}, std: {list(m.std)}}}
variants:
  fp32: []
targets:
  - name: cpu
    variants: [fp32]
search:
  target: cpu
  space:
    precision: [int8]
    int8.calibration: [minmax, percentile, mse]
    int8.per_channel: [true, false]
    int8.bias_correction: [true, false]
    int8.adaround: [false]
    int8.range_search: [false]
    runtime: [ort, openvino]
  objectives: [accuracy, size]
  eval_share: {args.share}
"""
    path = root / "edgekit.yaml"
    path.write_text(text)
    return path


def preprocess_args() -> list[str]:
    """The photo preprocessing of Lite1's weights, as CLI options (the ONNX export has its shape)."""
    return zoo.cli_args(MODEL)[4:]  # past --arch and --input-shape


def _cores(nodes: int) -> dict:
    """Popen options that keep a process and its children to NODES cores (and ONNX Runtime's threads
    to one where that is one core): a 1-node run is a one-CPU machine, the driver's work included."""
    cpus = sorted(os.sched_getaffinity(0))[:nodes]
    env = ENV if nodes > 1 else {**ENV, "EDGEKIT_THREADS": "1"}
    return {"env": env, "preexec_fn": lambda: os.sched_setaffinity(0, cpus)}


def _cli(*args, cwd: Path, nodes: int) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "edgekit"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        **_cores(nodes),
    )
    if proc.returncode:
        raise SystemExit(f"edgekit {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc


def on_cluster(root: Path, nodes: int, cfg: Path) -> dict:
    """The search and one sensitivity pass on a local cluster of NODES one-CPU nodes."""
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER, str(nodes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **_cores(nodes),
    )
    address = cluster.stdout.readline().strip()
    try:
        load = os.getloadavg()[0]
        out = root / f"search-{nodes}"
        search_s, _ = _cli("search", cfg, "-o", out, "--ray-address", address, cwd=root, nodes=nodes)
        records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        sens_args = (
            "sensitivity", root / "lite1" / "model.onnx", *preprocess_args(), "--calib", root / "calib",
            "--calib-size", cfg_value(cfg, "calib_size"), "--eval", root / "eval",
            "--eval-size", cfg_value(cfg, "eval_size"), "--json", root / f"sensitivity-{nodes}.json",
        )  # fmt: skip
        sensitivity_s, _ = _cli(*sens_args, "--ray-address", address, cwd=root, nodes=nodes)
        table = json.loads((root / f"sensitivity-{nodes}.json").read_text())
    finally:
        cluster.stdin.close()
        cluster.wait(timeout=120)
    ok = [r for r in records if r["status"] == "ok"]
    return {
        "nodes": nodes,
        "search_s": search_s,
        "candidates": len(records),
        "scored": len(ok),
        "nodes_used": len({r["build_node"] for r in ok} | {n for r in ok for n in r["eval_nodes"]}),
        "candidate_s": [r["seconds"] for r in ok],
        "sensitivity_s": sensitivity_s,
        "layers": len(table["layers"]),
        "ranking": [r["node"] for r in table["layers"]],
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def cfg_value(cfg: Path, key: str) -> str:
    import yaml

    return str(yaml.safe_load(cfg.read_text())["data"][key])


def estimate(r: dict, args) -> dict:
    """A 500-candidate search with 50,000 evaluation images on 32 nodes of C CPUs, from the 1-node
    run: each candidate's build (its seconds less its evaluation) plus its evaluation scaled by
    images, all spread over the cluster's CPUs (the candidates are independent)."""
    one = r["runs"][0]
    per_candidate = sorted(one["candidate_s"])[len(one["candidate_s"]) // 2]
    eval_per_image = r["eval_per_image_s"]
    build = max(0.0, per_candidate - eval_per_image * args.eval)
    cpus = 32 * args.cpus_per_node
    work = 500 * (build + 50_000 * eval_per_image)
    return {
        "per_candidate_build_s": build,
        "eval_per_image_s": eval_per_image,
        "cpus": cpus,
        "one_cpu_hours": work / 3600,
        "cluster_hours": work / cpus / 3600,
    }


def eval_per_image(root: Path, args) -> float:
    """Seconds one CPU takes to score one evaluation image with an INT8 Lite1 (one ORT thread)."""
    from edgekit.artifact import read_manifest
    from edgekit.data import load_samples, recorded_preprocess
    from edgekit.runtimes import ort

    art = next((root / "search-1" / "candidates").iterdir())
    manifest = read_manifest(art)
    evals = load_samples(
        str(root / "eval"), manifest.input_spec, args.eval, recorded_preprocess(manifest), 0, "eval"
    )
    sess = ort.load(str(art / manifest.model_file), "cpu", ort.Options(threads=1))
    x = {k: v[:16] for k, v in evals.inputs.items()}
    sess.run(x)
    start = time.perf_counter()
    sess.run(x)
    return (time.perf_counter() - start) / 16


def _row(what: str, one: float, two: float) -> str:
    return f"| {what} | {one:.0f} | {two:.0f} | {one / two:.2f}x |"


def markdown(r: dict) -> str:
    a, (one, two), e = r["args"], r["runs"], r["estimate"]
    summed, busy = sum(one["candidate_s"]), sum(two["candidate_s"])
    return f"""<!-- search_scaling:start -->
## `edgekit search` and `edgekit sensitivity` on 1 vs 2 Ray nodes (EfficientNet-Lite1)

`bench/search_scaling.py`: EfficientNet-Lite1 (published weights), {a["calib"]} calibration and
{a["eval"]} evaluation photo crops, its ONNX export searched: a grid of {one["candidates"] - 1} INT8
candidates (calibration minmax / percentile / mse x per-channel or not x bias correction or not x ORT or
OpenVINO; AdaRound and the activation range search off, which add two minutes to a Lite1 build on one
CPU) and the fp32 baseline, objectives accuracy and size, evaluation shards of {a["share"]}; then one
`edgekit sensitivity` pass ({one["layers"]} layers, every default on: the driver calibrates, solves
AdaRound and searches the ranges once, and hands that calibration to every worker). Local clusters
made by Ray's multi-node test utility, one CPU per node, through the CLI's `--ray-address`; the
1-node run is a one-CPU machine (the cluster and the CLI pinned to one core, EDGEKIT_THREADS=1: the
driver's own work too), the 2-node run has both cores.
CPU: {cpu_line(r["host"])}, {r["host"].get("cores", "?")} cores.
Load average: {one["load_before"]:.1f} to {one["load_after"]:.1f} (1 node), {two["load_before"]:.1f} to
{two["load_after"]:.1f} (2 nodes).

| | 1 node | 2 nodes | speed-up |
|---|---:|---:|---:|
{_row(f"search: {one['candidates']} candidates built and scored (s)", one["search_s"], two["search_s"])}
| search: candidates' seconds from build to score (CPU waits included), summed | {summed:.0f} | {busy:.0f} | |
{_row(f"sensitivity: {one['layers']} layer trials (s)", one["sensitivity_s"], two["sensitivity_s"])}

Both nodes ran trials in the 2-node search ({two["nodes_used"]} nodes used); the sensitivity ranking
was {"identical" if one["ranking"] == two["ranking"] else "DIFFERENT"} on 1 and 2 nodes. The wall times
include Ray's start, the driver's export of the fp32 model and each worker's imports; the timing phase
of a search (one candidate at a time on the one device) is not in them.

Estimate, from these costs (median candidate {e["per_candidate_build_s"]:.0f} s to build on one CPU,
{1000 * e["eval_per_image_s"]:.1f} ms a Lite1 INT8 image on one thread): a 500-candidate search with
ImageNet-val-size evaluation (50,000 images) is {e["one_cpu_hours"]:.0f} CPU-hours, about
{e["cluster_hours"]:.1f} h on 32 nodes of {a["cpus_per_node"]} CPUs ({e["cpus"]} workers), the candidates
being independent; plus the survivors' timing, one at a time on the device (docs/guide/search.md).
<!-- search_scaling:end -->"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--share", type=int, default=32, help="evaluation samples per Ray task")
    p.add_argument("--cpus-per-node", type=int, default=16, help="of the estimated 32-node cluster")
    p.add_argument("--work", type=Path, help="keep the photos and artifacts here (default: a temporary one)")
    p.add_argument("--rewrite", action="store_true", help="only rewrite BENCHMARKS.md from the saved results")
    args = p.parse_args()
    out = ROOT / "bench" / "results" / "search_scaling.json"
    if args.rewrite:
        write_section("search_scaling", markdown(json.loads(out.read_text())))
        return
    fp = host()
    print(cpu_line(fp))
    with tempfile.TemporaryDirectory(prefix="edgekit-searchscaling-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        zoo.write_image_folder(root / "calib", args.calib + 100, seed=0)  # + compress's held-out 100
        zoo.write_image_folder(root / "eval", args.eval, seed=1)
        zoo.write_state_dicts(root, [MODEL])
        if not (root / "lite1" / "model.onnx").is_file():
            export = ("export", root / f"{MODEL}.pt", *zoo.cli_args(MODEL), "-o", root / "lite1")
            _cli(*export, cwd=root, nodes=2)
        cfg = config(root, args)
        runs = []
        for nodes in (1, 2):
            runs.append(on_cluster(root, nodes, cfg))
            print({k: v for k, v in runs[-1].items() if k not in ("candidate_s", "ranking")})
        result = {
            "host": fp,
            "args": vars(args) | {"work": None},
            "runs": runs,
            "eval_per_image_s": eval_per_image(root, args),
        }
    result["estimate"] = estimate(result, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_section("search_scaling", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
