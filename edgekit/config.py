"""edgekit.yaml: the model, its data, the variants (chains of passes), the targets they are measured
on and the gates a release must pass. Validated whole before anything runs; every error is one
sentence naming the key, its line in the file and what is accepted."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from edgekit import floors
from edgekit.artifact import LoadOptions
from edgekit.benchmarks.metrics import KINDS
from edgekit.compress.finetune import FinetuneConfig
from edgekit.compress.mixed import MixedConfig
from edgekit.compress.precision import Fp16Config
from edgekit.compress.prune import PruneConfig
from edgekit.compress.quantize import Int8Config
from edgekit.compress.sparsity import SparsityConfig
from edgekit.errors import EdgekitError
from edgekit.files import read_text
from edgekit.passes import Bf16Config, BuildConfig, Step, problem
from edgekit.search_space import SearchConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


YAML_KEYS = {"input_shapes": "input_shape"}  # LoadOptions fields edgekit.yaml names otherwise


class ModelSpec(LoadOptions):
    """The model file (relative to the config file) and how to load it: LoadOptions, whose
    input_shapes the file calls input_shape (one shape, one per input, or by input name)."""

    model_config = ConfigDict(extra="forbid", alias_generator=lambda name: YAML_KEYS.get(name, name))

    path: str

    def load_options(self) -> LoadOptions:
        """The loading options alone, as a compress request and the manifest take them."""
        return LoadOptions(**self.model_dump(exclude={"path"}))


class PreprocessSpec(_Strict):
    resize: int | None = Field(None, gt=0)
    crop: int | None = Field(None, gt=0)
    mean: list[float] = [0.485, 0.456, 0.406]
    std: list[float] = [0.229, 0.224, 0.225]
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["auto", "nchw", "nhwc"] = "auto"


class DataSpec(_Strict):
    calibration: str | None = None  # image folder, .npz, module:function, or random
    calib_size: int = Field(300, ge=1)
    evaluation: str | None = None  # labels give accuracy, else fidelity to the fp32 variant
    eval_size: int | None = Field(None, ge=1)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    constants: dict[str, Any] = Field(default_factory=dict)  # inputs alike in every sample: {sr: 16000}
    # output name -> the kind it is verified as (edgekit.benchmarks.metrics.KINDS): --output-kind
    output_kinds: dict[str, Literal[KINDS]] = Field(default_factory=dict)
    metric: str | None = Field(None, pattern=r"^[\w.]+:\w+$")  # module:function, the user's task metric
    # the fidelity floors (--min-fidelity): one number, or {kind or output name: floor}; 0: none
    min_fidelity: float | dict[str, float] | None = None

    @field_validator("min_fidelity")
    @classmethod
    def _floors(cls, value):
        try:
            floors.from_config(value)
        except EdgekitError as e:
            raise ValueError(str(e).rstrip(".")) from None
        return value


class PrunePass(PruneConfig):
    """prune as edgekit.yaml writes it: with `finetune: DATA` (relative to this file), `epochs` and
    `lr`, it is the prune step followed by a finetune step."""

    finetune: str | None = None
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)


class Pass(_Strict):
    """One pass, written as a one-key mapping (`int8: {calibration: minmax}`) or its bare name (`int8`).
    The key is its name in edgekit.passes.PASSES, the value its config there; passes run in the order
    written, `build` last."""

    prune: PrunePass | None = None
    finetune: FinetuneConfig | None = None
    sparsity: SparsityConfig | None = None  # 2:4, or a fraction
    int8: Int8Config | None = None
    mixed: MixedConfig | None = None  # after int8: keep the most sensitive layers fp32 within a budget
    fp16: Fp16Config | None = None
    bf16: Bf16Config | None = None
    build: BuildConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        """`- int8` and `- int8:` mean int8 with its defaults."""
        if isinstance(value, str):
            return {value: {}}
        if isinstance(value, dict):
            return {k: {} if v is None else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one(self) -> Pass:
        if len(self.model_fields_set) != 1:
            raise ValueError(f"a pass is one of {', '.join(PASS_NAMES)}, each its own list item")
        return self

    @property
    def name(self) -> str:
        return next(iter(self.model_fields_set))

    @property
    def config(self) -> BaseModel:
        return getattr(self, self.name)


PASS_NAMES = tuple(Pass.model_fields)


class Target(_Strict):
    name: str
    runtime: Literal["ort", "openvino", "tensorrt", "eager"] = "ort"
    device: str = "cpu"
    host: str | None = None  # measure on a device over ssh: ssh://user@host[:port], user@host, an alias
    remote_python: str = "python3"  # the device's Python, with numpy and the runtime
    threads: int = Field(0, ge=0)  # 0: the runtime's default
    batch: int = Field(1, ge=1)
    variants: list[str] = Field(min_length=1)  # measured interleaved, round by round
    seconds: float = Field(3.0, gt=0)  # timed seconds per variant, over all rounds
    rounds: int = Field(5, ge=3)  # at least 3 for a confidence interval
    warmup: int = Field(10, ge=0)


class LatencyLimits(_Strict):
    p50: float | None = Field(None, gt=0)
    p90: float | None = Field(None, gt=0)
    p99: float | None = Field(None, gt=0)


class Gate(_Strict):
    target: str
    variant: str
    baseline: str | None = None  # a variant of the same target: accuracy drop and speed-up against it
    max_accuracy_drop: float | None = Field(None, ge=0)
    accuracy_drop_mode: Literal["points", "relative"] = "points"  # relative: % of the baseline's
    min_accuracy: float | None = Field(None, ge=0, le=100)  # top-1, in percent
    min_metric: float | None = None  # the user's task metric (data.metric), in its own units
    max_latency_ms: LatencyLimits | None = None
    min_speedup: float | None = Field(None, gt=0)  # baseline latency / variant latency
    max_size_mb: float | None = Field(None, gt=0)
    max_peak_memory_mb: float | None = Field(None, gt=0)
    max_latency_regression: float | None = Field(None, ge=0)  # % over the --baseline results' median
    confidence: float = Field(0.95, gt=0, lt=1)
    inconclusive: Literal["fail", "pass"] = "fail"
    remeasure: int = Field(2, ge=0)  # more batches of rounds while a latency gate is inconclusive


class Config(_Strict):
    version: Literal[1] = 1
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    variants: dict[str, list[Pass]] = Field(min_length=1)  # name: passes from the model; []: fp32
    targets: list[Target] = Field(min_length=1)
    gates: list[Gate] = Field(default_factory=list)
    search: SearchConfig | None = None  # `edgekit search`: the space, objectives, constraints
    _base_dir: Path = PrivateAttr(Path("."))  # the config file's directory (set by load)

    def is_path(self, source: str) -> bool:
        """A file or folder, not `random` or `module:function`."""
        return source != "random" and (":" not in source or (self._base_dir / source).exists())

    def resolve(self, source: str) -> str:
        """A model or data source as written in the file, with paths taken relative to the file."""
        return str(self._base_dir / source) if self.is_path(source) else source

    def chain(self, variant: str) -> list[Step]:
        """VARIANT's passes as the steps that run, in the order written, each config the class the
        pass table names: `prune` with `finetune` data is prune then finetune; data paths are taken
        relative to this file."""
        steps = []
        for p in self.variants[variant]:
            c = p.config
            if p.name == "prune":
                steps.append(Step("prune", PruneConfig(**c.model_dump(exclude={"finetune", "epochs", "lr"}))))
                if c.finetune:
                    tuning = c.model_dump(include={"epochs", "lr"}, exclude_none=True)
                    steps.append(Step("finetune", FinetuneConfig(data=self.resolve(c.finetune), **tuning)))
            elif p.name == "finetune":
                steps.append(Step("finetune", c.model_copy(update={"data": self.resolve(c.data)})))
            else:
                steps.append(Step(p.name, c))
        return steps


def schema() -> dict:
    """The JSON schema of edgekit.yaml, for editors (yaml-language-server) and CI linters."""
    return Config.model_json_schema()


def load(path: Path, check_files: bool = True) -> Config:
    """Read, validate and cross-check edgekit.yaml (and that its model and data files exist, unless
    CHECK_FILES is off: `edgekit gate` reads records only); any problem is one EdgekitError sentence."""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path} does not exist; write one with `edgekit init`.")
    text = read_text(path, "config")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise EdgekitError(f"{path.name} line {line}: not valid YAML ({e.problem}).") from None
    if not isinstance(data, dict):
        raise EdgekitError(f"{path} must be a YAML mapping with model, variants, targets and gates.")
    if twice := _duplicate_key(root):
        key, first, again = twice
        raise EdgekitError(
            f"{path.name} line {again}: {key!r} is given twice in one mapping (first on line {first}); "
            "YAML would keep the last silently: keep one."
        )
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        raise EdgekitError(f"{path.name} line {_line(root, loc)}: {_sentence(err, loc)}.") from None
    cfg._base_dir = path.parent.absolute()
    problem = _references(cfg, check_files)
    if problem:
        loc, what = problem
        raise EdgekitError(f"{path.name} line {_line(root, loc)}: {_dotted(loc)} {what}.")
    return cfg


def _duplicate_key(node: yaml.Node | None) -> tuple[str, int, int] | None:
    """The first key a mapping under NODE gives twice, with the lines of both (PyYAML keeps the last
    one without a word: a target's `seconds` pasted twice measured with the wrong one)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):  # a complex key (`? [a, b]`) is not compared
                line = key.start_mark.line + 1
                if key.value in seen:
                    return key.value, seen[key.value], line
                seen[key.value] = line
            if found := _duplicate_key(value):
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if found := _duplicate_key(item):
                return found
    return None


def _references(cfg: Config, check_files: bool) -> tuple[tuple, str] | None:
    """The first cross-reference or file problem: (loc, what is wrong), or None."""
    model = cfg.resolve(cfg.model.path)
    if check_files and not Path(model).is_file():
        return ("model", "path"), f"{model} does not exist (give the trained model file)"
    for key in ("calibration", "evaluation"):
        source = getattr(cfg.data, key)
        if check_files and source and cfg.is_path(source) and not Path(cfg.resolve(source)).exists():
            return ("data", key), f"{cfg.resolve(source)} does not exist"
    for name, passes in cfg.variants.items():
        if why := problem(cfg.chain(name)):
            return ("variants", name), f"cannot run as written: {why}"
        for i, p in enumerate(passes):
            if p.name in ("int8", "mixed") and not cfg.data.calibration:
                return ("variants", name, i), f"{p.name} needs data.calibration"
    targets = {t.name: t for t in cfg.targets}
    if len(targets) != len(cfg.targets):
        dup = next(t for t in targets if [x.name for x in cfg.targets].count(t) > 1)
        return ("targets",), f"name {dup!r} is used twice; give each target its own name"
    for i, t in enumerate(cfg.targets):
        for j, v in enumerate(t.variants):
            if v not in cfg.variants:
                return ("targets", i, "variants", j), _one_of(v, "variant", list(cfg.variants))
    for i, g in enumerate(cfg.gates):
        if g.target not in targets:
            return ("gates", i, "target"), _one_of(g.target, "target", list(targets))
        measured = targets[g.target].variants
        if g.variant not in measured:
            return ("gates", i, "variant"), _one_of(g.variant, f"variant of target {g.target}", measured)
        if g.baseline is not None and g.baseline not in measured:
            return ("gates", i, "baseline"), _one_of(g.baseline, f"variant of target {g.target}", measured)
        needs = [k for k in ("max_accuracy_drop", "min_speedup") if getattr(g, k) is not None]
        if needs and g.baseline is None:
            return ("gates", i, needs[0]), "is measured against a baseline; add baseline: VARIANT"
        gates_accuracy = g.max_accuracy_drop is not None or g.min_accuracy is not None
        if gates_accuracy and not cfg.data.evaluation:
            return ("gates", i), "gates accuracy, which needs data.evaluation"
        if not _has_threshold(g):
            return ("gates", i), "sets no threshold (max_accuracy_drop, min_speedup, max_latency_ms ...)"
    return _search_references(cfg, targets)


def _search_references(cfg: Config, targets: dict) -> tuple[tuple, str] | None:
    """The search section's target and base exist, and every grid point is a chain that can run."""
    from edgekit import search_space

    s = cfg.search
    if s is None:
        return None
    if s.target not in targets:
        return ("search", "target"), _one_of(s.target, "target", list(targets))
    if s.base is not None and s.base not in cfg.variants:
        return ("search", "base"), _one_of(s.base, "variant", list(cfg.variants))
    if s.algorithm != "grid":
        return None
    base = [st for st in (cfg.chain(s.base) if s.base else []) if st.name != "build"]
    try:
        points = search_space.grid(s)
    except EdgekitError as e:
        return ("search", "space"), str(e).rstrip(".")
    for point in points:
        try:
            chain = search_space.chain_of(base, point)
        except EdgekitError as e:
            return ("search", "space"), f"point {point}: {str(e).rstrip('.')}"
        if any(st.name in ("int8", "mixed") for st in chain) and not cfg.data.calibration:
            return ("search", "space"), "has int8 candidates, which need data.calibration"
    return None


def _has_threshold(g: Gate) -> bool:
    keys = ("max_accuracy_drop", "min_accuracy", "max_latency_ms", "min_speedup", "max_size_mb")
    return any(getattr(g, k) is not None for k in (*keys, "max_peak_memory_mb", "max_latency_regression"))


def _one_of(got: str, what: str, accepted: list[str]) -> str:
    return f"{got!r} is not a {what}; accepted: {', '.join(accepted)}"


def _dotted(loc: tuple) -> str:
    """("gates", 0, "min_speedup") -> gates[0].min_speedup."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _sentence(err: dict, loc: tuple) -> str:
    """Pydantic's error as the key, what it accepts, and what it got."""
    got = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        accepted = ", ".join(_fields_at(loc[:-1]))
        where = f" in {_dotted(loc[:-1])}" if loc[:-1] else ""
        return f"unknown key {loc[-1]!r}{where}; accepted keys: {accepted}"
    if kind == "missing":
        return f"{_dotted(loc)} is required and missing"
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be").replace("input should be", "must be")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{_dotted(loc)}: {msg[0].lower()}{msg[1:]}{shown}"


def _fields_at(loc: tuple) -> list[str]:
    """The keys the model at LOC accepts: Config's fields followed down the annotations."""
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation
        else:  # list[X] or dict[str, X]
            tp = typing.get_args(tp)[-1]
    tp = _unwrap(tp)
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return []
    return [field.alias or name for name, field in tp.model_fields.items()]  # as the file writes them


def _unwrap(tp: Any) -> Any:
    """X from X | None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _line(node: yaml.Node, loc: tuple) -> int:
    """The 1-based line of the YAML node at LOC, or of its deepest ancestor present in the file."""
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    # an unknown or misplaced key is reported at the key itself
                    child = key if part == loc[-1] and not isinstance(value, yaml.CollectionNode) else value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1
