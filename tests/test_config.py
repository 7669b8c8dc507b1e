"""edgekit.yaml validation: every class of error is one sentence naming the key and its line, exit 2
through the real CLI; the `edgekit init` template and `edgekit schema` are valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.config import load
from edgekit.errors import EdgekitError

VALID = """\
model:
  path: model.pt2
data:
  calibration: calib.npz
  evaluation: test.npz
variants:
  fp32: []
  int8:
    - int8: {calibration: minmax}
targets:
  - name: cpu
    variants: [fp32, int8]
gates:
  - target: cpu
    variant: int8
    baseline: fp32
    min_speedup: 1.2
"""


@pytest.fixture
def project(tmp_path) -> Path:
    for name in ("model.pt2", "calib.npz", "test.npz"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def error(project: Path, text: str) -> str:
    path = project / "edgekit.yaml"
    path.write_text(text)
    with pytest.raises(EdgekitError) as e:
        load(path)
    message = str(e.value)
    assert message.count(". ") == 0 and message.endswith("."), f"not one sentence: {message}"
    return message


def test_valid_config_loads(project):
    (project / "edgekit.yaml").write_text(VALID)
    cfg = load(project / "edgekit.yaml")
    assert [p.name for p in cfg.variants["int8"]] == ["int8"]
    assert cfg.variants["int8"][0].config.calibration == "minmax"
    assert cfg.resolve(cfg.data.calibration) == str(project / "calib.npz")


def test_torch_and_precision_passes_become_the_compress_request(project):
    """prune (with fine-tuning data relative to the file), sparsity and bf16 become the request's
    chain: prune then finetune, sparsity, bf16."""
    from edgekit.run import _compress_request

    text = VALID.replace(
        "  fp32: []\n",
        "  fp32: []\n  small:\n    - prune: {macs: 0.5, finetune: calib.npz, epochs: 2}\n"
        "    - sparsity: '2:4'\n    - bf16\n",
    )
    (project / "edgekit.yaml").write_text(text)
    cfg = load(project / "edgekit.yaml")
    req = _compress_request(cfg, project / "model.pt2", cfg.chain("small"))
    steps = {s.name: s.config for s in req.chain}
    assert list(steps) == ["prune", "finetune", "sparsity", "bf16"]
    assert steps["prune"].macs == 0.5 and steps["prune"].ratio is None and steps["prune"].round_to == 8
    assert steps["finetune"].data == str(project / "calib.npz") and steps["finetune"].epochs == 2
    assert steps["sparsity"].pattern == "2:4"
    message = error(project, text.replace("macs: 0.5", "macs: 1.5"))
    assert "line" in message and "prune" in message and "macs" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # unknown key: named, with the keys accepted there
        (
            "    min_speedup: 1.2",
            "    min_speedup: 1.2\n    max_sped: 2",
            "line 18: unknown key 'max_sped' in gates[0]",
        ),
        (
            "    - int8: {calibration: minmax}",
            "    - quantize: {}",
            "line 9: unknown key 'quantize' in variants.int8[0]",
        ),
        # wrong type / value: the key, what is accepted, what was given
        (
            "    min_speedup: 1.2",
            "    min_speedup: fast",
            "line 17: gates[0].min_speedup: must be a valid number",
        ),
        (
            "{calibration: minmax}",
            "{calibration: best}",
            "line 9: variants.int8[0].int8.calibration: must be 'minmax'",
        ),
        # threshold out of range
        (
            "    min_speedup: 1.2",
            "    min_speedup: -1",
            "line 17: gates[0].min_speedup: must be greater than 0 (got -1)",
        ),
        (
            "    min_speedup: 1.2",
            "    min_accuracy: 120",
            "line 17: gates[0].min_accuracy: must be less than or equal to 100",
        ),
        # missing model: the key, and the file
        ("  path: model.pt2", "  path: nowhere.pt2", "line 2: model.path"),
        ("model:\n  path: model.pt2\n", "model: {}\n", "line 1: model.path is required and missing"),
        # baseline variant not in the run
        (
            "    baseline: fp32",
            "    baseline: fp16",
            "line 16: gates[0].baseline 'fp16' is not a variant of target cpu",
        ),
        (
            "    variant: int8\n",
            "    variant: int4\n",
            "line 15: gates[0].variant 'int4' is not a variant of target cpu",
        ),
        (
            "  - target: cpu",
            "  - target: gpu",
            "line 14: gates[0].target 'gpu' is not a target; accepted: cpu",
        ),
        ("    baseline: fp32\n", "", "line 16: gates[0].min_speedup is measured against a baseline"),
    ],
)
def test_config_errors_name_key_and_line(project, old, new, expected):
    assert old in VALID
    message = error(project, VALID.replace(old, new))
    assert message.startswith("edgekit.yaml "), message
    assert expected in message, message


def test_unknown_key_lists_accepted_keys(project):
    message = error(project, VALID.replace("  - name: cpu", "  - name: cpu\n    cores: 4"))
    assert "line 12: unknown key 'cores' in targets[0]; accepted keys: name, runtime, device" in message


def test_bad_yaml_names_the_line(project):
    message = error(project, VALID.replace("  fp32: []", "  fp32: ["))
    assert message.startswith("edgekit.yaml line ") and "not valid YAML" in message


def test_cli_config_error_exit_2(project, edgekit):
    (project / "edgekit.yaml").write_text(VALID.replace("min_speedup: 1.2", "min_speedup: 0"))
    proc = edgekit("run", project / "edgekit.yaml", "-o", project / "out", "--cache", project / "cache")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "edgekit: error: edgekit.yaml line 17: gates[0].min_speedup: must be greater than 0 (got 0)."
    )
    assert "Traceback" not in proc.stderr and not (project / "out").exists()


def test_init_template_is_valid_and_schema_is_json(tmp_path, edgekit):
    proc = edgekit("init", "--dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = load(tmp_path / "edgekit.yaml", check_files=False)
    assert list(cfg.variants) == ["fp32", "int8"] and cfg.gates[0].min_speedup == 1.2
    assert (tmp_path / ".github" / "workflows" / "edgekit.yml").is_file()
    again = edgekit("init", "--dir", tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    schema = json.loads(edgekit("schema").stdout)
    assert schema["additionalProperties"] is False and "gates" in schema["properties"]


@pytest.mark.parametrize(
    ("written", "shapes"),
    [
        ("[1, 3, 224, 224]", [[1, 3, 224, 224]]),
        ("[[1, 3, 224, 224], [1, 6]]", [[1, 3, 224, 224], [1, 6]]),
        ("{input_ids: [1, 64]}", {"input_ids": [1, 64]}),
        ('["input_ids:1,64"]', {"input_ids": [1, 64]}),
    ],
    ids=["flat", "per-input", "by-name", "trtexec"],
)
def test_model_input_shape_as_users_write_it(project, written, shapes):
    """`input_shape: [1, 3, 224, 224]` is a single-input model's shape (it was refused with "must be
    a valid list (got 1)"); shapes may also name their inputs."""
    text = VALID.replace("  path: model.pt2\n", f"  path: model.pt2\n  input_shape: {written}\n")
    (project / "edgekit.yaml").write_text(text)
    assert load(project / "edgekit.yaml").model.load_options().input_shapes == shapes


def test_model_input_shape_that_is_no_shape(project):
    text = VALID.replace("  path: model.pt2\n", "  path: model.pt2\n  input_shape: [1, 0]\n")
    message = error(project, text)
    assert message.startswith("edgekit.yaml line 3: model.input_shape: give one shape of positive"), message


def test_a_key_given_twice_is_refused_with_both_lines(project):
    """PyYAML keeps the last of two equal keys without a word: a target's `rounds` pasted twice ran
    with the second."""
    message = error(
        project,
        VALID.replace(
            "    variants: [fp32, int8]\n", "    variants: [fp32, int8]\n    rounds: 3\n    rounds: 5\n"
        ),
    )
    assert "line 14: 'rounds' is given twice in one mapping (first on line 13)" in message, message
