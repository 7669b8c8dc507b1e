"""The artifact: a directory with model file(s) and `edgekit.json`, written atomically.

Every stage reads an artifact and writes a new one; nothing is modified in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from edgekit import __version__, interrupts
from edgekit.errors import EdgekitError, first_line

FORMAT_VERSION = 1
MANIFEST = "edgekit.json"


class TensorSpec(BaseModel):
    """One model input: name, shape (a str for a symbolic axis such as "batch") and dtype."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"
    batch_axis: int | None = 0  # where the samples of a batch go; None: fed as it is (a scalar)
    # one sample's shape in the data the model was compressed with, where an axis other than the
    # batch is symbolic (a sequence length, an image size): what timing and random inputs use
    example: list[int] | None = None

    @model_serializer(mode="wrap")
    def _usual_axis_unsaid(self, handler) -> dict[str, Any]:
        """The usual batch axis, the first, goes unwritten, and no example: batch-first manifests
        of fixed-size inputs stay as they were."""
        out = handler(self)
        if out.get("batch_axis") == 0:
            del out["batch_axis"]
        if out.get("example") is None:
            out.pop("example", None)
        return out

    @property
    def open_axes(self) -> list[str]:
        """The symbolic axes other than the batch: their size comes from data, not from the model."""
        return [d for i, d in enumerate(self.shape) if isinstance(d, str) and i != self.batch_axis]

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with BATCH on the batch axis and every other symbolic axis as in `example`
        (without one, BATCH too)."""
        return tuple(
            d
            if not isinstance(d, str)
            else self.example[i]
            if self.example and i != self.batch_axis
            else batch
            for i, d in enumerate(self.shape)
        )


class InputSpec(BaseModel):
    inputs: list[TensorSpec]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size of a --static-batch model; None when the batch axis is dynamic."""
        axes = [(t.shape, t.batch_axis) for t in self.inputs if t.batch_axis is not None]
        return next((s[a] for s, a in axes if a < len(s) and isinstance(s[a], int)), None)


class FileRecord(BaseModel):
    name: str
    bytes: int
    sha256: str


class PassRecord(BaseModel):
    """One applied pass: its name, full config, duration and what it changed."""

    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    seconds: float
    summary: dict[str, Any] = Field(default_factory=dict)


class Source(BaseModel):
    path: str
    sha256: str
    kind: str
    left_out: list[str] = []  # a checkpoint's entries --arch has no parameter for (a loss's, an EMA's)


class LoadOptions(BaseModel):
    """How a user's model file is loaded, as the CLI's flags or edgekit.yaml's `model` give it, and
    as the manifest records it. A runtime that runs the source torch model (eager) reuses the input
    shapes and dtype, never `arch` or `trust_pickle`: an artifact grants no trust, the user's command
    line or edgekit.yaml does."""

    model_config = ConfigDict(validate_assignment=True)

    arch: str | None = None  # package.module:factory, for a state_dict
    trust_pickle: bool = False  # allow a fully pickled nn.Module (runs code from the file)
    # one shape per input: in input order, or by input name ({"input_ids": [1, 64]})
    input_shapes: list[list[PositiveInt]] | dict[str, list[PositiveInt]] = Field(default_factory=list)
    input_dtype: str = "float32"  # of every input of a torch model whose dtype is not recorded ...
    input_dtypes: dict[str, str] = Field(default_factory=dict)  # ... but these ({input_ids: int64})
    static_batch: bool = False
    # inputs whose batch axis is not the first ({state: 1} for a [2, N, 64] recurrent state)
    batch_axes: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _dtypes_as_written(cls, data: Any) -> Any:
        """`--input-dtype` as typed (repeatable): DTYPE for every input, NAME=DTYPE for one."""
        given = data.get("input_dtype") if isinstance(data, dict) else None
        if not isinstance(given, (list, tuple)):
            return data
        named = dict(t.split("=", 1) for t in given if "=" in t)
        bare = [t for t in given if "=" not in t]
        return {**data, "input_dtype": bare[-1] if bare else "float32", "input_dtypes": named}

    @field_validator("input_shapes", mode="wrap")
    @classmethod
    def _as_written(cls, value: Any, handler) -> Any:
        """A single shape ([1, 3, 224, 224]) is the one input's; `name:1,64` strings (trtexec's
        form) name their input, `1,64` ones go by order; anything else is refused in one sentence."""
        if isinstance(value, (list, tuple)) and value and all(isinstance(d, int) for d in value):
            value = [value]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(t, str) for t in value):
            value = shapes_from_text(value)
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                "give one shape of positive integers per input: [1, 3, 224, 224], "
                "[[1, 3, 224, 224], [1, 6]], or by input name {input_ids: [1, 64]}"
            ) from None


def split_shape(text: str) -> tuple[str | None, list[int]]:
    """`1,3,224,224` -> (None, [1, 3, 224, 224]); `input_ids:1,64` -> ("input_ids", [1, 64]). A
    ValueError says what is wrong with TEXT."""
    name, _, dims = text.rpartition(":")
    try:
        shape = [int(d) for d in dims.replace("x", ",").split(",")]
    except ValueError:
        raise ValueError(
            f"{text!r} is not a list of integers; write it like 1,3,224,224 or input_ids:1,64"
        ) from None
    if any(d <= 0 for d in shape):
        raise ValueError(f"{text!r} must have positive dimensions, like 1,3,224,224")
    return name or None, shape


def shapes_from_text(texts: list[str] | tuple[str, ...]) -> list[list[int]] | dict[str, list[int]]:
    """Shapes as written (`1,3,224,224` or `name:1,3,224,224`, one per input): a list in input order,
    or a mapping from input name when every one is named."""
    pairs = [split_shape(t) for t in texts]
    names = [name for name, _ in pairs]
    if not any(names):
        return [shape for _, shape in pairs]
    if not all(names):
        raise ValueError("name every input shape (input_ids:1,64) or none of them (1,64)")
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"input {twice!r} is given a shape twice")
    return dict(pairs)


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    model_file: str
    source: Source
    load: LoadOptions | None = None  # None in artifacts made before it was recorded
    parent: str | None = None  # the artifact this one was built from (`edgekit build`)
    inference_precision: str | None = None  # what the runtime must compute in (OpenVINO's hint)
    # the CPU class an INT8 artifact is made for and its form (edgekit.target_cpu); None for the rest
    target_cpu: dict[str, Any] | None = None
    input_spec: InputSpec
    output_names: list[str] = Field(default_factory=list)
    passes: list[PassRecord] = Field(default_factory=list)
    files: list[FileRecord] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    verification: dict[str, Any] = Field(default_factory=dict)
    tool_versions: dict[str, str] = Field(default_factory=dict)
    manifest_sha256: str | None = None  # manifest_digest() of the rest, checked by read_manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of edgekit and the libraries that shaped the artifact (absent ones skipped)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"edgekit": __version__}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "openvino", "nncf", "tensorrt"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def file_records(directory: Path) -> list[FileRecord]:
    """Every file of the artifact but the manifest, so external ONNX data is sized and hashed too."""
    return [
        FileRecord(name=p.name, bytes=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    ]


def model_bytes(manifest: Manifest) -> int:
    """Size on disk of the model: all files of the artifact (model plus external data)."""
    return sum(f.bytes for f in manifest.files)


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise EdgekitError(
            f"{directory} is not an edgekit artifact (no {MANIFEST}); "
            "make one with `edgekit export` or `edgekit compress`."
        )
    text = path.read_text()
    try:
        manifest = Manifest.model_validate_json(text)
    except ValueError as e:
        raise EdgekitError(f"{path} is not a valid edgekit manifest ({first_line(e)}).") from None
    if manifest.manifest_sha256 is None:
        raise EdgekitError(
            f"{path} has no digest of its content (an older edgekit wrote it), so an edit to it could "
            "not be detected; rebuild the artifact with this edgekit."
        )
    if manifest.manifest_sha256 != manifest_digest(json.loads(text)):
        raise EdgekitError(
            f"{path} was changed after edgekit wrote it (its content no longer matches its "
            "manifest_sha256); rebuild the artifact."
        )
    return manifest


def manifest_digest(data: dict) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, no spaces) without its own digest: it
    detects an edited or corrupted edgekit.json; it is not a signature (anyone can recompute it)."""
    content = {k: v for k, v in data.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Refuse an artifact whose files no longer match the hashes in its manifest."""
    for rec in manifest.files:
        p = Path(directory) / rec.name
        if not p.is_file() or p.stat().st_size != rec.bytes or sha256_file(p) != rec.sha256:
            raise EdgekitError(
                f"{p} does not match its manifest (missing or modified); rebuild the artifact."
            )


def check_output_dir(out: Path, force: bool, inputs: list[Path]) -> None:
    """Fail before any work if `out` cannot be written or would clobber something: an input (also
    one inside the directory --force would replace), a file, a folder that is not an artifact, a
    mount point. A symlink is followed: the artifact it points at is the one replaced."""
    out = Path(out).resolve()
    for src in inputs:
        src = Path(src).resolve()
        if out == src or src.is_relative_to(out):
            raise EdgekitError(f"-o {out} would overwrite the input {src}; choose another directory.")
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"-o {out} is an existing file; choose a directory path.")
    if out.exists() and not force:
        raise EdgekitError(f"{out} already exists; pass --force to replace it.")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise EdgekitError(
            f"{out} is a non-empty directory that is not an edgekit artifact; --force only "
            "replaces artifacts, so choose another -o."
        )
    if os.path.ismount(out):
        raise EdgekitError(
            f"-o {out} is a mount point, which cannot be replaced; give a path inside it, "
            f"e.g. {out / 'model'}."
        )
    _check_writable(out.parent, "-o", out)


def existing_paths(*sources: str | Path | None) -> list[Path]:
    """The sources that are files or folders on disk (data may also be module:function or 'random'),
    for check_output_dir's inputs."""
    return [Path(s) for s in sources if s and Path(s).exists()]


def check_output_file(path: Path | None, flag: str) -> None:
    """Fail before any work if a file output (--json, --junit, ...) cannot be written there: a
    directory in its place, a file where a folder must be, or a place nothing can be created.
    An existing file is replaced; missing folders are created when it is written."""
    if path is None:
        return
    path = Path(path).absolute()
    if path.is_dir():
        raise EdgekitError(f"{flag} {path} is a directory; give a file path.")
    _check_writable(path.parent, flag, path)


def check_output_folder(path: Path | None, flag: str) -> None:
    """As check_output_file, for an output that is a folder (created if missing)."""
    if path is None:
        return
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise EdgekitError(f"{flag} {path} is an existing file; give a directory.")
    _check_writable(path if path.is_dir() else path.parent, flag, path)


def _check_writable(where: Path, flag: str, what: Path) -> None:
    """Create and remove a probe in WHERE, or its nearest existing parent: the one test that holds
    for root, read-only mounts and pseudo-filesystems alike (os.access does not)."""
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise EdgekitError(f"{flag} {what}: {where} is a file, not a directory; choose another path.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edgekit-probe-", dir=where))
    except OSError as e:
        raise EdgekitError(f"cannot write {flag} {what}: {where}: {e.strerror}.") from None


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it replaces `out` by rename, on any failure
    (an exception, Ctrl-C or SIGTERM) it is removed and `out` is left as it was. A symlink `out`
    is followed, so the link stays and points at the new artifact."""
    out = Path(out).resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        umask = os.umask(0o022)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the artifact gets a plain mkdir's mode
    except OSError as e:
        raise EdgekitError(f"cannot create {out}: {e.strerror}.") from None
    try:
        yield tmp
        interrupts.check()
        if out.exists():
            if not force:
                raise EdgekitError(f"{out} already exists; pass --force to replace it.")
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            _rename(out, old, out)
            try:
                _rename(tmp, out, out)
            except EdgekitError:
                old.rename(out)  # put the old artifact back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename(tmp, out, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rename(src: Path, dst: Path, out: Path) -> None:
    try:
        src.rename(dst)
    except OSError as e:
        raise EdgekitError(f"cannot replace {out}: {e.strerror}; choose another -o.") from None


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Fill in file hashes, tool versions and the manifest's digest, then write edgekit.json (last,
    so it marks completion)."""
    manifest.files = file_records(directory)
    manifest.tool_versions = tool_versions()
    manifest.manifest_sha256 = manifest_digest(manifest.model_dump(mode="json"))
    write_atomic(Path(directory) / MANIFEST, json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return manifest


def write_atomic(path: Path, text: str) -> None:
    """Write a file under a temporary name beside it, then rename it into place: a reader never
    sees half a file, and an interrupted write leaves the old one. Missing folders are created."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        interrupts.check()
        os.replace(tmp, path)
    except OSError as e:
        raise EdgekitError(f"cannot write {path}: {e.strerror}.") from None
    finally:
        tmp.unlink(missing_ok=True)
