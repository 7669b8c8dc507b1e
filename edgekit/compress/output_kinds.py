"""What a model's graph says its outputs are, where their values alone would mislead: a decoded
detection (box coordinates beside class scores) is judged by SQNR, not as a sequence of class
scores; features whose rows the graph normalizes (a transformer's last hidden state under any name)
as embeddings, by cosine, not by an argmax over 768 "classes"."""

from __future__ import annotations

from edgekit.compress import output_tail
from edgekit.compress.norm_islands import islands

# ops that normalize each row of their input: ONNX's, and ONNX Runtime's fused forms of them
NORMS = (
    "LayerNormalization",
    "RMSNormalization",
    "SkipLayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
)


def normalized(graph) -> set[str]:
    """GRAPH's outputs of 2 or 3 axes whose tail normalizes their rows: a LayerNormalization (or
    RMSNorm) op, or a normalization written out (edgekit.compress.norm_islands; not a softmax,
    whose island has an Exp). Features, not scores: a transformer's last hidden state, an
    L2-normalized embedding, judged by cosine ("embedding"); a [N, T, 768] hidden state was judged
    as a sequence of 768 class scores, by argmax and CTC decoding."""
    norms = {k for k, n in enumerate(graph.node) if n.op_type in NORMS}
    for island in islands(graph):
        if not any(graph.node[k].op_type == "Exp" for k in island):
            norms.update(island)
    rows = [o for o in graph.output if o.type.tensor_type.HasField("shape")]
    rows = [o for o in rows if len(o.type.tensor_type.shape.dim) in (2, 3)]
    return output_tail.tail_reaches(graph, rows, norms.__contains__)


def graph_kinds(model, given: dict[str, str]) -> dict[str, str]:
    """GIVEN output kinds (--output-kind, by name or output_N) with what MODEL's graph says of the
    outputs GIVEN says nothing of: decoded detections "other", normalized features "embedding"."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    said = {
        **dict.fromkeys(normalized(graph), "embedding"),
        **dict.fromkeys(output_tail.decoded(graph), "other"),
    }
    added = {
        n: said[n]
        for i, n in enumerate(o.name for o in graph.output)
        if n in said and n not in given and f"output_{i}" not in given
    }
    return {**added, **given}
