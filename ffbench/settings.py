"""Which settings a run's result depends on, and their hash: how a sweep skips finished jobs.

Two jobs with the same hash would record the same result, so the second one reuses the first
one's run instead of training (cli.run). The hash covers the whole resolved config except
what the schema (ffbench/config.py) declares, with each key, that the result does not depend
on:

- `result=False`: where things are kept, not what is computed (`tracking.*`, `dataset.root`,
  `dataset.mirror`, `dataset.checksums`, `trainer.checkpoint`: a resumed run's numbers equal
  an uninterrupted one's) and the `skip_finished` switch itself (and its old name `resume`:
  hashes stay as they were before the rename, so the FINISHED runs recorded before it are
  still found);
- `ignored_by`: the options that never read the key (e.g. `goodness.*` and every `algo.*` key
  but `name` for `algo=bp` and `bp_ckpt`, `model.width` for the spatial models);
- `ignored_at_default_by`: the options that came to read the key later, at its default (FF's
  `trainer.grad_accum_steps=1`): their earlier runs keep their hashes.

A key counts unless it says otherwise, and an option counts as reading every key unless a
key names it, so a new learner, model or data set gets every key hashed: a forgotten
declaration costs a duplicate run, never a wrong reuse. `trainer.device` enters as the
device the job resolved (`auto` becomes `cpu` or `cuda`), since numerics, times and the CUDA
memory figures differ between devices; `measure.memory` stays in, since a run without memory
figures cannot stand in for one that was asked to record them. Not in the hash: the code
version (tag ffbench.git_commit) and the machine; after changing the code, run with
skip_finished=false.
"""

import hashlib
import json

from omegaconf import OmegaConf

from ffbench.config import ignored, schema_keys


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
    for dotted, _ in schema_keys():
        if ignored(cfg, dotted):
            _drop(settings, dotted)
    # a section none of whose keys counts (tracking) is left out, not hashed as {}
    settings = {k: v for k, v in settings.items() if v != {}}
    settings["trainer"]["device"] = device
    return settings


def settings_hash(cfg, device: str) -> str:
    """16 hex digits of SHA-256 over the relevant settings as canonical JSON."""
    text = json.dumps(relevant_settings(cfg, device), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
