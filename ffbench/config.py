"""Typed schemas for every config group, and the checks Hydra cannot express.

The YAML files in conf/ pick values; these dataclasses say which keys exist and what type
each one has, so that a misspelt key or a wrong type is rejected by Hydra before any work.
"""

import difflib
from dataclasses import dataclass, field, fields, is_dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ffbench.errors import FFBenchError


@dataclass
class DatasetConfig:
    name: str = MISSING
    """Which data set: `digits` (bundled 8x8 digits, no download), `mnist`, `fashion_mnist`,
    `kmnist` or `cifar10` (downloaded once into the cache, checksum-verified)."""
    root: str | None = None
    """Cache folder of the data files (they may sit in it or in its NAME/ subfolder); unset
    means $FFBENCH_DATA, else ~/.cache/ffbench/NAME."""
    mirror: str | None = None
    """Base URL to download the files from instead of the data set's usual mirrors."""
    checksums: str | None = None
    """File of MD5s in `md5sum` format replacing the built-in checksums (data made by hand)."""
    normalize: bool = False
    """Standardise each channel by the training split's mean and standard deviation."""
    val_size: int = 0
    """Examples held out from the training data for validation (model selection, never test)."""
    test_size: int | None = None
    """Examples held out for testing, for data sets without an official test split (digits)."""
    split_seed: int = 0
    """Seed of the train/validation(/test) split, fixed so every run sees the same split."""


@dataclass
class ModelConfig:
    name: str = "mlp"
    """Architecture: `mlp` (fully connected hidden layers), `conv` (convolutional layers) or
    `local` (locally connected: a convolution without weight sharing, as in the paper's CIFAR-10
    nets). The activation and the normalisation are the same for all three."""
    depth: int = 2
    """Number of hidden layers."""
    width: int = 256
    """`mlp`: units per hidden layer."""
    norm: str = "mean_square"
    """Normalisation before each layer: `mean_square` (reference code), `unit_length`, `none`."""
    channels: int = 16
    """`conv`, `local`: channels (feature maps) of every hidden layer."""
    kernel: int = 3
    """`conv`, `local`: side of each layer's square receptive field, in positions of its input."""
    stride: int = 1
    """`conv`, `local`: step between neighbouring receptive fields."""
    padding: int = 0
    """`conv`, `local`: zeros added on each side of each layer's input."""
    norm_scope: str = "layer"
    """`conv`, `local`: the normalisation between hidden layers acts on the `layer`'s whole
    activity vector or on each `position`'s channel vector (needed by goodness.spatial=position).
    The data are always normalised as one vector."""
    blackbox: str = "none"
    """A transform without gradient between two hidden layers: `none`, `sign`, `quantize` (fixed
    random quantiser) or `numpy` (sign(x) log(1 + |x|) computed in NumPy). FF trains through it;
    BP needs blackbox_grad=straight_through."""
    blackbox_after: int = 1
    """The black box sits on the output of this hidden layer (1 = the first), below the next."""
    blackbox_grad: str = "none"
    """BP through the black box: `none` (refused: there is no gradient) or `straight_through`
    (backward treats the black box as the identity). FF ignores it."""
    blackbox_step: float = 0.5
    """`quantize`: width of a quantisation level."""


@dataclass
class AlgoConfig:
    name: str = MISSING
    """`ff` (Forward-Forward, layer-local losses), `bp` (backpropagation, cross-entropy) or
    `bp_ckpt` (BP with per-layer gradient checkpointing: less memory, one more forward pass)."""
    loss: str = "threshold"
    """FF: per-layer loss, `threshold` (softplus(theta - G_pos) + softplus(G_neg - theta)) or `symba`."""
    theta: float | None = None
    """FF: goodness threshold; unset picks the one that fits goodness and normalisation."""
    alpha: float = 4.0
    """FF: SymBa's sharpness, softplus(-alpha * (G_pos - G_neg))."""
    negatives: str = "random_label"
    """FF: `random_label` (uniform wrong label), `hard_label` (drawn from the read-out's
    prediction, true label excluded) or `hybrid` (unsupervised: two images mixed by a mask)."""
    hybrid_blur_steps: int = 6
    """FF with hybrid negatives: blur passes that make the random mask smooth."""
    evaluation: str = "goodness"
    """FF: the headline prediction, `goodness` (label with the largest goodness) or `readout`
    (linear softmax classifier on the normalised activities). Both are logged when they apply."""
    eval_skip_first: bool = True
    """FF: leave the first hidden layer out of the evaluation (paper), if depth > 1."""
    label_input: str = "pixels"
    """FF: how the label enters the net: `pixels` (one-hot in the first pixels of the image, the
    paper) or `planes` (one extra input plane per class, constant over the image, one-hot, so
    that every position of a conv or locally connected layer sees the label)."""
    label_strength: float = 1.0
    """FF: value written into the true label's pixel (the other label pixels get 0)."""
    peer_norm: float = 0.0
    """FF: coefficient of peer normalisation (each unit's mean activity pulled towards the
    layer's mean); 0 turns it off, the reference code uses 0.03."""
    readout: bool = True
    """FF: train a linear read-out alongside (no gradient into FF). It costs one extra forward
    pass per minibatch with no label written in (2 of FF's 8 multiply-adds per weight); needed
    by evaluation=readout, negatives=hard_label and negatives=hybrid."""
    readout_lr: float = 0.01
    """FF: learning rate of the linear read-out."""
    schedule: str = "simultaneous"
    """FF: `simultaneous` (every layer on every minibatch) or `sequential` (layer 1 for
    trainer.epochs epochs, then layer 2, ...): either way each layer trains trainer.epochs epochs."""


@dataclass
class GoodnessConfig:
    name: str = MISSING
    """How a layer's activities become one number: `sumsq`, `meansq`, `sumabs` or `split`."""
    inverted: bool = False
    """Positive data minimises the goodness and negative data maximises it ("min ssq")."""
    spatial: str = "whole"
    """`conv`, `local`: goodness of the `whole` layer, or per `position` (each position's channel
    vector has its own goodness and FF loss, the losses averaged over positions; evaluation sums
    the positions' goodness). `position` needs model.norm_scope=position."""
    feature_fraction: float = 0.5
    """`split` only: share of units that are feature detectors (the rest detect violations)."""


@dataclass
class ActivationConfig:
    name: str = MISSING
    """Non-linearity of every hidden layer, for FF and BP alike."""
    nu: float = 1.0
    """`tdist` only: degrees of freedom of the Student-t."""


@dataclass
class OptimizerConfig:
    name: str = MISSING
    """`adam` or `sgd` (with momentum)."""
    lr: float = 1e-3
    """Learning rate of the hidden layers (and BP's output layer)."""
    momentum: float = 0.0
    """SGD momentum (ignored by Adam)."""
    weight_decay: float = 0.0
    """L2 weight cost."""


@dataclass
class TrainerConfig:
    epochs: int = 50
    """Passes over the training data."""
    batch_size: int = 32
    """Examples per minibatch (FF adds as many negatives)."""
    seed: int = 0
    """Seed of initialisation, shuffling and negative labels; reset at the start of every job."""
    device: str = "auto"
    """`auto` (cuda, then mps, then cpu), `cpu`, `cuda` or `mps`."""
    num_threads: int | None = None
    """CPU threads for torch; unset keeps torch's default (one per core)."""
    lr_schedule: str = "constant"
    """`constant`, or `linear_decay` (reference code: constant for the first half of the
    epochs, then linearly down towards zero)."""
    precision: str = "fp32"
    """`fp32`; `tf32` (CUDA only: TensorFloat-32 matrix products); or `bf16` (autocast: matrix
    products in bfloat16, normalisation, goodness and losses in float32)."""
    compile: bool = False
    """torch.compile each layer's computation (the first epoch pays the compile time)."""
    grad_accum_steps: int = 1
    """BP only: split each minibatch into this many micro-batches, one backward pass each, and
    step once: the same update with a micro-batch's activation memory."""


@dataclass
class MeasureConfig:
    memory: bool = True
    """Record the memory figures of training (peak saved activations, peak RSS, CUDA peaks,
    parameter and optimizer-state sizes); false runs training without any hook or sampler."""


@dataclass
class TrackingConfig:
    uri: str | None = None
    """MLflow tracking URI; unset means $MLFLOW_TRACKING_URI, else SQLite in outputs/mlflow.db."""
    experiment: str = "ffbench"
    """MLflow experiment; $MLFLOW_EXPERIMENT_NAME overrides it."""
    log_artifacts: bool = True
    """Store the resolved config and the job's .hydra/ folder with the run."""


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
    skip_finished: bool = True
    """Sweeps: skip a job whose relevant settings (ffbench/settings.py) already have a FINISHED run
    in the experiment: it is recorded as skipped, pointing to that run. false trains anyway."""
    resume: bool | None = None
    """Deprecated: the old name of skip_finished; when given, it wins, with a warning."""


def register_schemas() -> None:
    """Make the schema available to conf/config.yaml as `schema` in its defaults list."""
    ConfigStore.instance().store(name="schema", node=Config)


CHOICES = {
    "dataset.name": ("digits", "mnist", "fashion_mnist", "kmnist", "cifar10"),
    "model.name": ("mlp", "conv", "local"),
    "model.norm": ("mean_square", "unit_length", "none"),
    "model.norm_scope": ("layer", "position"),
    "model.blackbox": ("none", "sign", "quantize", "numpy"),
    "model.blackbox_grad": ("none", "straight_through"),
    "goodness.spatial": ("whole", "position"),
    "algo.name": ("ff", "bp", "bp_ckpt"),
    "algo.loss": ("threshold", "symba"),
    "algo.negatives": ("random_label", "hard_label", "hybrid"),
    "algo.evaluation": ("goodness", "readout"),
    "algo.label_input": ("pixels", "planes"),
    "algo.schedule": ("simultaneous", "sequential"),
    "goodness.name": ("sumsq", "meansq", "sumabs", "split"),
    "activation.name": (
        "relu",
        "relu_fullgrad",
        "gelu",
        "leaky_relu",
        "silu",
        "tanh",
        "sigmoid",
        "softplus",
        "tdist",
    ),
    "optimizer.name": ("adam", "sgd"),
    "trainer.device": ("auto", "cpu", "cuda", "mps"),
    "trainer.lr_schedule": ("constant", "linear_decay"),
    "trainer.precision": ("fp32", "tf32", "bf16"),
}


POSITIVE = (
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.grad_accum_steps",
    "model.depth",
    "model.width",
    "model.channels",
    "model.kernel",
    "model.stride",
    "model.blackbox_step",
    "optimizer.lr",
    "algo.alpha",
    "algo.readout_lr",
    "activation.nu",
)
NON_NEGATIVE = (
    "optimizer.momentum",
    "optimizer.weight_decay",
    "dataset.val_size",
    "model.padding",
    "algo.peer_norm",
    "algo.hybrid_blur_steps",
)


def validate(cfg) -> None:
    """Reject values that would waste a run or crash it later, with a message saying what to set."""
    for section in fields(Config):
        if not is_dataclass(section.type):
            continue  # a top-level key such as `resume`, typed by Hydra
        known = {f.name for f in fields(section.type)}
        for key in set(cfg[section.name]) - known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f": did you mean {section.name}.{close[0]}?" if close else ""
            raise FFBenchError(f"{section.name}.{key} is not a setting of {section.name}{hint}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise FFBenchError(
                f"{key}={value} is not supported: choose one of {', '.join(allowed)}"
            )
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if not value > 0:
            raise FFBenchError(f"{key} must be positive (got {value}): set {key}=<a value above 0>")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if value < 0:
            raise FFBenchError(f"{key} must not be negative (got {value}): set {key}=0 or more")
    if not 0 < cfg.goodness.feature_fraction < 1:
        raise FFBenchError(
            f"goodness.feature_fraction must be between 0 and 1 (got {cfg.goodness.feature_fraction})"
        )
    needs_readout = [
        f"algo.{key}={cfg.algo[key]}"
        for key, value in (("evaluation", "readout"), ("negatives", "hard_label"))
        if cfg.algo[key] == value
    ]
    if cfg.algo.name == "ff" and not cfg.algo.readout and needs_readout:
        raise FFBenchError(f"{needs_readout[0]} needs the read-out: set algo.readout=true")
    _validate_model(cfg)
    if cfg.algo.negatives == "hybrid" and cfg.algo.label_input == "planes":
        raise FFBenchError(
            "algo.negatives=hybrid is unsupervised and writes no label: set algo.label_input=pixels"
        )
    if cfg.algo.negatives == "hybrid" and cfg.algo.evaluation != "readout":
        raise FFBenchError(
            "algo.negatives=hybrid is unsupervised: set algo.evaluation=readout (goodness evaluation needs labels in the input)"
        )


def _validate_model(cfg) -> None:
    """Spatial goodness and the black box. Sizes that depend on the data (a kernel larger
    than a layer's input) are checked when the net is built (models.spatial_shapes)."""
    m, ff = cfg.model, cfg.algo.name == "ff"
    if ff and cfg.goodness.spatial == "position":
        if m.name == "mlp":
            raise FFBenchError(
                "goodness.spatial=position needs spatial layers: set model=conv or model=local"
            )
        if m.norm_scope != "position":
            raise FFBenchError(
                "goodness.spatial=position would leak through a whole-layer normalisation: "
                "set model.norm_scope=position"
            )
    if m.blackbox == "none":
        return
    if not 1 <= m.blackbox_after < m.depth:
        raise FFBenchError(
            f"model.blackbox_after={m.blackbox_after} is not between two of the {m.depth} hidden "
            f"layers: set model.blackbox_after between 1 and {m.depth - 1} (model.depth 2 or more)"
        )
    if not ff and m.blackbox_grad == "none":
        raise FFBenchError(
            f"algo={cfg.algo.name} cannot train through model.blackbox={m.blackbox}: it has no "
            "gradient. Use algo=ff, or set model.blackbox_grad=straight_through (identity gradient)"
        )
