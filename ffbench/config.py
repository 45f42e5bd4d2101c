"""The config schema: every key's one home (default, type, allowed values, one-line doc).

Hydra composes conf/config.yaml over these dataclasses, so a misspelt key or a wrong type is
rejected before any work. The options of a group (`activation=gelu`, `algo=bp`, ...) are the
names of the registries the code dispatches on; an option needs a YAML file in conf/<group>/
only for the values in which it differs from the schema (e.g. conf/optimizer/sgd.yaml).
`validate` checks what Hydra cannot express (allowed values, bounds, combinations), and the
option tables of `ffbench --help` and docs/options.md are generated from the same fields.
"""

import ast
import difflib
import functools
import importlib
import importlib.resources
import importlib.util
import sys
import typing
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig, OmegaConf

from ffbench.errors import FFBenchError

BOUNDS = {
    "positive": (lambda v: v > 0, "must be positive", "set {key}=<a value above 0>"),
    "non_negative": (lambda v: v >= 0, "must not be negative", "set {key}=0 or more"),
    "fraction": (lambda v: 0 < v < 1, "must be between 0 and 1", "set {key}=0.5, say"),
}


class Registry:
    """The allowed values of a key: the names of the registry `module.NAME` (a dict next to
    the code it names), with `first` before them. The names are read without running the
    module, which imports the training stack (torch), so that the schema and its option
    names load in a moment (ffbench-sync, the settings hash, composing a config): from the
    module's source while it is not imported, from the dict itself once it is (an entry added
    at run time counts). tests/unit/test_registries.py checks that the two agree."""

    def __init__(self, module: str, name: str, first: tuple = ()):
        self.module, self.name, self.first = module, name, first

    def __iter__(self):
        loaded = sys.modules.get(f"ffbench.{self.module}")
        names = getattr(loaded, self.name) if loaded else written_keys(self.module, self.name)
        return iter((*self.first, *names))


@functools.cache
def written_keys(module: str, name: str) -> tuple:
    """The keys of the dict `NAME = {...}` as written in ffbench/<module>.py (string
    literals), read with ast; the imported module's, where the source is not a dict literal."""
    source = Path(importlib.util.find_spec(f"ffbench.{module}").origin).read_text()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if [getattr(t, "id", None) for t in targets] == [name] and isinstance(node.value, ast.Dict):
            return tuple(ast.literal_eval(k) for k in node.value.keys)
    return tuple(getattr(importlib.import_module(f"ffbench.{module}"), name))


def key(
    default,
    doc: str,
    choices=(),
    bound: str | None = None,
    *,
    ignored_by: dict | None = None,
    ignored_at_default_by: dict | None = None,
    result: bool = True,
    shown_as: str | None = None,
):
    """A schema field: `choices` a Registry or a tuple of the allowed values; `bound` one of
    BOUNDS. What a run's result depends on (settings.py): the key counts,
    unless `result` is false (where things are kept, never what is computed) or the job's
    options are among those of `ignored_by` ({selector key: options that never read this
    key}: any match drops it), or among those of `ignored_at_default_by` while the key has
    its default (options that came to read the key after their runs were recorded: those runs
    keep their hashes). A new option is in no such list, so every key counts for it:
    a forgotten declaration costs a duplicate run, never a wrong reuse. `shown_as`: the type
    the option tables give a key whose type the schema cannot state (typing.Any)."""
    metadata = {
        "doc": doc,
        "choices": choices,
        "bound": bound,
        "ignored_by": ignored_by or {},
        "ignored_at_default_by": ignored_at_default_by or {},
        "result": result,
        "shown_as": shown_as,
    }
    return field(default=default, metadata=metadata)


# The options that never read a key, for `ignored_by` (each names the options it lists, so
# that a new option, which they do not name, has the key counted).
BACKPROP = {"algo.name": ("bp", "bp_ckpt")}  # FF's keys: the goodness and algo.*
FORWARD_FORWARD = {"algo.name": ("ff",)}
SPATIAL = {"model.name": ("conv", "local", "user")}  # the MLP's width
MLP = {"model.name": ("mlp",)}  # the spatial models' sizes and goodness per position
NO_SPATIAL_LAYERS = {"model.name": ("mlp", "user")}  # what sizes the built-in spatial layers
NO_BLACKBOX = {"model.blackbox": ("none",)}
BUILT_IN_MODELS = {"model.name": ("mlp", "conv", "local")}  # model.blocks: model=user's
USER_BLOCKS = {"model.name": ("user",)}  # the built-in layers' sizes
BUILT_IN_DATA = ("digits", "mnist", "fashion_mnist", "kmnist", "cifar10")


@dataclass
class DatasetConfig:
    name: str = key(
        MISSING,
        "Which data set (digits is bundled; the others download once; user and folder: yours, docs/extending.md).",
        Registry("data", "LOADERS"),
    )
    root: str | None = key(
        None,
        "Folder of the data files (or its NAME/ subfolder); unset: $FFBENCH_DATA, else ~/.cache/ffbench/NAME.",
        result=False,
    )
    mirror: str | None = key(
        None,
        "Base URL to download the files from instead of the data set's usual mirrors.",
        result=False,
    )
    checksums: str | None = key(
        None,
        "File of MD5s in `md5sum` format replacing the built-in checksums (data made by hand).",
        result=False,
    )
    normalize: bool = key(
        False, "Standardise each channel by the training split's mean and standard deviation."
    )
    val_size: int = key(
        5000,
        "Examples held out of the training data for validation (model selection, never test).",
        bound="positive",
    )
    test_size: int | None = key(
        None,
        "Examples held out for testing, for data sets without an official test split (digits).",
        ignored_by={"dataset.name": ("mnist", "fashion_mnist", "kmnist", "cifar10")},
    )
    split_seed: int = key(
        0, "Seed of the train/validation(/test) split, fixed so every run sees the same split."
    )
    train: typing.Any = key(
        None,
        "user: your training examples, a `_target_` (and its arguments) returning (inputs, labels) tensors or a torch Dataset of (input, label) pairs; validation is held out of them.",
        ignored_by={"dataset.name": (*BUILT_IN_DATA, "folder")},
        shown_as="`_target_`",
    )
    test: typing.Any = key(
        None,
        "user: your test examples, a `_target_` like dataset.train; unset: dataset.test_size of the training examples are held out.",
        ignored_by={"dataset.name": (*BUILT_IN_DATA, "folder")},
        shown_as="`_target_`",
    )
    path: str | None = key(
        None,
        "folder: a folder of train.npz (and test.npz), arrays x and y, or of MNIST-format IDX files.",
        ignored_by={"dataset.name": (*BUILT_IN_DATA, "user")},
    )
    num_classes: int | None = key(
        None,
        "user, folder: classes; unset: the data set's `classes` (ImageFolder's), else the largest training label + 1.",
        bound="positive",
        ignored_by={"dataset.name": BUILT_IN_DATA},
    )
    augment: str = key(
        "none",
        "A fresh random variant of every training image before each pass, for FF and BP alike (seeded by trainer.seed; validation and test untouched): a random crop of the zero-padded image, a horizontal flip of half, or both.",
        Registry("data", "AUGMENTATIONS"),
        ignored_by={"dataset.augment": ("none",)},
    )
    crop_padding: int = key(
        2,
        "crop: zeros padded on each side before the crop (the largest shift in pixels).",
        bound="positive",
        ignored_by={"dataset.augment": ("none", "flip")},
    )


@dataclass
class ModelConfig:
    name: str = key(
        "mlp",
        "Hidden layers: fully connected, convolutional, locally connected (a convolution without weight sharing), or your own blocks (model.blocks).",
        Registry("models", "LAYERS"),
    )
    blocks: typing.Any = key(
        None,
        "user: your hidden layers, one nn.Module each: a `_target_` (and its arguments) returning a list of them, or a list of `_target_`s (docs/extending.md).",
        ignored_by=BUILT_IN_MODELS,
        shown_as="`_target_` or list",
    )
    depth: int = key(2, "Number of hidden layers.", bound="positive", ignored_by=USER_BLOCKS)
    width: int = key(256, "mlp: units per hidden layer.", bound="positive", ignored_by=SPATIAL)
    norm: str = key(
        "mean_square",
        "Normalisation of each layer's input (mean_square: the reference code; class_groups: standard within each class's channel group, the data as one vector: DeeperForward).",
        Registry("activations", "NORMALISATIONS"),
    )
    init: str = key(
        "reference",
        "Initial weights of FF's and BP's layers: N(0, 1/fan-in) and zero biases (reference code), or torch's default.",
        Registry("models", "INITS"),
    )
    channels: typing.Any = key(
        32,
        "conv, local: channels (feature maps) of every hidden layer, or a list of one per layer (e.g. [20,80,240]).",
        ignored_by=NO_SPATIAL_LAYERS,
    )
    kernel: typing.Any = key(
        5,
        "conv, local: side of each layer's square receptive field, or a list of one per layer (e.g. [5,5,3,3]).",
        bound="positive",
        ignored_by=NO_SPATIAL_LAYERS,
    )
    stride: typing.Any = key(
        2,
        "conv, local: step between neighbouring receptive fields, or a list of one per layer.",
        bound="positive",
        ignored_by=NO_SPATIAL_LAYERS,
    )
    padding: typing.Any = key(
        2,
        "conv, local: zeros added on each side of each layer's input, or a list of one per layer.",
        bound="non_negative",
        ignored_by=NO_SPATIAL_LAYERS,
    )
    groups: typing.Any = key(
        1,
        "conv: channel groups of every layer's convolution, or a list of one per layer (e.g. [1,10,10]: CwComp's class groups kept apart).",
    )
    pool: typing.Any = key(
        1,
        "conv, local: pool each hidden layer's output over pool x pool windows (1: none), or a list of one per layer (e.g. [1,2,1,2]: CwComp's).",
        bound="positive",
    )
    pooling: str = key(
        "max",
        "conv, local: a pooling window's largest activity (max) or its mean (avg: DeeperForward's TinyCNN).",
        Registry("models", "POOLS"),
        ignored_by={"model.pooling": ("max",), **NO_SPATIAL_LAYERS},
    )
    dropout: float = key(
        0.0,
        "Fraction of each hidden layer's activities zeroed in training, FF and BP alike (after the activation, before pooling; DeeperForward's 0.2).",
        bound="non_negative",
        ignored_by={"model.dropout": (0.0,)},
    )
    shortcuts: typing.Any = key(
        "none",
        "Parameter-free shortcuts, FF and BP alike: none, or one of none/add/concat per hidden layer; a shortcut adds or concatenates the output of the layer two below (average-pooled to fit) to what the layer passes up (DeeperForward's ResNet: [none,none,add,none,concat,...]).",
        ignored_by={"model.shortcuts": ("none",)},
        shown_as="str or list",
    )
    batch_norm: bool = key(
        False,
        "Batch-normalise each hidden layer's output (after pooling), FF and BP alike: what FF's goodness reads and the layer passes up (CwComp).",
        ignored_by={"model.batch_norm": (False,)},
    )
    norm_scope: str = key(
        "layer",
        "conv, local: normalise each hidden layer's whole activity vector, or each position's channel vector.",
        ("layer", "position"),
        ignored_by=NO_SPATIAL_LAYERS,
    )
    blackbox: str = key(
        "none",
        "A transform without gradient between two hidden layers (FF trains through it).",
        Registry("models", "BLACKBOXES", first=("none",)),
        ignored_by=NO_BLACKBOX,
    )
    blackbox_after: int = key(
        1,
        "The black box sits on the output of this hidden layer (1 = the first).",
        ignored_by=NO_BLACKBOX,
    )
    blackbox_grad: str = key(
        "none",
        "BP through the black box: refused, or straight-through (backward treats it as the identity).",
        ("none", "straight_through"),
        ignored_by=NO_BLACKBOX | FORWARD_FORWARD,
    )
    blackbox_step: float = key(
        0.5,
        "quantize: width of a quantisation level.",
        bound="positive",
        ignored_by={"model.blackbox": ("none", "sign", "numpy")},
    )


@dataclass
class AlgoConfig:
    name: str = key(
        MISSING,
        "Learning rule: Forward-Forward, backprop, or backprop with per-layer gradient checkpointing.",
        Registry("learners", "LEARNERS"),
    )
    loss: str = key(
        "threshold",
        "FF: each layer's loss: threshold (the paper), symba (pairs), or cwc (cross-entropy over channel groups, one per class; no negatives).",
        Registry("goodness", "LOSSES"),
        ignored_by=BACKPROP,
    )
    theta: float | None = key(
        None,
        "FF: goodness threshold; unset picks the one that fits the goodness and the normalisation.",
        ignored_by=BACKPROP,
    )
    alpha: float = key(
        4.0,
        "FF, symba: sharpness, softplus(-alpha * (G_pos - G_neg)).",
        bound="positive",
        ignored_by=BACKPROP | {"algo.loss": ("threshold", "cwc")},
    )
    temperature: float = key(
        1.0,
        "FF, cwc: the class goodnesses (mean per unit) are divided by it before the softmax.",
        bound="positive",
        ignored_by=BACKPROP,
    )
    # The defaults below are what every run did before the keys existed: their hashes stand.
    class_goodness: str = key(
        "groups",
        "FF, cwc: each class's goodness from its own channel group (CwComp, DeeperForward), or from spatial patches through a fixed random projection (ASGE).",
        Registry("ff", "CLASS_GOODNESS"),
        ignored_by=BACKPROP | {"algo.class_goodness": ("groups",)},
    )
    patches: typing.Any = key(
        2,
        "FF, cwc, projection, conv or local: each map pooled into patches x patches regions per channel, or a list of one per layer (ASGE: fewer as channels grow).",
        ignored_by=BACKPROP | MLP | {"algo.class_goodness": ("groups",)},
    )
    predictor: str = key(
        "sum",
        "FF: the goodness prediction sums the evaluated layers' goodness, or the contiguous range of layers chosen on validation at each evaluation (DeeperForward), or is a softmax layer on the top layer's class goodness (cwc; CwComp).",
        Registry("ff", "PREDICTORS"),
        ignored_by=BACKPROP | {"algo.predictor": ("sum",)},
    )
    negatives: str = key(
        "random_label",
        "FF: wrong label drawn uniformly, from the read-out's beliefs (hard), hybrid images (unsupervised), or none (cwc).",
        Registry("ff_data", "NEGATIVES"),
        ignored_by=BACKPROP,
    )
    hybrid_blur_steps: int = key(
        6,
        "FF, hybrid negatives: blur passes that make the random mask smooth.",
        bound="non_negative",
        ignored_by=BACKPROP | {"algo.negatives": ("random_label", "hard_label", "none")},
    )
    evaluation: str = key(
        "goodness",
        "FF: the headline prediction: label with the largest goodness, or the linear read-out.",
        ("goodness", "readout"),
        ignored_by=BACKPROP,
    )
    eval_skip_first: bool = key(
        True,
        "FF: leave the first hidden layer out of the evaluation (paper), if depth > 1.",
        ignored_by=BACKPROP,
    )
    label_input: str = key(
        "pixels",
        "FF: the label one-hot in the first pixels (paper), as one input plane per class, as a class pattern over the image, or none (cwc, hybrid).",
        Registry("ff_data", "LABEL_INPUTS"),
        ignored_by=BACKPROP,
    )
    label_strength: float = key(
        1.0,
        "FF: value written into the true label's input (the others get 0).",
        ignored_by=BACKPROP,
    )
    peer_norm: float = key(
        0.0,
        "FF: peer normalisation: pushes each unit's mean activity towards its layer's (reference code: 0.03); 0 turns it off.",
        bound="non_negative",
        ignored_by=BACKPROP,
    )
    readout: bool = key(
        True,
        "FF: train a linear read-out alongside (one extra label-free forward pass per minibatch).",
        ignored_by=BACKPROP,
    )
    readout_lr: float = key(
        0.01,
        "FF: learning rate of the linear read-out (and of algo.predictor=softmax's layer).",
        bound="positive",
        ignored_by=BACKPROP,
    )
    readout_weight_decay: float = key(
        0.003,
        "FF: L2 weight cost of the read-out's weights (reference code: 0.003).",
        bound="non_negative",
        ignored_by=BACKPROP,
    )
    schedule: str = key(
        "simultaneous",
        "FF: every layer on every minibatch, or layer by layer (each for trainer.epochs).",
        ("simultaneous", "sequential"),
        ignored_by=BACKPROP,
    )
    # Off it is the mode every run had before the key existed: their settings hashes stand.
    step_each_layer: bool = key(
        False,
        "FF at its memory floor: each layer steps right after its backward and frees its gradients (one layer's alive at a time); sequential: only the layer in training keeps optimizer state. Same results.",
        ignored_by=BACKPROP | {"algo.step_each_layer": (False,)},
    )
    layer_windows: typing.Any = key(
        None,
        "FF: each hidden layer trains only in its own window of epochs, a list of one [first, last] per layer (1-based, inclusive; CwComp's MNIST: [[1,2],[1,3],[1,4],[1,5]]); below the top layer in training, a layer out of its window runs forward only. Unset: every layer every epoch.",
        ignored_by=BACKPROP | {"algo.layer_windows": (None,)},
        shown_as="list or null",
    )


@dataclass
class GoodnessConfig:
    name: str = key(
        MISSING,
        "How a layer's activities become one number per example.",
        Registry("goodness", "GOODNESS"),
        ignored_by=BACKPROP,
    )
    inverted: bool = key(
        False,
        "Positive data minimises the goodness and negative data maximises it (the paper's min ssq).",
        ignored_by=BACKPROP,
    )
    spatial: str = key(
        "whole",
        "conv, local: goodness of the whole layer, or per position (needs model.norm_scope=position).",
        ("whole", "position"),
        ignored_by=BACKPROP | MLP,
    )
    feature_fraction: float = key(
        0.5,
        "split: share of units that are feature detectors (the rest detect violations).",
        bound="fraction",
        ignored_by=BACKPROP | {"goodness.name": ("sumsq", "meansq", "sumabs", "mean")},
    )


@dataclass
class ActivationConfig:
    name: str = key(
        MISSING,
        "Non-linearity of every hidden layer, for FF and BP alike.",
        Registry("activations", "ACTIVATIONS"),
    )
    nu: float = key(
        1.0,
        "tdist: degrees of freedom of the Student-t.",
        bound="positive",
        ignored_by={
            "activation.name": (
                "relu",
                "relu_fullgrad",
                "gelu",
                "leaky_relu",
                "silu",
                "tanh",
                "sigmoid",
                "softplus",
            )
        },
    )


@dataclass
class OptimizerConfig:
    name: str = key(
        MISSING, "Optimizer of every trained parameter.", Registry("experiment", "OPTIMIZERS")
    )
    lr: float = key(
        1e-3, "Learning rate of the hidden layers (and BP's output layer).", bound="positive"
    )
    momentum: float = key(
        0.0,
        "sgd: momentum (torch's form: b = momentum * b + g).",
        bound="non_negative",
        ignored_by={"optimizer.name": ("adam", "adamw")},
    )
    weight_decay: float = key(
        0.0,
        "L2 weight cost of the layers' weights (biases are never decayed; adamw: decoupled, lr x weight_decay x w per step).",
        bound="non_negative",
    )


@dataclass
class TrainerConfig:
    epochs: int = key(
        50,
        "Passes over the training data (per layer, in FF's sequential schedule).",
        bound="positive",
    )
    batch_size: int = key(
        32, "Examples per minibatch (FF adds as many negatives).", bound="positive"
    )
    eval_every: int = key(
        1,
        "Measure validation accuracy after every this many passes, and after the last (FF's goodness evaluation runs each example once per label).",
        bound="positive",
    )
    seed: int = key(
        0, "Seed of initialisation, shuffling and negative labels; reset at the start of every job."
    )
    device: str = key("auto", "auto: cuda, then mps, then cpu.", ("auto", "cpu", "cuda", "mps"))
    num_threads: int | None = key(
        None, "CPU threads for torch; unset: torch's default for this machine (one per core)."
    )
    lr_schedule: str = key(
        "constant",
        "Learning-rate schedule (linear_decay: constant for the first half, then linearly down to 1/epochs; cosine: half a cosine from the rate down towards trainer.lr_floor of it).",
        Registry("experiment", "LR_SCHEDULES"),
    )
    lr_floor: float = key(
        0.0,
        "cosine: the fraction of each rate the cosine falls towards (DeeperForward 0.1: 0.08 to 0.008; ASGE 0.05: 2e-4 to 1e-5).",
        bound="non_negative",
        ignored_by={"trainer.lr_schedule": ("constant", "linear_decay")},
    )
    precision: str = key(
        "fp32",
        "fp32; tf32 (CUDA matrix products); bf16 (autocast: matrix products in bfloat16).",
        ("fp32", "tf32", "bf16"),
    )
    compile: bool = key(
        False, "torch.compile each layer's computation (the first epoch pays the compile time)."
    )
    matmul_reference: bool = key(
        False,
        "After training, time plain matmuls of one step's shapes at this precision (a few seconds; MLP only) and log matmul_gflops_per_s and matmul_ratio.",
    )
    grad_accum_steps: int = key(
        1,
        "Split each minibatch into this many micro-batches, one backward each, one step: the gradient of the whole minibatch at one micro-batch's activations (FF: the same update where each example's loss is its own: not with batch norm, peer normalisation or negatives drawn at random).",
        bound="positive",
        ignored_at_default_by=FORWARD_FORWARD,  # FF reads it since 2026-12-06
    )
    checkpoint: bool = key(
        False,
        "Save learner, optimizer and random state after every pass (checkpoint.pt in the job's folder); a rerun of the same settings continues its killed or failed run from there.",
        result=False,
    )


@dataclass
class MeasureConfig:
    memory: bool = key(
        True,
        "Record peak saved activations, peak RSS, CUDA peaks, parameter and optimizer-state sizes.",
    )
    # Off it is what every run did before the key existed: their settings hashes stand.
    total: bool = key(
        False,
        "With memory, every run counts every tensor training holds, op by op, in the first pass of each stage (peak_total_mb and its breakdown at the peak: parameters, gradients, optimizer state, saved activations, other); true counts in every pass (the same peak, tested; slows a digits net about 3x).",
        ignored_by={"measure.total": (False,), "measure.memory": (False,)},
    )


@dataclass
class TrackingConfig:
    uri: str | None = key(
        None,
        "MLflow tracking URI; unset: $MLFLOW_TRACKING_URI, else SQLite in outputs/mlflow.db.",
        result=False,
    )
    experiment: str = key(
        "ffbench", "MLflow experiment; $MLFLOW_EXPERIMENT_NAME overrides it.", result=False
    )
    ui_url: str | None = key(
        None,
        "MLflow UI address in the links a sweep prints; unset: the tracking server's, else http://127.0.0.1:5000 (make ui).",
        result=False,
    )
    log_artifacts: bool = key(
        True, "Store the resolved config and the job's .hydra/ folder with the run.", result=False
    )
    log_model: bool = key(
        False,
        "Log the trained learner as an MLflow model of the run; mlflow.pyfunc.load_model(...).predict(rows) gives labels.",
        result=False,
    )
    system_metrics: bool = key(
        False,
        "Sample CPU, memory, disk, network (GPU with nvidia-ml-py) into the run's System metrics tab.",
        result=False,
    )
    system_metrics_interval_s: float = key(
        10.0,
        "Seconds between two samples of tracking.system_metrics.",
        bound="positive",
        result=False,
    )
    heartbeat_s: float = key(
        60.0,
        "Seconds between a running job's signs of life; one silent for 3 is marked FAILED (process lost).",
        bound="positive",
        result=False,
    )
    offline_wait_s: float = key(
        60.0,
        "Seconds a job whose tracking server went away waits for it at its end; then it exits 1, its run kept for `ffbench-sync FOLDER`.",
        bound="non_negative",
        result=False,
    )


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    goodness: GoodnessConfig = field(default_factory=GoodnessConfig)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    skip_finished: bool = key(
        True,
        "Sweeps: skip a job whose settings already have a FINISHED run (false: train anyway).",
        result=False,
    )
    resume: bool | None = key(
        None, "Deprecated: the old name of skip_finished; when given, it wins.", result=False
    )


# The config groups: one option each; a researcher compares runs by them (params and tags).
GROUPS = ("dataset", "model", "algo", "goodness", "activation", "optimizer")


def sections() -> list:
    """(name, dataclass) of every section of the schema, in order."""
    return [(f.name, f.type) for f in fields(Config) if is_dataclass(f.type)]


def schema_keys() -> list:
    """(dotted key, dataclass field) of every key, sections first, then top-level keys."""
    keys = [(f"{name}.{f.name}", f) for name, kind in sections() for f in fields(kind)]
    return keys + [(f.name, f) for f in fields(Config) if not is_dataclass(f.type)]


@functools.cache
def schema_field(dotted: str):
    """The dataclass field of the schema key `dotted` (the schema is fixed: looked up once)."""
    return dict(schema_keys())[dotted]


def allowed(f) -> tuple:
    """The allowed values of the schema field `f` (empty: any value of its type)."""
    return tuple(f.metadata["choices"])


def ignored(cfg, dotted: str) -> bool:
    """Whether the result of the job `cfg` does not depend on the schema key `dotted`, as its
    field declares: settings.py leaves it out of the hash, and the checks of validate() that
    concern it do not apply."""
    f = schema_field(dotted)
    if not f.metadata["result"]:
        return True

    def any_of(selected: dict) -> bool:
        return any(OmegaConf.select(cfg, key) in options for key, options in selected.items())

    at_default = OmegaConf.select(cfg, dotted) == f.default
    return any_of(f.metadata["ignored_by"]) or (
        at_default and any_of(f.metadata["ignored_at_default_by"])
    )


def _has_yaml(group: str, name: str) -> bool:
    return importlib.resources.files("ffbench.conf").joinpath(group, f"{name}.yaml").is_file()


def register_schemas() -> None:
    """The schema, as `schema` in conf/config.yaml's defaults, and one option per registry name
    of each group, unless conf/<group>/<name>.yaml gives that option values of its own."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    # `$` escaped: Hydra fills the help template with string.Template
    OmegaConf.register_new_resolver(
        "ffbench_options", lambda: options_text().replace("$", "$$"), replace=True
    )
    keys = dict(schema_keys())
    for group in GROUPS:
        for name in allowed(keys[f"{group}.name"]):
            if not _has_yaml(group, name):
                store.store(group=group, name=name, node={"name": name})


def compose(overrides=()):
    """The config `ffbench` would run with these overrides, for scripts and tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_schemas()
    with initialize_config_module(config_module="ffbench.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def validate(cfg) -> None:
    """Reject values that would waste a run or crash it later, with a message saying what to set."""
    for section, kind in sections():
        known = {f.name for f in fields(kind)}
        for name in set(cfg[section]) - known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f": did you mean {section}.{close[0]}?" if close else ""
            raise FFBenchError(f"{section}.{name} is not a setting of {section}{hint}")
    for dotted, f in schema_keys():
        value = OmegaConf.select(cfg, dotted)
        names = allowed(f)
        if names and value not in names:
            raise FFBenchError(
                f"{dotted}={value} is not supported: choose one of {', '.join(names)}"
            )
        if f.metadata["bound"] and value is not None:
            holds, says, fix = BOUNDS[f.metadata["bound"]]
            each = list(value) if isinstance(value, ListConfig) else [value]  # one per layer
            numbers = [v for v in each if isinstance(v, int | float) and not isinstance(v, bool)]
            if not all(holds(v) for v in numbers):
                raise FFBenchError(f"{dotted} {says} (got {value}): {fix.format(key=dotted)}")
    # The checks below read the registries' facts: the training stack, loaded here, not when
    # the schema is imported.
    from ffbench import ff_data, goodness, models, windows

    a, m = cfg.algo, cfg.model

    def reads(key: str) -> bool:  # the job's options read the key (its checks apply)
        return not ignored(cfg, key)

    needs_readout = [f"algo.evaluation={a.evaluation}"] if a.evaluation == "readout" else []
    if ff_data.NEGATIVES[a.negatives].needs_readout:
        needs_readout.append(f"algo.negatives={a.negatives}")
    if reads("algo.readout") and not a.readout and needs_readout:
        raise FFBenchError(f"{needs_readout[0]} needs the read-out: set algo.readout=true")
    _validate_model(cfg, models, reads)
    if reads("algo.layer_windows") and reads("model.depth"):  # user blocks: once built
        windows.layer_windows(a.layer_windows, m.depth, cfg.trainer.epochs, a.schedule)
    sequential = reads("algo.schedule") and a.schedule == "sequential"
    if reads("algo.step_each_layer") and cfg.trainer.grad_accum_steps > 1 and not sequential:
        raise FFBenchError(
            "algo.step_each_layer with trainer.grad_accum_steps > 1 holds every layer's gradient "
            "until the micro-batches add up: set algo.schedule=sequential (one layer trains at "
            "a time) or trainer.grad_accum_steps=1"
        )
    mlp_shapes = "width" in models.LAYERS[m.name].sized_by  # what the reference times
    if cfg.trainer.matmul_reference and (not mlp_shapes or sequential):
        raise FFBenchError(
            "trainer.matmul_reference times the products of one MLP training step: set "
            "model=mlp (and algo.schedule=simultaneous for FF), or trainer.matmul_reference=false"
        )
    if reads("algo.label_input"):
        _validate_labels(a, goodness.LOSSES, ff_data.NEGATIVES, ff_data.LABEL_INPUTS)
    if ff_data.NEGATIVES[a.negatives].unsupervised and a.evaluation != "readout":
        raise FFBenchError(
            f"algo.negatives={a.negatives} is unsupervised: set algo.evaluation=readout (goodness evaluation needs labels in the input)"
        )


def _validate_labels(a, losses: dict, negatives: dict, label_inputs: dict) -> None:
    """The label input, the negative data and the loss go together (ff_data.py, goodness.py)."""
    loss, negative = losses[a.loss], negatives[a.negatives]
    labelled = label_inputs[a.label_input] is not None
    unlabelled = next(name for name, kind in label_inputs.items() if kind is None)
    no_negatives = next(name for name, kind in negatives.items() if kind.none)
    without = " or ".join(name for name, kind in losses.items() if not kind.negatives)
    if not loss.label_input and labelled:
        raise FFBenchError(
            f"algo.loss={a.loss} reads the class from each layer's channel groups, not from the "
            f"input: set algo.label_input={unlabelled}"
        )
    if loss.negatives == negative.none:
        fix = (
            f"algo.negatives={no_negatives}"
            if not loss.negatives
            else f"algo.loss={without} (or other negatives)"
        )
        raise FFBenchError(
            f"algo.loss={a.loss} with algo.negatives={a.negatives}: only the {without} loss "
            f"trains without negative data: set {fix}"
        )
    default = schema_field("algo.label_input").default  # what nobody chose
    if negative.unsupervised and labelled and a.label_input != default:
        raise FFBenchError(
            f"algo.negatives={a.negatives} is unsupervised and writes no label: set "
            f"algo.label_input={unlabelled}"
        )
    if not labelled and negative.wrong_label:
        inputs = ", ".join(name for name, kind in label_inputs.items() if kind is not None)
        raise FFBenchError(
            f"algo.negatives={a.negatives} writes a wrong label into the input, which "
            f"algo.label_input={a.label_input} leaves out: choose a label input ({inputs}), "
            f"or algo.loss={without} algo.negatives={no_negatives}"
        )


def _validate_model(cfg, models, reads) -> None:
    """Spatial goodness and the black box (`models`: the module of their registries). Sizes
    that depend on the data (a kernel larger than a layer's input) are checked when the net
    is built (models.spatial_shapes)."""
    layers = models.LAYERS
    m, kind = cfg.model, layers[cfg.model.name]
    if kind.spatial:
        models.layer_channels(m.channels, m.depth)  # one positive count per layer
        models.layer_channels(m.groups, m.depth, key="model.groups")
        models.layer_sizes(m)  # kernel, stride, padding, pool: one each per layer
    if m.dropout >= 1:
        raise FFBenchError(f"model.dropout={m.dropout} would zero every activity: set it below 1")
    if reads("model.depth"):  # user blocks: checked against their count when built
        models.layer_shortcuts(m.shortcuts, m.depth)  # one known name per layer, where it fits
    for name in ("groups", "pool"):
        if name not in kind.sized_by and m[name] != 1:
            sized = next(n for n, other in layers.items() if name in other.sized_by)
            raise FFBenchError(
                f"model.{name} acts on spatial layers: set model={sized}, or model.{name}=1"
            )
    if reads("goodness.name") and cfg.goodness.spatial == "position":
        if not kind.spatial:
            spatial = " or ".join(f"model={n}" for n, other in layers.items() if other.spatial)
            raise FFBenchError(f"goodness.spatial=position needs spatial layers: set {spatial}")
        if m.norm_scope != "position":
            raise FFBenchError(
                "goodness.spatial=position would leak through a whole-layer normalisation: "
                "set model.norm_scope=position"
            )
    if ignored(cfg, "model.blackbox"):  # there is none
        return
    if reads("model.depth") and not 1 <= m.blackbox_after < m.depth:  # user: models.py
        raise FFBenchError(
            f"model.blackbox_after={m.blackbox_after} is not between two of the {m.depth} hidden "
            f"layers: set model.blackbox_after between 1 and {m.depth - 1} (model.depth 2 or more)"
        )
    if reads("model.blackbox_grad") and m.blackbox_grad == "none":
        raise FFBenchError(
            f"algo={cfg.algo.name} cannot train through model.blackbox={m.blackbox}: it has no "
            "gradient. Use algo=ff, or set model.blackbox_grad=straight_through (identity gradient)"
        )


# The option tables: ffbench --help (plain text) and docs/options.md (Markdown).


def _default(f) -> str:
    if f.default is NO_DEFAULT or f.default == MISSING:
        return "(the group's option)"
    if f.default is None:
        return "null"
    return str(f.default).lower() if isinstance(f.default, bool) else str(f.default)


def _type(f) -> str:
    """`str`, `int or null`, ...: no `|`, which would split a Markdown table's cell."""
    if f.metadata.get("shown_as"):
        return f.metadata["shown_as"]
    if f.type is typing.Any:  # model.channels, model.groups: a number or a list of numbers
        return "int or list"
    names = [t.__name__ for t in typing.get_args(f.type)] or [f.type.__name__]
    return " or ".join("null" if name == "NoneType" else name for name in names)


def options_markdown() -> str:
    """docs/options.md: one table per section, generated from the schema (make docs)."""
    lines = [
        "# Options",
        "",
        "Generated from `ffbench/config.py` by `make docs`; a test fails when this page and the",
        "schema drift apart. Set any key on the command line (`ffbench model.depth=4`); choose a",
        "group's option with `group=name` (`ffbench activation=gelu`).",
    ]
    for section, kind in [*sections(), ("(top level)", Config)]:
        rows = [f for f in fields(kind) if not is_dataclass(f.type)]
        lines += [
            "",
            f"## {section}",
            "",
            "| key | type | default | allowed | what |",
            "|---|---|---|---|---|",
        ]
        for f in rows:
            names = ", ".join(f"`{c}`" for c in allowed(f)) or f.metadata["bound"] or ""
            lines.append(
                f"| `{f.name}` | {_type(f)} | `{_default(f)}` | {names} | {f.metadata['doc']} |"
            )
    return "\n".join(lines) + "\n"


def options_text() -> str:
    """The key table of `ffbench --help`: key, default, allowed values, doc."""
    lines = []
    for dotted, f in schema_keys():
        names = "|".join(allowed(f)) or f.metadata["bound"] or ""
        lines.append(f"  {dotted} = {_default(f)}  {f'[{names}]' if names else ''}".rstrip())
        lines.append(f"      {f.metadata['doc']}")
    return "\n".join(lines)
