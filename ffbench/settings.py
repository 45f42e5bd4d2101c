"""Which settings a run's result depends on, and their hash: how a sweep skips finished jobs.

Two jobs with the same hash would record the same result, so the second one reuses the first
one's run instead of training (cli.run). The hash covers the whole resolved config except

- where things are kept, not what is computed: `tracking.*`, `dataset.root`, `dataset.mirror`
  and `dataset.checksums` (where the data set that `dataset.name` names is kept, fetched from
  and verified against) and the `skip_finished` switch itself (and its old name `resume`);
- settings the job ignores, in IGNORED below (e.g. `goodness` and every FF key for BP).

`trainer.device` enters as the device the job resolved (`auto` becomes `cpu` or `cuda`), since
numerics, times and the CUDA memory figures differ between devices; `measure.memory` stays in,
since a run without memory figures cannot stand in for one that was asked to record them.
A key not listed here counts, so a forgotten rule costs a duplicate run, never a wrong reuse.
Not in the hash: the code version (tag ffbench.git_commit) and the machine; after changing the
code, run with skip_finished=false.
"""

import hashlib
import json
from dataclasses import fields

from omegaconf import OmegaConf

from ffbench.config import AlgoConfig


def _not_ff(cfg) -> bool:
    return cfg.algo.name != "ff"


def _mlp(cfg) -> bool:
    return cfg.model.name == "mlp"


def _no_blackbox(cfg) -> bool:
    return cfg.model.blackbox == "none"


# Never part of a result: where runs and data are kept, and whether to skip finished jobs
# (under either name: hashes stay as they were before `resume` became `skip_finished`, so the
# FINISHED runs recorded before the rename are still found).
LOCATIONS = (
    "tracking",
    "dataset.root",
    "dataset.mirror",
    "dataset.checksums",
    "skip_finished",
    "resume",
    "trainer.checkpoint",  # a resumed run's numbers equal an uninterrupted one's
)
# (key, when the job ignores it); a key may have several. Every AlgoConfig key but `name` is
# FF's (conf/algo/bp.yaml).
IGNORED = (
    ("goodness", _not_ff),
    *((f"algo.{f.name}", _not_ff) for f in fields(AlgoConfig) if f.name != "name"),
    ("trainer.grad_accum_steps", lambda cfg: cfg.algo.name == "ff"),  # BP only
    ("optimizer.momentum", lambda cfg: cfg.optimizer.name == "adam"),
    ("dataset.test_size", lambda cfg: cfg.dataset.name != "digits"),  # official test sets
    ("goodness.feature_fraction", lambda cfg: cfg.goodness.name != "split"),
    ("activation.nu", lambda cfg: cfg.activation.name != "tdist"),
    ("algo.alpha", lambda cfg: cfg.algo.loss != "symba"),
    ("algo.hybrid_blur_steps", lambda cfg: cfg.algo.negatives != "hybrid"),
    # the MLP's width, the spatial models' sizes; the black box's keys while there is none
    ("model.width", lambda cfg: cfg.model.name != "mlp"),
    *((f"model.{k}", _mlp) for k in ("channels", "kernel", "stride", "padding", "norm_scope")),
    ("goodness.spatial", _mlp),
    *((f"model.{k}", _no_blackbox) for k in ("blackbox", "blackbox_after", "blackbox_grad")),
    ("model.blackbox_grad", lambda cfg: cfg.algo.name == "ff"),  # FF needs no gradient
    ("model.blackbox_step", lambda cfg: cfg.model.blackbox != "quantize"),
)


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.get(key, {})
    tree.pop(leaf, None)


def relevant_settings(cfg, device: str) -> dict:
    """The resolved config as a dict, without the keys that cannot change this job's result;
    `device` is the resolved device type that replaces trainer.device."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("hydra", None)  # present only in configs composed with return_hydra_config
    for key in LOCATIONS:
        _drop(settings, key)
    for key, ignored in IGNORED:
        if ignored(cfg):
            _drop(settings, key)
    settings["trainer"]["device"] = device
    return settings


def settings_hash(cfg, device: str) -> str:
    """16 hex digits of SHA-256 over the relevant settings as canonical JSON."""
    text = json.dumps(relevant_settings(cfg, device), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
