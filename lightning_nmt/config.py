"""Structured configs: the schema every file in `conf/` is validated against.

Registered in Hydra's ConfigStore as `train_schema` and `eval_schema` (`translate_schema`: `lightning_nmt.translate`,
which needs none of this module's imports); the primary
configs extend them through their defaults list, so a misspelt key (on the command line *or* inside a YAML
file), a wrong type or an unknown enum value is a clear error before anything runs.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from lightning_nmt.data.datamodule import ParallelDataModule
from lightning_nmt.data.formats import corpus_formats
from lightning_nmt.data.tokenizer import DEFAULT_SETTINGS as _TOKENIZER
from lightning_nmt.data.tokenizer import MODEL_TYPES as TOKENIZER_TYPES
from lightning_nmt.errors import ConfigError
from lightning_nmt.kernels.cpu import Speedups
from lightning_nmt.metrics import VAL_METRICS
from lightning_nmt.models import MODEL_TYPES, model_options
from lightning_nmt.optim import OPTIMIZERS, SCHEDULES, optimizer_options, schedule_options
from lightning_nmt.registry import option_keys
from lightning_nmt.search import DecodingConfig
from lightning_nmt.search.schema import decoding_schema, flat_decoding_keys

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
"""The `conf/` directory of the source tree (an absolute path, so console scripts find it)."""
_DATAMODULE = {name: p.default for name, p in inspect.signature(ParallelDataModule.__init__).parameters.items()}
"""The DataModule's argument defaults, which `DataConfig` takes."""


Corpus = Enum("Corpus", {name: name for name in corpus_formats()}, type=str)
"""`data.corpus` values: the registered corpus formats (`lightning_nmt.data.formats`)."""
TokenizerType = Enum("TokenizerType", {name: name for name in TOKENIZER_TYPES}, type=str)
"""`data.tokenizer.type` values: the sentencepiece model types `Tokenizer` trains."""


class LoggerType(str, Enum):
    """The loggers a run writes to, any number at once: `logger=csv`, `logger='[csv,wandb]'`, `logger=many` (all
    four), `logger=none`; each has its keys under its name (`logger.wandb.project`)."""

    csv = "csv"
    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"


class Resume(str, Enum):
    never = "never"
    auto = "auto"


@dataclass
class TokenizerConfig:
    """`data.tokenizer`; the defaults are the tokenizer's own (`DEFAULT_SETTINGS`)."""

    type: TokenizerType = TokenizerType(_TOKENIZER["model_type"])
    vocab_size: int = _TOKENIZER["vocab_size"]
    joint: bool = _TOKENIZER["joint"]
    character_coverage: float = _TOKENIZER["character_coverage"]
    lowercase: bool = _TOKENIZER["lowercase"]  # lowercase all text before training and encoding
    input_sentence_size: int = _TOKENIZER["input_sentence_size"]  # sentences per model at most: a random sample


def _data_config() -> type:
    """The `data:` schema: the keys every corpus has, then every key some format reads (`CorpusFormat` fields, with
    the format's default), so that `data=multi30k data.corpus=files` composes (a key the chosen format does not
    read is ignored). The defaults are the DataModule's, but for the corpus, which is the embedded sample (en->fr)
    here, as in conf/data/sample.yaml."""
    common: list[tuple[str, Any, Any]] = [
        ("corpus", Corpus, Corpus.sample), ("src_lang", str, "en"), ("tgt_lang", str, "fr"),
        ("train", Optional[str], None), ("val", Optional[str], None), ("test", Optional[str], None),  # noqa: UP045
        ("extra_tests", dict[str, str], field(default_factory=dict)),
        ("tokenizer", TokenizerConfig, field(default_factory=TokenizerConfig)),
        *((name, int, _DATAMODULE[name]) for name in ("max_tokens", "eval_max_tokens", "max_len")),
        ("cache_dir", str, _DATAMODULE["cache_dir"]), ("num_workers", int, _DATAMODULE["num_workers"]),
        ("preprocess_workers", Optional[int], None),  # noqa: UP045 (None: every available core)
    ]
    options: dict[str, tuple[Any, Any]] = {}
    for format_ in corpus_formats().values():
        for option in fields(format_):
            default = (field(default_factory=option.default_factory) if option.default_factory is not MISSING_FIELD
                       else None if option.default is MISSING_FIELD else option.default)
            kind = get_type_hints(format_)[option.name]
            if option.name in options and options[option.name][0] != kind:
                raise TypeError(f"data.{option.name} is declared twice with different types")
            options[option.name] = (kind, default)
    return make_dataclass("DataConfig", [*common, *((name, Optional[kind], default)  # noqa: UP045
                                                    for name, (kind, default) in options.items())])


DataConfig = _data_config()
"""`data:`, the arguments of `ParallelDataModule` (its docstring says what each means)."""


ModelType = Enum("ModelType", {name: name for name in MODEL_TYPES}, type=str)
"""`model.type` values: the registered model types (`lightning_nmt.models.MODEL_TYPES`)."""


def _model_config() -> type:
    """The `model:` schema: `type` and every key some model type reads (`ModelOptions` fields), each optional, so
    that a sweep may cross `model=basic,attention` with `model.attention=...` (a key the chosen type does not read
    is ignored, and `lightning_nmt.sweeps` knows it). Values live in conf/model/<type>.yaml."""
    fields: dict[str, Any] = {}
    for options in MODEL_TYPES.values():
        fields.update(get_type_hints(options))
    return make_dataclass("ModelConfig", [("type", ModelType, MISSING),
                                          *((name, Optional[kind], None) for name, kind in fields.items())])  # noqa: UP045 (OmegaConf reads Optional)


ModelConfig = _model_config()


OptimizerName = Enum("OptimizerName", {name: name for name in OPTIMIZERS}, type=str)
"""`optim.name` values: the registered optimizers (`lightning_nmt.optim.OPTIMIZERS`)."""
SchedulerName = Enum("SchedulerName", {name: name for name in SCHEDULES}, type=str)
"""`scheduler.name` values: the registered schedules (`lightning_nmt.optim.SCHEDULES`)."""


def _options_config(schema: str, table: dict[str, type], names: type[Enum], common: list[tuple[str, Any, Any]]) -> type:
    """The schema of the `optim:` or `scheduler:` group: `name` (a registered entry), the keys `common` lists, then
    every key some entry reads (the fields of its options), each optional: None is the chosen entry's default and a
    key it does not read is ignored, so `optim.name=sgd` composes over conf/optim/adam.yaml. Values live in
    conf/optim/<name>.yaml and conf/scheduler/<name>.yaml."""
    keys = option_keys(table.values(), schema)
    return make_dataclass(schema, [("name", names, MISSING), *common,
                                   *((key, Optional[kind], None) for key, kind in keys.items())])  # noqa: UP045


OptimConfig = _options_config("OptimConfig", OPTIMIZERS, OptimizerName, [
    ("max_nonfinite_steps", int, 5),  # consecutive steps with a NaN/inf loss or gradient norm (skipped) before a stop
])
"""`optim:`, the optimizer (`lightning_nmt.optim`) and the non-finite guard's limit (`lightning_nmt.guard`)."""
SchedulerConfig = _options_config("SchedulerConfig", SCHEDULES, SchedulerName, [])
"""`scheduler:`, the learning-rate schedule (`lightning_nmt.optim`)."""


DecodingSchema = decoding_schema()
"""`decoding:`, how the test step (and validation, `val_beam_size`) translates: `lightning_nmt.search`."""


@dataclass
class TrainerConfig:
    """Passed to `lightning.Trainer(**trainer)`; only the arguments a run needs."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = -1
    max_epochs: int | None = None
    max_time: str | None = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    deterministic: Any = False
    benchmark: bool | None = None
    enable_progress_bar: bool = True


@dataclass
class CSVLoggerConfig:
    """`logger.csv`: metrics in <run dir>/csv/metrics.csv (a resumed run keeps the rows before its checkpoint)."""

    enabled: bool = False  # conf/logger/csv.yaml (logger=csv) sets it, as each logger's file does
    flush_logs_every_n_steps: int = 100


@dataclass
class TensorBoardLoggerConfig:
    """`logger.tensorboard`: event files in <run dir>/tensorboard/ (`tensorboard --logdir outputs/`)."""

    enabled: bool = False
    default_hp_metric: bool = False  # true: Lightning's placeholder `hp_metric` scalar beside the hyperparameters


@dataclass
class WandbLoggerConfig:
    """`logger.wandb`: one Weights & Biases run per job (offline without credentials)."""

    enabled: bool = False
    project: str = "lightning-nmt"
    entity: str | None = None
    group: str | None = None  # None: <task_name>:<the configuration's overrides but the seed> (`lightning_nmt.loggers`)
    name: str | None = None  # None: the swept overrides
    tags: list[str] = field(default_factory=list)  # beside the seed, the sweep and the job's overrides
    offline: bool = False
    log_model: bool = False


@dataclass
class MLflowLoggerConfig:
    """`logger.mlflow`: one MLflow run per job (Lightning's `MLFlowLogger`)."""

    enabled: bool = False
    tracking_uri: str | None = None  # None: sqlite:///<sweep dir, or run dir>/mlflow.db; or http://HOST:PORT
    experiment_name: str | None = None  # None: task_name
    run_name: str | None = None  # None: the swept overrides
    tags: dict[str, str] = field(default_factory=dict)  # beside seed, sweep and group
    log_model: bool = False  # true: the best checkpoint as an artifact at the end


LOGGER_SECTIONS = {LoggerType.csv: CSVLoggerConfig, LoggerType.tensorboard: TensorBoardLoggerConfig,
                   LoggerType.wandb: WandbLoggerConfig, LoggerType.mlflow: MLflowLoggerConfig}
"""The schema of each logger's section, `logger.<name>`."""

RETIRED_LOGGER_KEYS = {"project": "wandb.project", "entity": "wandb.entity", "group": "wandb.group",
                       "name": "wandb.name", "tags": "wandb.tags", "offline": "wandb.offline",
                       "log_model": "wandb.log_model"}
"""The flat `logger.*` keys of the single-logger days (and `logger.type`), with their new place."""


@dataclass
class LoggerConfig:
    """`logger:` one section per logger; the run writes to those enabled, which `logger=<name>`,
    `logger='[csv,wandb]'` or `logger=many` choose (`logger=none`: no logger)."""

    csv: CSVLoggerConfig = field(default_factory=CSVLoggerConfig)
    tensorboard: TensorBoardLoggerConfig = field(default_factory=TensorBoardLoggerConfig)
    wandb: WandbLoggerConfig = field(default_factory=WandbLoggerConfig)
    mlflow: MLflowLoggerConfig = field(default_factory=MLflowLoggerConfig)
    # retired keys, accepted only to say their new spelling (`check_logger`)
    type: Any = None
    project: Any = None
    entity: Any = None
    group: Any = None
    name: Any = None
    tags: Any = None
    offline: Any = None
    log_model: Any = None


def enabled_loggers(logger: Any) -> list[LoggerType]:
    """The loggers a run writes to, in `LoggerType` order."""
    return [kind for kind in LoggerType if logger[kind.value].enabled]


def check_logger(logger: Any) -> None:
    """One-line `ConfigError`s: a retired flat key (`logger.type`, `logger.project`, ...) says its new spelling; a
    key set for a logger not chosen (`logger.wandb.project=x` without `logger=wandb`) says how to choose it;
    `logger=mlflow` without the mlflow package says how to install it."""
    moved = [f"logger.{key} is now logger.{new}" for key, new in RETIRED_LOGGER_KEYS.items()
             if logger.get(key) is not None]
    if logger.get("type") is not None:
        moved.insert(0, f"logger.type is gone: choose loggers with logger={logger.type} or logger='[csv,wandb]'")
    if moved:
        raise ConfigError("; ".join(moved))
    for kind, schema in LOGGER_SECTIONS.items():
        section = logger[kind.value]
        changed = [key for key, default in asdict(schema()).items() if section[key] != default]
        if changed and not section.enabled:
            raise ConfigError(f"logger.{kind.value}.{changed[0]} is set but {kind.value} is not a chosen logger: "
                              f"add logger={kind.value} (several: logger='[csv,{kind.value}]')")
    if logger.mlflow.enabled and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("logger=mlflow needs the mlflow package: pip install -e '.[mlflow]'")


@dataclass
class ModelCheckpointConfig:
    every_n_train_steps: int | None = None
    save_top_k: int = 1
    monitor: str = "val/bleu"
    mode: str = "max"


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val/bleu"
    mode: str = "max"
    patience: int = 5


@dataclass
class CallbacksConfig:
    model_checkpoint: ModelCheckpointConfig = field(default_factory=ModelCheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    num_heatmaps: int = 4  # test sentences drawn as attention heatmaps in <run>/attention/
    num_examples: int = 5  # example translations logged at each validation


@dataclass
class PathsConfig:
    root_dir: str = "."
    output_dir: str = "."
    cache_dir: str = ".cache/lightning_nmt"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    decoding: DecodingSchema = field(default_factory=DecodingSchema)
    label_smoothing: float = 0.1
    seed: int = 42
    task_name: str = "train"
    resume: Resume = Resume.never
    ckpt_path: str | None = None
    test_after_training: bool = True
    average_checkpoints: int = 0  # k > 0: after fit, average the best k checkpoints and test that model instead
    speedups: Speedups = Speedups.auto  # auto: the CPU kernels with trainer.accelerator=cpu; off: plain PyTorch


EvalConfig = make_dataclass("EvalConfig", [
    ("ckpt_path", Any, "???"),  # a checkpoint, a list of checkpoints (an ensemble), or an exported directory
    ("data", Optional[DataConfig], None),  # noqa: UP045 (None: the corpus the checkpoint was trained on)
    *flat_decoding_keys(),  # beam_size=, strategy=, top_k=, ...: None keeps the checkpoint's decoding.*
    ("batch_max_tokens", int, 8192),
    ("output", Optional[str], None),  # noqa: UP045 (JSON file, translations beside it; default <run dir>/eval.json)
    ("length_buckets", int, 3),  # also report BLEU of the shortest ... longest third of the sources
    ("split", str, "test"),  # test: the test sets (data.test, data.extra_tests); val: tune beam/length penalty there
    ("accelerator", str, "cpu"),
    ("speedups", Speedups, Speedups.auto),  # auto: the CPU kernels with accelerator=cpu; off: plain PyTorch
    ("paths", PathsConfig, field(default_factory=PathsConfig)),
    ("task_name", str, "eval"),
])
"""`lnmt-eval`'s keys (conf/eval.yaml)."""


def check_values(cfg: Any) -> None:
    """Ranges the schema's types cannot say, checked before any data is read: a `model.*` value no model can have
    (`ModelOptions.check`), a `decoding.*` value no search can use (`DecodingConfig.check`), an `optim.*` or
    `scheduler.*` value the chosen optimizer or schedule refuses (`OptimizerOptions.check`, `ScheduleOptions.check`),
    a label smoothing value out of range, a callback monitoring what validation does not log, a logger key that is
    retired or set for a logger not chosen (`check_logger`).
    One-line `ConfigError` naming the key."""
    rules = [
        ("label_smoothing", cfg.label_smoothing, 0 <= cfg.label_smoothing < 1, "must be in [0, 1)"),
        ("optim.max_nonfinite_steps", cfg.optim.max_nonfinite_steps, cfg.optim.max_nonfinite_steps >= 0,
         "must not be negative"),
        ("callbacks.early_stopping.patience", cfg.callbacks.early_stopping.patience,
         cfg.callbacks.early_stopping.patience >= 0, "must not be negative"),
    ]
    for key, value, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {value}")
    optimizer_options(cfg.optim).check()
    schedule_options(cfg.scheduler).check()
    monitors = [f"val/{name}" for name in VAL_METRICS] + ["train/loss"]
    checked = ["model_checkpoint"] + (["early_stopping"] if cfg.callbacks.early_stopping.enabled else [])
    for key in checked:
        callback = cfg.callbacks[key]
        if callback.monitor not in monitors:
            raise ConfigError(f"callbacks.{key}.monitor={callback.monitor!r} is not logged; "
                              f"valid: {', '.join(monitors)}")
        if callback.mode not in ("min", "max"):
            raise ConfigError(f"callbacks.{key}.mode must be min or max, got {callback.mode!r}")
    if cfg.model.get("share_embeddings") and not cfg.data.tokenizer.joint:
        raise ConfigError("model.share_embeddings needs one vocabulary for both sides (data.tokenizer.joint=true)")
    check_logger(cfg.logger)
    try:
        model_options(cfg.model).check()
        DecodingConfig.from_dict(OmegaConf.to_container(cfg.decoding, resolve=True, enum_to_str=True)).check()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
