"""Initializers ONNX Runtime's quantization pre-processing created, renamed so that ORT's own
optimizer cannot create them again. Pre-processing runs ORT's basic graph optimizations and saves
the result: its MatMul + Add fusion writes Reshape shapes named `gemm_input_shape_token_N`, and
when the INT8 model is loaded the same fusion, on pairs quantization left fusable, counts N from 0
again and fails on the existing name ("Attempt to replace the existing tensor": a randomly
initialised wav2vec2 exported by torch's dynamo exporter did not load). edgekit adds the prefix;
ORT names its initializers without a check."""

from __future__ import annotations

from pathlib import Path

from edgekit.compress import model_file
from edgekit.compress.outer_reads import rename

PREFIX = "edgekit_pre_"


def rename_created(before: Path, after: Path) -> int:
    """Rename the initializers of AFTER (rewritten) that BEFORE, the model pre-processing read, has
    no tensor of; how many."""
    import onnx

    old = onnx.load(str(before), load_external_data=False).graph
    known = {i.name for i in old.initializer} | {t for n in old.node for t in (*n.input, *n.output)}
    model = onnx.load(str(after))
    taken = {i.name for i in model.graph.initializer} | {t for n in model.graph.node for t in n.output}
    created = [i for i in model.graph.initializer if i.name not in known]
    for init in created:
        new = PREFIX + init.name
        while new in taken:
            new += "_"
        taken.add(new)
        rename(model.graph, init.name, new)
        init.name = new
    if created:
        model_file.save(model, after)
    return len(created)
