"""`edgekit init`: a commented edgekit.yaml and a GitHub Actions workflow that runs it on every push."""

from __future__ import annotations

from pathlib import Path

from edgekit.artifact import check_output_file, check_output_folder, write_atomic
from edgekit.errors import EdgekitError

CONFIG = """\
# edgekit.yaml: `edgekit run edgekit.yaml` builds every variant (cached), measures each target's
# variants in interleaved rounds and checks the gates: exit 0 all pass, 1 a gate failed, 2 bad input.
# Editor completion: `edgekit schema -o edgekit.schema.json`, then keep the next line.
# yaml-language-server: $schema=edgekit.schema.json
version: 1

model:
  path: model.pt2                  # TorchScript, torch.export .pt2, ONNX, or a state_dict with arch
  # arch: mypackage.models:resnet18  # package.module:factory building the model, for a state_dict
  # input_shape: [1, 3, 224, 224]  # when the file does not record it; [[...], [...]] for several inputs

data:                              # paths are relative to this file
  calibration: data/calib.npz      # image folder, .npz (x, y), module:function, or random
  calib_size: 300
  evaluation: data/test.npz        # labels give top-1 accuracy; without, fidelity to fp32
  # eval_size: 1000
  # preprocess: {resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}

variants:                          # name: the passes applied to the model, in order
  fp32: []                         # the verified fp32 ONNX export: the baseline
  int8:
    - int8: {calibration: percentile}   # static INT8 (QDQ), see docs/guide/quantize.md
  # int8-openvino:
  #   - int8
  #   - build: {target: openvino}       # the last pass: an engine for a runtime (openvino, tensorrt)

targets:
  - name: cpu
    runtime: ort                   # ort, openvino, tensorrt, eager
    device: cpu
    # host: ssh://ci@jetson.local  # measure on a device over ssh
    threads: 0                     # 0: the runtime's default
    batch: 1
    variants: [fp32, int8]         # measured interleaved, round by round
    seconds: 6                     # timed seconds per variant, over all rounds
    rounds: 6

gates:
  - target: cpu
    variant: int8
    baseline: fp32                 # a variant of the same target
    max_accuracy_drop: 1.0         # points of top-1 (accuracy_drop_mode: relative for % of the baseline)
    min_speedup: 1.2               # fp32 latency / int8 latency, per interleaved round
    max_latency_ms: {p50: 5.0, p99: 10.0}
    max_size_mb: 50
    # max_peak_memory_mb: 500
    # max_latency_regression: 5    # % over the same variant in --baseline results of the last release
    # inconclusive: fail           # a latency interval straddling its threshold, after remeasure
    # remeasure: 2                 # more batches of rounds while a latency gate is inconclusive
"""

WORKFLOW = """\
# Runs edgekit.yaml on every push and pull request; the job fails when a gate fails.
name: edgekit
on: [push, pull_request]

jobs:
  gate:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with: {python-version: "3.11"}
      - name: Install edgekit
        run: |
          pip install torch --index-url https://download.pytorch.org/whl/cpu
          pip install "edgekit[plots]"
      - name: Cache edgekit stages
        uses: actions/cache@v4
        with:
          path: ~/.cache/edgekit/run
          key: edgekit-${{ hashFiles('edgekit.yaml', 'model.pt2', 'data/**') }}
          restore-keys: edgekit-
      - name: Build, benchmark, gate
        run: edgekit run edgekit.yaml -o results --junit results/gate.xml
      - name: Report
        if: always()
        run: edgekit report results --format md,html --plot
      - uses: actions/upload-artifact@v4
        if: always()
        with: {name: edgekit-results, path: results/}
"""

FILES = {"edgekit.yaml": CONFIG, ".github/workflows/edgekit.yml": WORKFLOW}


def init(directory: Path, force: bool) -> list[Path]:
    """Write the templates into DIRECTORY; an existing file is kept unless FORCE."""
    paths = [Path(directory) / name for name in FILES]
    check_output_folder(Path(directory), "--dir")
    for path in paths:
        check_output_file(path, "edgekit init")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise EdgekitError(f"{', '.join(existing)} already exist(s); pass --force to replace.")
    for path, text in zip(paths, FILES.values(), strict=True):
        write_atomic(path, text)
    return paths
