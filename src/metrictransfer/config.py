"""Typed, strict run configuration: YAML recipes plus ``--set a.b=value`` overrides.

pydantic does the validation (a well-kept library, and its errors name the key): unknown keys, wrong
types and unknown option names are errors, never silently ignored. Component names (methods, datasets,
losses, miners, transforms) are checked against the registries the components fill where they are
defined (:mod:`metrictransfer.registry`), so the allowed values listed in an error are always current;
every component is written ``{name, params}`` (a bare name means no parameters). Recipes written for the
earlier layout (``transfer.sigma``, ``metric_loss.miner_params``, ...) are read into this one.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from metrictransfer.config_migration import upgrade
from metrictransfer.errors import ConfigError
from metrictransfer.io import atomic_write_text
from metrictransfer.model_names import check_backbone_name, pretrained_input_size
from metrictransfer.normalization import NORMALIZATIONS, model_normalization
from metrictransfer.params import check_params
from metrictransfer.registry import DATASETS, METHODS, METRIC_LOSSES, MINERS, TRANSFORMS, Registry

__all__ = ["Component", "ConfigError", "RunConfig", "build_config", "load_config"]

#: A method's own section model (its ``params_model``), as :meth:`RunConfig.section` returns it.
SectionT = TypeVar("SectionT", bound=BaseModel)

#: Parameters of metric losses that metrictransfer fills from the data and the model.
FILLED_METRIC_PARAMS = ("num_classes", "embedding_size")


def _check_name(value: str, registry: Registry[Any] | tuple[str, ...], what: str) -> str:
    if value not in registry:
        names = registry.names() if isinstance(registry, Registry) else registry
        raise ValueError(f"unknown {what} {value!r}; valid names: {', '.join(sorted(names))}")
    return value


def normalization_name(value: str) -> str:
    """A named input convention, or ``model``: the backbone's own, resolved when the configuration loads."""
    return value if value == "model" else _check_name(value, NORMALIZATIONS, "normalization")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True)


class Component(Strict):
    """A registered component by name, with the keyword parameters of its constructor (checked against its
    signature when the configuration is loaded). A bare name stands for ``{name: NAME}``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the component's constructor")

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw


#: True while a run's recorded configuration is read back (:func:`load_run_config`): its components were
#: checked when it trained, and importing them all again (torch, every loss) would make reading it slow.
_RECORDED: ContextVar[bool] = ContextVar("recorded_configuration", default=False)


def check_component(spec: Component, registry: Registry[Any], what: str, where: str, filled: tuple[str, ...] = ()) -> Component:
    """Check a component's name and parameters against its registry (at load time, not at the first step);
    ``where``: its key, for the message."""
    if _RECORDED.get():
        return spec
    component = registry.get(_check_name(spec.name, registry, what))
    check_params(component, spec.params, f"{what} {spec.name!r}", f"{where}.params", filled=filled)
    return spec


class ValidationConfig(Strict):
    """``data.validation``: validation data carved from the training split (see metrictransfer.data.validation)."""

    classes: float | list[str | int] = Field(
        0.2,
        description="share of the training classes held out for validation (retrieval), or a list of their names or ids; "
        "classifier and unlabelled data: share of the images of each class",
    )
    folds: int = Field(1, ge=1, description="K > 1: the classes (or images) are cut into K folds, and fold `fold` validates")
    fold: int = Field(0, ge=0, description="which of the K folds is the validation data")
    seed: int = Field(0, description="seed of the split, independent of the run seed (compared runs share it)")

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: float | list[str | int]) -> float | list[str | int]:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list holds nothing out; give class names or ids, or a share such as 0.2")
        elif not 0 < v < 1:
            raise ValueError(f"a share of the training classes must lie between 0 and 1, got {v}")
        return v

    @model_validator(mode="after")
    def _fold_in_range(self) -> "ValidationConfig":
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} does not exist among {self.folds} folds (0..{self.folds - 1})")
        if self.folds > 1 and "classes" in self.model_fields_set:
            raise ValueError("give classes (one split) or folds (K-fold cross-validation), not both")
        return self


class DataConfig(Strict):
    dataset: str = Field(
        "glyphs",
        description="a registered dataset: glyphs (generated demo data), cub, cars, sop, inshop, "
        "folder, csv, unlabelled, or one a plug-in registers",
    )
    root: str | None = Field(None, description="the folder holding the dataset's files (csv: the CSV file)")
    image_size: int = Field(32, ge=8, description="side of the square training images; default: 32 for glyphs, 224 for every other dataset")
    transform: str = Field(
        "glyphs",
        description="a registered transform; default: glyphs for glyphs, paper "
        "(random resized crop + flip, the papers' augmentation) for every other dataset",
    )
    normalization: str = Field(
        "imagenet",
        description="the weights' input convention by name, or model: read "
        "from the backbone's pretrained configuration when the configuration is loaded",
    )
    skip_bad_images: bool = False
    test_fraction: float = Field(0.5, gt=0, lt=1, description="folder/csv without a split: share of classes held out")
    train_classes: list[str] | None = None
    test_classes: list[str] | None = None
    classes_per_batch: int = Field(45, ge=1)
    images_per_class: int = Field(2, ge=1)
    views: int = Field(2, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes; at most one per core this process may use is started")
    cache: Literal["none", "memory"] = Field(
        "none",
        description="memory: decode the training images once, before the first epoch, and keep them in shared memory at a "
        "short side of image_size × 256/224 (256 px for 224), for a loader that keeps up with a GPU; none: decode every epoch",
    )
    num_classes: int | None = Field(None, ge=2, description="use only the first N classes of each split (tests)")
    glyph_renders: int = Field(2, ge=1)
    glyph_seed: int = Field(0, description="seed of the demo data itself, independent of the run seed")
    holdout_images: float = Field(
        0.0, ge=0, lt=1, description="method classifier: share of each training class's images held out for accuracy"
    )
    validation: ValidationConfig | None = Field(
        None,
        description="validation data from the training split: evaluated every eval.every epochs and used to keep the best "
        "model (checkpoint.best), while the test split is evaluated once, at the end",
    )

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _check_name(v, DATASETS, "dataset")

    @field_validator("transform")
    @classmethod
    def _transform(cls, v: str) -> str:
        return _check_name(v, TRANSFORMS, "transform")

    @field_validator("normalization")
    @classmethod
    def _normalization(cls, v: str) -> str:
        return normalization_name(v)

    @model_validator(mode="after")
    def _follow_the_data(self) -> "DataConfig":
        # what the user leaves out follows the dataset: the demo's glyphs are 32 px drawings, anything
        # else is photos; written into __dict__ so the stored configuration says the resolved value
        # while model_fields_set still tells what the user gave
        glyphs = self.dataset == "glyphs"
        if "transform" not in self.model_fields_set:
            self.__dict__["transform"] = "glyphs" if glyphs else "paper"
        if "image_size" not in self.model_fields_set:
            self.__dict__["image_size"] = 32 if glyphs else 224
        return self

    @model_validator(mode="after")
    def _root_when_needed(self) -> "DataConfig":
        if DATASETS.info(self.dataset, "needs_root", True) and not self.root:
            raise ValueError(f"dataset {self.dataset!r} needs data.root (the folder holding its files; csv: the CSV file)")
        return self


class ModelConfig(Strict):
    backbone: str = "resnet18"
    embedding_dim: int = Field(512, ge=1)
    pretrained: bool = False
    weights: str | None = None
    normalize: bool = False
    freeze_batchnorm: bool = Field(
        False,
        description="batch-norm layers keep their running statistics while training (as Proxy-Anchor's "
        "BN-Inception recipes do); also makes N processes train exactly like one, since no statistic depends on the batch",
    )
    sync_batchnorm: bool = Field(True, description="under torchrun on GPUs: batch-norm statistics over the global batch")


class MetricLossConfig(Strict):
    name: str = Field(
        "proxy_anchor",
        description="an alias (proxy_anchor, triplet, multi_similarity, contrastive) or "
        "any pytorch-metric-learning loss by class name (ArcFaceLoss, ...)",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the loss (num_classes and embedding_size are filled in)"
    )
    miner: Component = Field(
        default_factory=lambda: Component(name="none"),
        description="none, an alias (distance_weighted, multi_similarity) or any pytorch-metric-learning miner by class name",
    )
    proxy_lr_multiplier: float = Field(100.0, gt=0, description="learnable loss parameters (proxies) train at this multiple of optim.lr")

    @model_validator(mode="after")
    def _components(self) -> "MetricLossConfig":
        check_component(Component(name=self.name, params=self.params), METRIC_LOSSES, "metric loss", "metric_loss", FILLED_METRIC_PARAMS)
        check_component(self.miner, MINERS, "miner", "metric_loss.miner")
        return self


class SourceModelConfig(Strict):
    """transfer.source (and ``embed --timm``): any timm model as the frozen source, with its own features,
    input size and normalisation (a pretrained foundation model, or a local weights file offline)."""

    name: str = Field(description="a timm model name, with the tag of its weights (vit_small_patch14_dinov2.lvd142m)")
    pretrained: bool = Field(True, description="timm's pretrained weights (from its cache, else downloaded); ignored when weights is set")
    weights: str | None = Field(None, description="a local state dict (.pt, .pth, .safetensors) of the model: nothing is downloaded")
    features: Literal["pooled", "cls", "avg_max"] = Field(
        "pooled",
        description="pooled: the model's own pooled pre-logits features; cls: the class token; "
        "avg_max: average + maximum over the feature map or patch tokens",
    )
    image_size: int | None = Field(
        None, ge=8, description="the side of the source's input images; default: the model's pretrained input size"
    )
    normalization: str = Field("model", description="the source's input convention; model: read from its pretrained configuration")

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw

    @field_validator("normalization")
    @classmethod
    def _normalization(cls, v: str) -> str:
        return normalization_name(v)

    @model_validator(mode="after")
    def _resolve(self) -> "SourceModelConfig":
        """The model's name is checked, and its image size and normalisation resolved, here, once, so the
        stored configuration says what the source was fed."""
        try:
            check_backbone_name(self.name)
        except ConfigError as err:
            raise ValueError(str(err).replace("timm backbone", "timm model")) from None
        if self.image_size is None:
            self.__dict__["image_size"] = pretrained_input_size(self.name) or 224
        if self.normalization == "model":
            try:
                self.__dict__["normalization"] = model_normalization(self.name)
            except ConfigError as err:  # named for data.normalization; here it is this section's key
                raise ValueError(str(err).replace("data.normalization: model: ", "normalization: model: ")) from None
        return self


class OptimConfig(Strict):
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0)
    epochs: int = Field(90, ge=1)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    on_nan: Literal["error", "skip"] = Field(
        "error", description="a non-finite loss stops the run (error) or its step is skipped and counted (skip)"
    )


class EvalConfig(Strict):
    recall_at: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    data: DataConfig | None = Field(None, description="evaluate on this dataset's test split instead of data's")
    every: int = Field(1, ge=0, description="evaluate every N epochs (0: only at the end)")
    batch_size: int = Field(256, ge=1)
    keep_views_gb: float = Field(
        16.0,
        ge=0,
        description="the test and validation images are decoded and preprocessed once and kept as uint8 up to this many GB: "
        "on the device when they take at most a quarter of its free memory, else in (pinned) host memory when they take at "
        "most half of what is available; larger sets, or 0, are decoded again at every evaluation",
    )
    metric: Literal["euclidean", "cosine"] = "euclidean"
    test: bool = Field(
        True,
        description="with data.validation: evaluate the test split once after training (false: never, as tune's trials do)",
    )
    agreement_at: list[int] = Field(
        default_factory=lambda: [10],
        description="transfer without labelled evaluation data (an unlabelled folder with data.holdout_images): "
        "agreement@k with the source on the held-out images, the share of each image's k nearest neighbours they share",
    )

    @field_validator("recall_at", "agreement_at")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"must be a non-empty list of positive integers, got {v}")
        return sorted(set(v))


class CheckpointConfig(Strict):
    every_steps: int = Field(0, ge=0, description="also save every N training steps (0: at the end of each epoch only)")
    keep: int = Field(1, ge=1, description="how many of the newest checkpoints to keep (more than 1: in checkpoints/)")
    best: str | None = Field(
        "auto",
        description="with data.validation: keep the model of the best validation epoch as best.pt, by this metric "
        "(auto: the run's primary metric, e.g. recall@1); null: keep none",
    )


class LoggingConfig(Strict):
    tensorboard: bool = Field(False, description="also write every logged number to RUN/tensorboard (needs: pip install tensorboard)")


# Keys that may change when a run resumes: they change how it runs, not what it computes.
RESUMABLE_KEYS = (
    "threads",
    "device",
    "compile",
    "data.num_workers",
    "eval.batch_size",
    "eval.keep_views_gb",
    "optim.on_nan",
    "checkpoint",
    "logging",
)


class RunConfig(Strict):
    method: str = Field(
        "source", description="a registered method: source, transfer, selfsup, classifier, mutual, or one a plug-in registers"
    )
    #: The method's own settings, validated by the model its class declares (``params_model``); written in a
    #: recipe as the section named after the method (``transfer:``, ``mutual:``), never by this name.
    method_section: dict[str, Any] = Field(default_factory=dict, exclude=True)
    name: str | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    precision: Literal["32", "bf16", "16"] = Field(
        "32", description="bf16: autocast on CPU or GPU; 16: float16 autocast with a gradient scaler (GPU only)"
    )
    deterministic: bool = Field(False, description="deterministic algorithms only (exact repeats and resumes; slower on GPU)")
    channels_last: bool = Field(False, description="images and models in channels-last memory format (faster convolutions on GPU)")
    compile: bool = Field(False, description="torch.compile the models (first steps are slow while it compiles)")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    metric_loss: MetricLossConfig = Field(default_factory=MetricLossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    _section: BaseModel | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, raw: Any) -> Any:
        """Earlier layouts read into this one; the section named after the method becomes its settings,
        and a method's recipe defaults fill the keys the recipe leaves out."""
        raw = upgrade(raw)
        if not isinstance(raw, dict):
            return raw
        if "method_section" in raw:
            raise ValueError("method_section: unknown key; a method's settings go in the section named after it")
        method = raw.get("method", "source")
        if not isinstance(method, str) or method not in METHODS:
            return raw  # the method field names what is wrong
        raw = dict(raw)
        others = [k for k in raw if isinstance(k, str) and k != method and k not in cls.model_fields and k in METHODS]
        if others:
            key = others[0]
            raise ValueError(
                f"{key}: settings of method {key!r}, but this run's method is {method!r}; remove the section or set method: {key}"
            )
        section = raw.pop(method, None)
        raw["method_section"] = {} if section is None else section
        if not _RECORDED.get():
            for key, value in getattr(METHODS.get(method), "recipe_defaults", {}).items():
                raw.setdefault(key, value)
        return raw

    @model_serializer(mode="wrap")
    def _section_under_its_name(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The method's settings are written as the section named after it, after ``metric_loss``."""
        out: dict[str, Any] = handler(self)
        if not self.method_section and self._section is None:
            return out
        keys = list(out)
        at = keys.index("metric_loss") + 1 if "metric_loss" in keys else len(keys)
        items = list(out.items())
        return dict(items[:at] + [(self.method, dict(self.method_section))] + items[at:])

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _check_name(v, METHODS, "method")

    @model_validator(mode="after")
    def _method_settings(self) -> "RunConfig":
        """The method's section validated by the model it declares, exactly as a plug-in's, and the
        method's own checks across sections."""
        if _RECORDED.get():
            return self
        method = METHODS.get(self.method)
        params_model: type[BaseModel] | None = getattr(method, "params_model", None)
        if params_model is None:
            if self.method_section:
                raise ValueError(f"{self.method}: method {self.method!r} takes no settings of its own; remove the section")
            return self
        try:
            section = params_model.model_validate(self.method_section)
        except ValidationError as err:  # named under the method's section, not as top-level keys
            raise ValueError(_problems(err, prefix=f"{self.method}.", model=params_model)) from None
        self._section = section
        self.__dict__["method_section"] = section.model_dump(mode="json")  # stored resolved, as the other sections
        check = getattr(method, "check_config", None)
        if check is not None:
            check(self)
        return self

    def section(self, model: type[SectionT]) -> SectionT:
        """The method's settings as ``model`` (its ``params_model``): what a method reads its section with."""
        if isinstance(self._section, model):
            return self._section
        return model.model_validate(self.method_section)  # a recorded configuration, read without importing the method

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # YAML reads `precision: 16` as a number

    @model_validator(mode="after")
    def _eval_data_like_training(self) -> "RunConfig":
        """``eval.data`` preprocesses its images as the model was trained unless it says otherwise."""
        data = self.eval.data
        if data is not None:
            for key in ("transform", "image_size"):
                if key not in data.model_fields_set:
                    data.__dict__[key] = getattr(self.data, key)
        return self

    @model_validator(mode="after")
    def _resolve_model_normalization(self) -> "RunConfig":
        """``normalization: model`` becomes the backbone's own convention here, once, so the stored
        configuration says what was used (and every model of a method, a cohort's members, must share it)."""
        datas = [data for data in (self.data, self.eval.data) if data is not None and data.normalization == "model"]
        if not datas:
            return self
        backbones_of = getattr(METHODS.get(self.method), "backbones", None)
        backbones = backbones_of(self) if backbones_of is not None else [self.model.backbone]
        found = {model_normalization(b) for b in backbones}
        if len(found) > 1:
            raise ValueError(
                f"data.normalization: model: the cohort's backbones {backbones} expect different "
                f"inputs ({', '.join(sorted(found))}); members share their views"
            )
        for data in datas:
            data.normalization = next(iter(found))
        return self

    @model_validator(mode="after")
    def _best_needs_validation(self) -> "RunConfig":
        if not self.eval.test and self.data.validation is None:
            raise ValueError("eval.test: false leaves a run without data.validation with nothing to evaluate; add data.validation")
        if self.checkpoint.best not in (None, "auto") and self.data.validation is None:
            raise ValueError(
                f"checkpoint.best: {self.checkpoint.best} chooses a model by its evaluation, which without "
                "data.validation is the test split; add data.validation (e.g. {classes: 0.2})"
            )
        return self


def _format_errors(err: ValidationError, origin: str, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line naming each problem's key; ``prefix`` and ``model``: the section the errors are inside."""
    return f"invalid configuration ({origin}): " + _problems(err, prefix, model)


def _problems(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    problems = []
    for e in err.errors():
        key = (prefix + ".".join(str(p) for p in e["loc"])) if e["loc"] else prefix.rstrip(".")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _model_at(model or RunConfig, e["loc"][:-1])
            if parent is not None:
                allowed = [name for name, field in parent.model_fields.items() if not field.exclude]
                if parent is RunConfig:
                    allowed.append("the section named after the method (transfer, mutual, ...)")
                msg += f"; allowed keys here: {', '.join(allowed)}"
        elif e["type"] != "value_error" and "input" in e:
            msg += f" (got {e['input']!r})"
        problems.append(f"{key}: {msg}" if key else msg)  # a check across keys names them in its message
    return "; ".join(problems)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` → (["optim", "lr"], 3e-4); the value is read as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)}); quote text values") from None
    return key.strip().split("."), value


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where."""
    if isinstance(err, yaml.reader.ReaderError):  # a control character: a binary file, or text damaged
        shown = f"#x{err.character:04x}" if isinstance(err.character, int) else repr(err.character)
        return f"character {shown} at position {err.position} is not text"
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or type(err).__name__}{where}"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key.path=value`` in a nested dict (validation happens afterwards, on the result)."""
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def build_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None, origin: str = "config") -> RunConfig:
    """Validate a nested dict (plus overrides) into a :class:`RunConfig`, or raise :class:`ConfigError`."""
    raw = apply_overrides(dict(raw or {}), overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def read_yaml(path: str | Path, what: str = "a recipe") -> Any:
    """The YAML document in ``path`` (``what`` it should be, for the message). A file that is not UTF-8
    text (a checkpoint or an image given by mistake), cannot be read or is not YAML is one
    :class:`ConfigError` naming it, whatever the machine's locale."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a text file (byte {err.start} is not UTF-8): {what} is YAML text; give the .yaml file") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None


def load_run_config(path: str | Path) -> RunConfig:
    """The configuration a run recorded (its ``config.yaml``), read to describe the run (``table``): the
    names and settings are validated, the components' constructors are not imported again."""
    token = _RECORDED.set(True)
    try:
        return load_config(path)
    finally:
        _RECORDED.reset(token)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe and apply ``--set`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of configuration keys, got {type(raw).__name__}")
    return build_config(raw, overrides, origin=str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a run's saved configuration and the one it resumes with, except
    those in :data:`RESUMABLE_KEYS`."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    try:  # a run saved in the earlier layout (transfer.sigma, ...) compares in this one
        saved = config_to_dict(build_config(saved, origin="the saved configuration"))
    except ConfigError:
        pass  # compared as it is: its differences are listed
    a, b = flat(saved), flat(current)
    allowed = tuple(RESUMABLE_KEYS)
    return sorted(
        f"{k}: {a.get(k, '(unset)')!r} → {b.get(k, '(unset)')!r}"
        for k in set(a) | set(b)
        if a.get(k) != b.get(k) and not any(k == r or k.startswith(r + ".") for r in allowed)
    )


def save_config(config: RunConfig, path: str | Path) -> None:
    atomic_write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), path)
