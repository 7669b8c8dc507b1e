"""`edgekit inspect` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

import json

from hostile import SHAPE, assert_refused, hashes_of


def test_edited_manifest(edgekit, tiny_artifact, work):
    import shutil

    art = shutil.copytree(tiny_artifact, work / "art")  # a copy to edit, not a second export
    manifest = art / "edgekit.json"
    m = json.loads(manifest.read_text())
    m["source"]["path"] = str(work / "elsewhere.pt")
    manifest.write_text(json.dumps(m, indent=2) + "\n")
    before = hashes_of(manifest)
    msg = assert_refused(edgekit("inspect", art), work / "nothing", [manifest], before)
    assert str(manifest) in msg and "changed after edgekit wrote it" in msg and "rebuild" in msg, msg

    del m["manifest_sha256"]  # as an edgekit older than the digest wrote it
    manifest.write_text(json.dumps(m, indent=2) + "\n")
    before = hashes_of(manifest)
    msg = assert_refused(edgekit("inspect", art, "--json"), work / "nothing", [manifest], before)
    assert str(manifest) in msg and "older edgekit" in msg and "rebuild" in msg, msg


def test_an_export_that_matches_torch_bit_for_bit(edgekit, work):
    """An SQNR of infinity (identical outputs) is stored as null in JSON; inspect once crashed on it."""
    import torch

    model = work / "relu.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU())), str(model))
    out = work / "out"
    r = edgekit("export", model, "--input-shape", SHAPE, "-o", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "edgekit.json").read_text())["verification"]["export"]["sqnr_db"] is None
    r = edgekit("inspect", out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "identical" in r.stdout
