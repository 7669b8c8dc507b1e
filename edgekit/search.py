"""`edgekit search`: the latency / accuracy / size Pareto front of the compression configs that
edgekit.yaml's `search:` section names, built and scored on Ray, timed on the target device.

Ray Tune drives the search (a grid, or Optuna's sampler on accuracy and size); each trial builds its
candidate as a Ray task on any node (edgekit.candidates), scores it on the evaluation samples split
into shards of `eval_share` samples, each a task, whose outputs are concatenated in order and judged
once (so a split evaluation equals the whole one exactly), and hands the artifact and its record to
one writer on this machine: OUT/candidates/NAME and a line of OUT/results.jsonl, written as each
candidate finishes. A rerun skips every candidate already there, so Ctrl-C loses only the unfinished
ones. Then the candidates that meet the constraints are timed on the target, one at a time (the
device is a Ray resource of capacity 1), interleaved with the fp32 baseline, and the front is
printed and written to OUT/search.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import candidates, cluster, interrupts, pareto
from edgekit import search_space as space
from edgekit.artifact import read_manifest, write_atomic
from edgekit.benchmarks.metrics import main_number
from edgekit.config import Config, Target
from edgekit.data import Samples
from edgekit.errors import EdgekitError

RESULTS, SUMMARY, ARTIFACTS = "results.jsonl", "search.json", "candidates"
INPUTS = "inputs.json"  # what the results were measured from: a rerun resumes only from the same


class Interrupted(EdgekitError):
    """Ctrl-C during the search: the finished candidates are kept for a rerun."""

    exit_code = 130


class Incomplete(EdgekitError):
    """Trials that failed past their retries: the rest is kept for a rerun."""

    exit_code = 1


@dataclass
class SearchOptions:
    out: Path
    ray_address: str | None = None  # None: a local Ray on this machine


def accuracy_loss(q: dict) -> tuple[float, str]:
    """The accuracy objective, minimized: points of top-1 lost (labels), else points of the first
    output's main fidelity lost (top-1 agreement, mean cosine, ...), else its SQNR negated."""
    if "drop_points" in q:
        return float(q["drop_points"]), "points of top-1 accuracy lost"
    first = q["fidelity"]["output_0"]
    if (main := main_number(first)) is not None:
        key, shown = main
        return 100 * (1 - float(first[key])), f"points of {shown} lost"
    return -float(first["sqnr_db"]), "SQNR in dB, negated"


def read_results(out: Path) -> dict[str, dict]:
    """The records of finished candidates in OUT (by key); a torn last line (killed mid-write) is
    dropped, so that candidate runs again."""
    path = out / RESULTS
    records = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (out / ARTIFACTS / r["name"]).is_dir() or r["status"] != "ok":
                records[r["key"]] = r
    return records


def read_summary(path: Path) -> dict:
    """An `edgekit search` summary (search.json), or one sentence saying what it is not."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgekitError(f"{path} cannot be read as an edgekit search summary ({e}).") from None
    if not isinstance(summary, dict) or summary.get("kind") != "edgekit search":
        raise EdgekitError(f"{path} is not an edgekit search summary (search.json).")
    return summary


def sampled(out: Path) -> int:
    """Trials Optuna's sampler ran in OUT (a line each, a chain it proposed again included)."""
    path = out / RESULTS
    count = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            count += bool(json.loads(line).get("point"))
        except json.JSONDecodeError:
            continue
    return count


class _Store:
    """The one writer of OUT (a Ray actor on this machine): a candidate's artifact directory
    (written whole, then renamed) and then its line of results.jsonl."""

    def __init__(self, out: str):
        self.out = Path(out)
        (self.out / ARTIFACTS).mkdir(parents=True, exist_ok=True)
        for torn in (self.out / ARTIFACTS).glob(".staging-*"):  # a run killed while writing one
            shutil.rmtree(torn, ignore_errors=True)

    def lookup(self, key: str) -> dict | None:
        return read_results(self.out).get(key)

    def keep(self, record: dict, artifact: bytes | None) -> dict:
        interrupts.check()
        if artifact is not None:
            final = self.out / ARTIFACTS / record["name"]
            if not final.is_dir():
                staged = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.out / ARTIFACTS))
                candidates.unpack(artifact, staged)
                os.replace(staged, final)
        with open(self.out / RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record


def run(cfg: Config, opts: SearchOptions, say: Callable[[str], None] = print) -> dict:
    """Search, time the survivors, and write OUT/search.json; returns it."""
    s = cfg.search
    if s is None:
        raise EdgekitError("the config has no search: section; add one (docs/guide/search.md).")
    if not cfg.data.evaluation:
        raise EdgekitError("search scores every candidate on data.evaluation; add it to the config.")
    target = next(t for t in cfg.targets if t.name == s.target)
    plan = _plan(cfg, target.runtime)
    done = read_results(opts.out)
    source, evals, fixed = _data(cfg)
    inputs = _inputs(opts.out, source, evals, target)
    try:
        with cluster.connect(opts.ray_address, (target.name,)) as ray:
            write_atomic(opts.out / INPUTS, json.dumps(inputs, indent=1))
            return _search(ray, cfg, target, opts, plan, done, source, evals, fixed, say)
    except KeyboardInterrupt as e:
        if type(e) is not KeyboardInterrupt:  # SIGTERM: the CLI's own exit
            raise
        raise Interrupted(_interrupted(opts.out, len(plan))) from None


def _search(ray, cfg: Config, target: Target, opts: SearchOptions, plan, done, source, evals, fixed, say):
    """`run` once Ray is up: the baseline, the trials, the timing and the front."""
    s = cfg.search
    planned = f"{len(plan)} candidates planned" if plan else f"{s.samples} candidates to sample (optuna)"
    before = sum(1 for k in plan if k in done) if plan else sampled(opts.out)
    where = f"Ray: {cluster.nodes(ray)} node(s), {cluster.cpus(ray)} CPU(s)"
    say(f"{where}; {planned}, {before} finished before")
    start = time.perf_counter()
    ctx = _Context.start(ray, opts.out, source, evals, fixed, s.eval_share, cfg)
    baseline = _baseline(ctx, target.runtime, done)
    ctx.reference = ray.put(baseline["outputs"])
    fp32 = ctx.out / ARTIFACTS / baseline["record"]["name"]
    kinds, evals = judged(fp32 / read_manifest(fp32).model_file, ctx.judge["kinds"], ray.get(ctx.evals))
    ctx.judge, ctx.evals = {**ctx.judge, "kinds": kinds}, ray.put(evals)
    _tune(ray, ctx, cfg, plan)
    done = read_results(opts.out)
    say(f"built and scored {len(done)} candidates in {time.perf_counter() - start:.0f} s")
    if lost := [k for k in plan if k not in done]:  # a trial that failed past its retries
        raise Incomplete(
            f"{len(lost)} of {len(plan)} candidates failed past their retries (a node lost?); run the "
            "same command again to retry only those."
        )
    return _finish(ray, cfg, target, opts.out, done, baseline["record"], say)


def _inputs(out: Path, source: candidates.Source, evals, target: Target) -> dict:
    """What OUT's results are measured from (model, calibration and evaluation data, how the model
    loads and is judged, the target); one sentence where OUT holds results of other inputs."""
    import hashlib

    digest = hashlib.sha256()
    for part in (
        source.model,
        source.calib,
        *(np.ascontiguousarray(v).tobytes() for v in evals.inputs.values()),
    ):
        digest.update(hashlib.sha256(part).digest())
    labels = None if evals.labels is None else hashlib.sha256(evals.labels.tobytes()).hexdigest()
    judged = {"kinds": source.output_kinds, "metric": source.metric, "calib_size": source.calib_size}
    now = {
        "data": digest.hexdigest(),
        "labels": labels,
        "load": source.load.model_dump(mode="json"),
        "judged": judged,
        "target": target.model_dump(mode="json"),
    }
    path = out / INPUTS
    if path.is_file() and json.loads(path.read_text()) != now:
        raise EdgekitError(
            f"{out} holds a search of another model, data or target (its {INPUTS} differs); give another "
            "-o, or delete it to start over."
        )
    return now


def _plan(cfg: Config, runtime: str) -> dict[str, dict]:
    """The grid's candidates by key (points that run the same chain are one), each with its point;
    for Optuna, none up front (the sampler proposes them)."""
    s = cfg.search
    if s.algorithm != "grid":
        return {}
    base = _base(cfg)
    plan = {}
    for point in space.grid(s):
        chain, rt = space.chain_of(base, point), space.runtime_of(point, runtime)
        plan.setdefault(space.key(chain, rt), point)
    return plan


def _base(cfg: Config) -> list:
    """The steps the space edits: the base variant's, without its build (candidates run ONNX)."""
    return [st for st in (cfg.chain(cfg.search.base) if cfg.search.base else []) if st.name != "build"]


def _data(cfg: Config):
    """The build source (model bytes, calibration samples as .npz) and the evaluation samples."""
    from edgekit.data import Preprocess, load_samples
    from edgekit.model import load_model

    model = Path(cfg.resolve(cfg.model.path))
    load = cfg.model.load_options()
    spec = load_model(model, load).input_spec
    d, pre = cfg.data, cfg.data.preprocess
    preprocess = Preprocess(**{**pre.model_dump(), "mean": tuple(pre.mean), "std": tuple(pre.std)})
    calib = b""
    if d.calibration:
        # the samples `edgekit run` calibrates that chain on (it passes the evaluation data too, so
        # none are held out): --apply's variant is the candidate the search measured
        samples = load_samples(
            cfg.resolve(d.calibration), spec, d.calib_size, preprocess, 0, "calib", d.constants
        )
        calib = candidates.npz_bytes(samples)
    evals = load_samples(cfg.resolve(d.evaluation), spec, d.eval_size, preprocess, 0, "eval", d.constants)
    source = candidates.Source(
        model.name,
        model.read_bytes(),
        load,
        calib,
        d.calib_size,
        dict(d.output_kinds),
        d.metric,
        candidates.npz_bytes(evals),
    )
    return source, evals, spec.fixed_batch


@dataclass
class _Context:
    """What every trial shares: object-store references and the writer."""

    out: Path
    source: object  # ObjectRef of candidates.Source
    shards: list  # ObjectRefs of the evaluation inputs, eval_share samples each
    evals: object  # ObjectRef of the evaluation Samples (labels, for judging)
    store: object  # the _Store actor
    fixed: int | None
    judge: dict  # names, output kinds, metric
    target_cpu: object
    reference: object = None  # ObjectRef of the fp32 outputs

    @classmethod
    def start(cls, ray, out, source, evals, fixed, share, cfg) -> _Context:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from edgekit.target_cpu import resolve

        shards = [ray.put(s) for s in eval_shards(evals, share)]
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        store = ray.remote(_Store).options(num_cpus=0, scheduling_strategy=here).remote(str(out.absolute()))
        judge = {"kinds": dict(cfg.data.output_kinds), "metric": cfg.data.metric}
        return cls(out, ray.put(source), shards, ray.put(evals), store, fixed, judge, resolve())


def eval_shards(evals: Samples, share: int) -> list[dict]:
    """EVALS' inputs in slices of SHARE samples, each keeping where every input's batch axis is in
    the model's feeds (a state batched on axis 1 had been fed samples first)."""
    return [evals.take(slice(i, i + share)).inputs for i in range(0, len(evals), share)]


def _evaluate(ctx: _Context, chain: list, runtime: str, point: dict) -> dict:
    """Build CHAIN, score it shard by shard, and keep it: its record (status ok, failed or invalid)."""
    import ray

    from edgekit.evaluate import quality

    key = space.key(chain, runtime)
    if (known := ray.get(ctx.store.lookup.remote(key))) is not None:
        # Optuna proposed a chain that ran before: a trial all the same, kept as a line of its own
        return ray.get(ctx.store.keep.remote({**known, "point": point, "again": True}, None))
    record = {
        "key": key,
        "name": space.name(key),
        "point": point,
        "chain": [[st.name, st.config.model_dump(mode="json", exclude_defaults=True)] for st in chain],
        "description": space.describe(chain, runtime),
        "runtime": runtime,
    }
    if why := space.problem(chain, runtime):
        return ray.get(ctx.store.keep.remote({**record, "status": "invalid", "why": why}, None))
    start = time.perf_counter()
    # DEFAULT: anywhere in the cluster, not in the trial's placement group (which holds no CPU)
    build = ray.remote(_build).options(num_cpus=1, max_retries=3, scheduling_strategy="DEFAULT")
    built = ray.get(build.remote(ctx.source, chain, ctx.target_cpu))
    if "error" in built:
        return ray.get(ctx.store.keep.remote({**record, "status": "failed", "why": built["error"]}, None))
    artifact = ray.put(built["artifact"])
    scored = _scored(ctx, artifact, runtime)
    if "error" in scored:  # the runtime cannot run it (OpenVINO refusing an op): a failed candidate
        return ray.get(ctx.store.keep.remote({**record, "status": "failed", "why": scored["error"]}, None))
    outs, names, nodes = scored["outputs"], scored["names"], scored["nodes"]
    evals, ref = ray.get(ctx.evals), ray.get(ctx.reference) if ctx.reference is not None else outs
    q = quality(ref, outs, evals, "eval", names, ctx.judge["kinds"], ctx.judge["metric"])
    loss, what = accuracy_loss(q)
    record.update(
        status="ok",
        quality=q,
        accuracy_loss=loss,
        accuracy_metric=what,
        size_mb=built["size_bytes"] / 1e6,
        build_node=built["node"],
        eval_nodes=nodes,
        eval_shards=len(ctx.shards),
        seconds=time.perf_counter() - start,
    )
    kept = ray.get(ctx.store.keep.remote(record, artifact))
    return {**kept, "outputs": outs} if ctx.reference is None else kept


def _scored(ctx: _Context, artifact, runtime: str) -> dict:
    """The artifact's outputs on every evaluation shard, each shard a Ray task, concatenated in
    order (so the whole equals one unsplit evaluation); its output names; the nodes that ran them.
    Or the error of a shard the runtime could not run."""
    import ray

    shard = ray.remote(_shard_outputs).options(num_cpus=1, max_retries=3, scheduling_strategy="DEFAULT")
    parts = ray.get([shard.remote(artifact, runtime, s) for s in ctx.shards])
    if failed := next((p for p in parts if "error" in p), None):
        return {"error": failed["error"]}
    outs = [np.concatenate([p["outputs"][i] for p in parts]) for i in range(len(parts[0]["outputs"]))]
    return {"outputs": outs, "names": parts[0]["names"], "nodes": sorted({p["node"] for p in parts})}


def _build(source, chain: list, target_cpu) -> dict:
    """candidates.build, with the node that built it (a Ray task)."""
    import ray

    return {**candidates.build(source, chain, target_cpu), "node": ray.get_runtime_context().get_node_id()}


def _shard_outputs(artifact: bytes, runtime: str, inputs: dict) -> dict:
    """One evaluation shard's outputs, with the node that computed them (a Ray task)."""
    import ray

    from edgekit.runtimes.ort import threads

    return {
        **candidates.outputs(artifact, runtime, inputs, threads(0)),
        "node": ray.get_runtime_context().get_node_id(),
    }


def _baseline(ctx: _Context, runtime: str, done: dict) -> dict:
    """The fp32 model in the target's runtime: built and scored first, its outputs the reference
    every candidate is judged against."""
    key = space.key([], runtime)
    record = done.get(key) or _evaluate(ctx, [], runtime, {})
    if record.get("status") != "ok":
        raise EdgekitError(f"the fp32 model could not be built for the search: {record.get('why')}")
    if "outputs" not in record:  # finished before: its outputs again, from its artifact
        scored = _scored(ctx, candidates.pack(ctx.out / ARTIFACTS / record["name"]), runtime)
        record["outputs"] = scored["outputs"]  # it ran before, in this runtime
    return {"record": {k: v for k, v in record.items() if k != "outputs"}, "outputs": record["outputs"]}


def judged(model: Path, kinds: dict[str, str], evals: Samples) -> tuple[dict[str, str], Samples]:
    """What every candidate is judged by, as `compress` judges its model: each output by the kind
    the fp32 MODEL's graph gives it where the config's KINDS say nothing (a hidden state after a
    LayerNorm is an embedding, not class scores), and an output per token of EVALS only where the
    padding mask the graph names is 1 (edgekit.compress.output_kinds, padding_mask)."""
    from edgekit.compress import output_kinds, padding_mask

    padding_mask.annotate(model, evals)
    return output_kinds.graph_kinds(model, kinds), evals


def _tune(ray, ctx: _Context, cfg: Config, plan: dict) -> None:
    """Ray Tune over the candidates not finished before: a grid of them, or Optuna's sampler
    (told the finished ones' results, so a rerun continues its study)."""
    from ray import tune

    s = cfg.search
    target = next(t for t in cfg.targets if t.name == s.target)
    base = _base(cfg)

    def trainable(config: dict) -> dict:
        point = config.get("point", config)
        chain, rt = space.chain_of(base, point), space.runtime_of(point, target.runtime)
        r = _evaluate(ctx, chain, rt, point)
        ok = r["status"] == "ok"
        return {"accuracy_loss": r["accuracy_loss"] if ok else 1e9, "size_mb": r["size_mb"] if ok else 1e9}

    finished = read_results(ctx.out)  # the baseline included
    if s.algorithm == "grid":
        todo = [p for k, p in plan.items() if k not in finished]
        if not todo:
            return
        param_space, search_alg, samples = {"point": tune.grid_search(todo)}, None, 1
    else:
        samples = max(0, s.samples - sampled(ctx.out))
        if samples == 0:
            return
        search_alg = _optuna(s, [r for r in finished.values() if r["status"] == "ok" and r["point"]])
        param_space = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-tune-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 0, "memory": 2**20}),  # its tasks hold the CPUs
            param_space=param_space,
            # reuse_actors: a trial's actor serves the next trial (each new one paid a process start and
            # edgekit's imports, seconds a candidate on a small CPU)
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                num_samples=samples,
                max_concurrent_trials=cluster.cpus(ray),
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                storage_path=storage,
                name="search",
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=2),
            ),
        )
        tuner.fit()


def _interrupted(out: Path, planned: int) -> str:
    finished = len(read_results(out))
    of = f" of {planned}" if planned else ""
    return (
        f"search interrupted: {finished}{of} candidates finished and are kept in {out / RESULTS}; run the "
        "same command again to resume."
    )


def _optuna(s: space.SearchConfig, finished: list[dict]):
    """Optuna's sampler (seeded; multi-objective on accuracy loss and size) over the space, told the
    results of FINISHED candidates."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    def distribution(values):
        if isinstance(values, space.Range):
            return optuna.distributions.FloatDistribution(values.low, values.high, step=values.step)
        return optuna.distributions.CategoricalDistribution(values)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: distribution(v) for k, v in s.space.items()}
    searcher = OptunaSearch(
        dists,
        metric=["accuracy_loss", "size_mb"],
        mode=["min", "min"],
        seed=s.seed,
        points_to_evaluate=[r["point"] for r in finished] or None,
        evaluated_rewards=[[r["accuracy_loss"], r["size_mb"]] for r in finished] or None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=2)


def _finish(ray, cfg: Config, target: Target, out: Path, done: dict, baseline: dict, say) -> dict:
    """Constraints, timing of the survivors on the target, the front; OUT/search.json."""
    s = cfg.search
    c = s.constraints
    rows = []
    for r in sorted(done.values(), key=lambda r: r["name"]):
        why = r.get("why")
        if r["status"] == "ok":
            first = r["quality"]["fidelity"]["output_0"]
            main = first.get((main_number(first) or ("sqnr_db",))[0])
            if c.max_accuracy_drop is not None and r["accuracy_loss"] > c.max_accuracy_drop:
                why = f"accuracy loss {r['accuracy_loss']:.2f} > {c.max_accuracy_drop:g}"
            elif c.min_fidelity is not None and main < c.min_fidelity:
                why = f"fidelity {main:.4g} < {c.min_fidelity:g}"
            elif c.max_size_mb is not None and r["size_mb"] > c.max_size_mb:
                why = f"size {r['size_mb']:.2f} MB > {c.max_size_mb:g}"
        rows.append({**r, "meets_constraints": r["status"] == "ok" and why is None, "why": why})
    survivors = [r for r in rows if r["meets_constraints"]]
    if "latency" in s.objectives or c.max_latency_ms is not None:
        _time(ray, cfg, target, out, baseline, survivors, say)
        for r in survivors:
            lat = r.get("latency") or {}
            if "error" in lat:
                r["meets_constraints"], r["why"] = False, f"not timed: {lat['error']}"
            elif c.max_latency_ms is not None and lat["median_ms"] > c.max_latency_ms:
                r["meets_constraints"], r["why"] = (
                    False,
                    f"latency {lat['median_ms']:.2f} ms > {c.max_latency_ms:g}",
                )
    scored = {r["name"]: _objectives(r, s.objectives) for r in rows if r["meets_constraints"]}
    on_front = set(pareto.front(scored))
    for r in rows:
        r["on_front"] = r["name"] in on_front
    summary = {
        "kind": "edgekit search",
        "target": target.name,
        "objectives": {o: space.OBJECTIVES[o] for o in s.objectives},
        "constraints": c.model_dump(exclude_none=True),
        "algorithm": s.algorithm,
        "baseline": baseline["name"],
        "candidates": rows,
        "front": [r["name"] for r in rows if r["on_front"]],
    }
    write_atomic(out / SUMMARY, json.dumps(summary, indent=1, default=str))
    return summary


def _objectives(r: dict, objectives: list[str]) -> tuple[float, ...]:
    value = {
        "latency": lambda: r["latency"]["median_ms"],
        "accuracy": lambda: r["accuracy_loss"],
        "size": lambda: r["size_mb"],
    }
    return tuple(value[o]() for o in objectives)


def _time(ray, cfg: Config, target: Target, out: Path, baseline: dict, rows: list[dict], say) -> None:
    """Each of ROWS timed against the baseline on the target device, one at a time: a task that
    holds the device's resource (capacity 1), with the runtime's own threads, not a Ray task's."""
    from edgekit.run import target_bench

    bench = target_bench(cfg, target)
    rounds = cfg.search.timing_rounds or target.rounds
    device = {cluster.device_resource(target.name): 1}
    task = ray.remote(candidates.timed).options(
        num_cpus=0, resources=device, runtime_env={"env_vars": {cluster.THREADS: "0"}}
    )
    base = ray.put(candidates.pack(out / ARTIFACTS / baseline["name"]))
    say(f"timing {len(rows)} candidate(s) on {target.name}, one at a time, against {baseline['name']}")
    refs = [
        task.remote(
            base,
            candidates.pack(out / ARTIFACTS / r["name"]),
            bench,
            r["runtime"],
            rounds,
            target.host,
            target.remote_python,
        )
        for r in rows
    ]
    start = time.perf_counter()
    for r, lat in zip(rows, ray.get(refs), strict=True):
        r["latency"] = lat
    say(f"timed in {time.perf_counter() - start:.0f} s")


def print_front(summary: dict) -> None:
    """The candidates as a rich table, front first."""
    from rich.console import Console
    from rich.table import Table

    objectives = summary["objectives"]
    t = Table(title=f"edgekit search on {summary['target']}: Pareto front of {', '.join(objectives)}")
    for col in ("", "name", "chain", "accuracy loss", "size MB", "latency ms", "vs fp32", "why not"):
        t.add_column(
            col, justify="right" if col in ("accuracy loss", "size MB", "latency ms", "vs fp32") else "left"
        )
    rows = sorted(
        summary["candidates"], key=lambda r: (not r["on_front"], not r["meets_constraints"], r["name"])
    )
    for r in rows:
        lat = r.get("latency") or {}
        ratio = lat.get("ratio")
        t.add_row(
            "★" if r["on_front"] else "",
            r["name"],
            r["description"],
            "—" if r["status"] != "ok" else f"{r['accuracy_loss']:.2f}",
            "—" if r["status"] != "ok" else f"{r['size_mb']:.2f}",
            f"{lat['median_ms']:.2f}" if "median_ms" in lat else "—",
            f"{1 / ratio['median']:.2f}x [{1 / ratio['ci_high']:.2f}, {1 / ratio['ci_low']:.2f}]"
            if ratio
            else "—",
            r.get("why") or "",
        )
    first = next((r for r in summary["candidates"] if r["status"] == "ok"), None)
    metric = first["accuracy_metric"] if first else ""
    t.caption = (
        f"★ on the front; accuracy loss: {metric}; vs fp32: speed-up over {summary['baseline']} with its "
        "95 % interval"
    )
    Console().print(t)


def apply(config: Path, out: Path, name: str) -> str:
    """Write candidate NAME of the search in OUT into CONFIG as the variant NAME (inserted under
    `variants:`, the rest of the file, comments included, as it was); returns the YAML written."""
    import yaml

    from edgekit.config import load

    record = next((r for r in read_results(out).values() if r["name"] == name), None)
    if record is None or record["status"] != "ok":
        known = ", ".join(sorted(r["name"] for r in read_results(out).values() if r["status"] == "ok"))
        raise EdgekitError(
            f"--apply {name}: no scored candidate of that name in {out}; the candidates: {known}."
        )
    text = config.read_text()
    lines = text.splitlines(keepends=True)
    # `variants:` alone, or with a comment after it as `edgekit init` writes it
    at = next((i for i, line in enumerate(lines) if re.fullmatch(r"variants:\s*(#.*)?", line.rstrip())), None)
    steps = [{step: fields} if fields else step for step, fields in record["chain"]]
    entry = yaml.safe_dump({name: steps}, default_flow_style=None, sort_keys=False)
    if at is None:
        raise EdgekitError(
            f"--apply {name}: {config.name} has no block `variants:` line to add it under; add it "
            f"yourself:\n{entry}"
        )
    if name in load(config).variants:
        raise EdgekitError(f"--apply {name}: {config.name} already has a variant {name}.")
    indent = next(
        (
            len(ln) - len(ln.lstrip())
            for ln in lines[at + 1 :]
            if ln.strip() and not ln.lstrip().startswith("#")
        ),
        2,
    )
    block = "".join(" " * indent + ln + "\n" for ln in entry.splitlines())
    new = "".join([*lines[: at + 1], block, *lines[at + 1 :]])
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=config.parent, delete=False) as f:
        f.write(new)
    try:
        load(Path(f.name))
        interrupts.check()
        os.replace(f.name, config)
    finally:
        Path(f.name).unlink(missing_ok=True)
    return entry
