"""The pass table (edgekit.passes): one name and one config class per pass, reached alike from
`compress`'s flags and from edgekit.yaml; chains checked before anything runs, run in the order
written, each pass recorded in the manifest under its table name; docs/guide/passes.md current."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from edgekit import passes
from edgekit.compress.quantize import Int8Config
from edgekit.errors import EdgekitError
from edgekit.passes import PASSES, Step

ARCH = "edgekit.demo:digits_net"  # the .pt2 keeps the weights; pruning needs the eager layers

# compress's flags for each pass it takes (the other options at their defaults)
FLAGS = {
    "prune": ["--prune", "0.5"],
    "finetune": ["--prune", "0.5", "--finetune", "calib.npz"],
    "sparsity": ["--sparsity", "2:4"],
    "int8": ["--int8"],
    "mixed": ["--int8", "--max-accuracy-drop", "1"],
    "fp16": ["--fp16"],
    "bf16": ["--bf16"],
}

# an edgekit.yaml variant holding each pass, with the one it needs before it
YAML = {
    "prune": [{"prune": {"ratio": 0.5}}],
    "finetune": [{"prune": {"ratio": 0.5}}, {"finetune": {"data": "calib.npz", "epochs": 1}}],
    "sparsity": ["sparsity: '2:4'"],
    "int8": ["int8"],
    "mixed": ["int8", {"mixed": {"max_accuracy_drop": 1}}],
    "fp16": [{"fp16": None}],
    "bf16": ["bf16"],
    "build": [{"build": {"target": "openvino"}}],
}


def _steps(*names: str) -> list[Step]:
    return [Step(n, None) for n in names]


REFUSED = [
    (("int8", "prune"), ("prune", "int8", "write prune before int8")),
    (("fp16", "sparsity"), ("sparsity", "fp16", "write sparsity before fp16")),
    (("build", "int8"), ("build", "int8", "write int8 before build")),
    (("int8", "fp16"), ("int8", "fp16", "alternatives")),
    (("int8", "bf16"), ("int8", "bf16", "alternatives")),
    (("fp16", "bf16"), ("fp16", "bf16", "alternatives")),
    (("mixed",), ("mixed", "add int8 before mixed")),
    (("mixed", "int8"), ("mixed", "int8", "write int8 before mixed")),
    (("finetune",), ("finetune", "add prune before finetune")),
    (("finetune", "prune"), ("finetune", "prune", "write prune before finetune")),
    (("int8", "int8"), ("int8", "twice")),
]


@pytest.mark.parametrize(("names", "words"), REFUSED, ids=["-".join(names) for names, _ in REFUSED])
def test_chain_check_refuses_an_order_that_cannot_run(names, words):
    with pytest.raises(EdgekitError) as refused:
        passes.check(_steps(*names))
    message = str(refused.value)
    assert refused.value.exit_code == 2 and message.endswith(".") and ". " not in message
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    "names",
    [
        (),
        ("prune", "finetune", "sparsity", "int8", "mixed", "build"),
        ("sparsity", "fp16"),
        ("bf16", "build"),
    ],
)
def test_chain_check_accepts_an_order_that_runs(names):
    passes.check(_steps(*names))


def test_compress_flags_run_in_one_fixed_order():
    """Whatever order the flags are given in, the chain is prune, finetune, sparsity, then ONNX."""
    configs = {name: object() for name in reversed(passes.FLAG_ORDER)}
    assert [s.name for s in passes.from_flags(**configs)] == list(passes.FLAG_ORDER)
    assert set(passes.FLAG_ORDER) == set(PASSES) - {"export", "build"}


def test_every_pass_is_reached_from_the_cli_with_the_table_config_class(monkeypatch, tmp_path):
    """For each pass compress takes, its flags build a step whose config is the table's class; the
    implicit export's config is the table's too."""
    from click.testing import CliRunner

    from edgekit import cli, pipeline

    seen = []

    def stop(req):
        seen.append(req)
        raise EdgekitError("stopped before any work.")

    monkeypatch.setattr(pipeline, "compress", stop)
    assert set(FLAGS) == set(passes.FLAG_ORDER)
    for name, flags in FLAGS.items():
        args = ["compress", "model.pt2", "-o", str(tmp_path / "out"), "--calib", "random", *flags]
        result = CliRunner().invoke(cli.cli, args)
        assert "stopped before any work" in result.output, (name, result.output)
        steps = {s.name: s.config for s in seen[-1].chain}
        assert type(steps[name]) is PASSES[name].config, name
        assert isinstance(seen[-1].export, PASSES["export"].config)


def test_the_build_command_runs_the_table_build_step(monkeypatch, tmp_path):
    """`edgekit build`'s options become the table's BuildConfig, TensorRT's workspace and batch
    profile included, as an edgekit.yaml build step does."""
    from click.testing import CliRunner

    from edgekit import build, cli

    seen = []

    def stop(req):
        seen.append(req)
        raise EdgekitError("stopped before any work.")

    monkeypatch.setattr(build, "build", stop)
    args = ["build", str(tmp_path), "-o", str(tmp_path / "o"), "--target", "tensorrt", "--precision", "int8"]
    result = CliRunner().invoke(cli.cli, [*args, "--workspace", "512M", "--max-batch", "4"])
    assert "stopped before any work" in result.output, result.output
    cfg = seen[-1].config
    assert type(cfg) is PASSES["build"].config
    assert (cfg.target, cfg.precision, cfg.workspace, cfg.max_batch) == ("tensorrt", "int8", "512M", 4)
    assert cfg == passes.config("build", target="tensorrt", precision="int8", workspace="512M", max_batch=4)


def test_every_pass_is_reached_from_the_yaml_with_the_table_config_class(tmp_path):
    """For each pass of the table (but the implicit export), an edgekit.yaml step whose config is
    the table's class, as `edgekit run` hands it to the chain."""
    from edgekit.config import load

    for name in ("model.pt2", "calib.npz"):
        (tmp_path / name).write_bytes(b"")
    assert set(YAML) == set(PASSES) - {"export"}
    variants = {name: [yaml.safe_load(p) if isinstance(p, str) else p for p in v] for name, v in YAML.items()}
    config = {
        "model": {"path": "model.pt2", "arch": ARCH},
        "data": {"calibration": "calib.npz"},
        "variants": variants,
        "targets": [{"name": "cpu", "variants": list(variants)}],
    }
    (tmp_path / "edgekit.yaml").write_text(yaml.safe_dump(config))
    cfg = load(tmp_path / "edgekit.yaml")
    for name in YAML:
        steps = {s.name: s.config for s in cfg.chain(name)}
        assert type(steps[name]) is PASSES[name].config, name
    assert cfg.chain("finetune")[1].config.data == str(tmp_path / "calib.npz")  # relative to the file


def test_yaml_mixed_keeps_its_own_runtime(tmp_path):
    """A YAML `mixed: {runtime: openvino}` reaches the pass as written (the CLI's target used to win)."""
    from edgekit.config import load
    from edgekit.run import _compress_request

    for name in ("model.pt2", "calib.npz", "test.npz"):
        (tmp_path / name).write_bytes(b"")
    config = {
        "model": {"path": "model.pt2"},
        "data": {"calibration": "calib.npz", "evaluation": "test.npz"},
        "variants": {"mixed": ["int8", {"mixed": {"max_accuracy_drop": 1, "runtime": "openvino"}}]},
        "targets": [{"name": "cpu", "variants": ["mixed"]}],
    }
    (tmp_path / "edgekit.yaml").write_text(yaml.safe_dump(config))
    cfg = load(tmp_path / "edgekit.yaml")
    req = _compress_request(cfg, tmp_path / "model.pt2", cfg.chain("mixed"))
    assert [s.name for s in req.chain] == ["int8", "mixed"] and req.chain[1].config.runtime == "openvino"


def test_failure_names_the_pass_and_the_passes_before_it(tiny, tmp_path, monkeypatch):
    """An int8 failure after the export says so, keeps its sentence and exit code, writes nothing."""
    from edgekit.model import LoadOptions
    from edgekit.pipeline import CompressRequest, compress

    def fail(work, cfg):
        raise EdgekitError("the calibration ranges are empty.")

    monkeypatch.setitem(PASSES, "int8", dataclasses.replace(PASSES["int8"], run=fail))
    out = tmp_path / "out"
    req = CompressRequest(
        model=tiny / "model.ts.pt",
        out=out,
        load=LoadOptions(input_shapes=[[1, 1, 16, 16]]),
        chain=[Step("int8", Int8Config())],
        calib="random",
    )
    with pytest.raises(EdgekitError) as failed:
        compress(req)
    assert str(failed.value) == "int8 (after export): the calibration ranges are empty."
    assert failed.value.exit_code == 2 and not out.exists()


def test_manifest_names_each_pass_by_its_table_name(edgekit, tiny, work):
    """compress's records: prune, sparsity, the export (saying it exported) and int8, in that order,
    each config carrying its version."""
    out = work / "out"
    r = edgekit(
        "compress", "weights.pt", "--arch", "tinynet:net", "--input-shape", "1,1,16,16", "--prune", "0.5",
        "--sparsity", "0.5", "--int8", "--calib", "random", "-o", out, cwd=tiny,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = json.loads((out / "edgekit.json").read_text())["passes"]
    assert [p["name"] for p in records] == ["prune", "sparsity", "export", "int8"]
    assert all(p["name"] in PASSES for p in records)
    assert "exported" in records[2]["summary"]
    assert all(p["config"]["version"] == 1 for p in records if p["name"] != "export")


def test_onnx_source_is_recorded_as_imported(edgekit, tiny, work):
    fp32 = work / "fp32"
    r = edgekit("export", tiny / "model.ts.pt", "--input-shape", "1,1,16,16", "-o", fp32)
    assert r.returncode == 0, r.stderr
    r = edgekit("compress", fp32 / "model.onnx", "--fp16", "--calib", "random", "-o", work / "fp16")
    assert r.returncode == 0, r.stderr
    records = json.loads((work / "fp16" / "edgekit.json").read_text())["passes"]
    assert [p["name"] for p in records] == ["export", "fp16"] and "imported" in records[0]["summary"]


def _run_config(root: Path, digits, variant: list) -> Path:
    config = {
        "model": {"path": str(digits.model), "arch": ARCH},
        # min_fidelity 0: unrecovered pruning is below the fidelity floors; these tests are about order
        "data": {
            "calibration": str(digits.calib),
            "calib_size": 32,
            "evaluation": str(digits.test),
            "min_fidelity": 0,
        },
        "variants": {"small": variant},
        "targets": [{"name": "cpu", "variants": ["small"], "seconds": 0.3, "rounds": 3, "warmup": 1}],
    }
    path = root / "edgekit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
def test_yaml_prune_then_int8_runs_in_that_order(edgekit, digits, tmp_path):
    config = _run_config(tmp_path, digits, [{"prune": {"ratio": 0.25}}, {"int8": {"calibration": "minmax"}}])
    r = edgekit("run", config, "-o", tmp_path / "results", "--cache", tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    stage = json.loads((tmp_path / "results" / "verdict.json").read_text())["stages"][0]
    records = json.loads((Path(stage["artifact"]) / "edgekit.json").read_text())["passes"]
    assert [p["name"] for p in records] == ["prune", "export", "int8"]


def test_yaml_int8_then_prune_is_refused_naming_both(edgekit, digits, tmp_path):
    """Before anything runs: exit 2, one sentence naming both steps and the order that works."""
    config = _run_config(tmp_path, digits, ["int8", {"prune": {"ratio": 0.25}}])
    r = edgekit("run", config, "-o", tmp_path / "results", "--cache", tmp_path / "cache")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: ") and "Traceback" not in r.stderr
    assert "prune" in lines[0] and "int8" in lines[0] and "write prune before int8" in lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_passes_page_is_current():
    """docs/guide/passes.md is what `python -m edgekit.passes` writes from the table."""
    assert passes.DOC.read_text() == passes.markdown(), "run `python -m edgekit.passes` and commit the page"
