"""Useful floating-point work of training and evaluation, counted from the architecture.

Only the matrix products count (2 FLOPs per multiply-add, MACs = fan-in x fan-out of a
layer); element-wise work, normalisation and goodness are left out, so the count is a lower
bound and "achieved GFLOP/s" is honest. Per training example and hidden layer:

- FF: forward of the positive and the negative example, 2 x 2*MACs, and the weight gradient
  of both, 2 x 2*MACs; no input gradient (inputs are detached). With `algo.readout=true`
  (needed for hard negatives and read-out evaluation) the label-free pass that feeds the
  read-out is asked for and counts: 2*MACs per layer, plus the read-out's forward and weight
  gradient, 2 x 2*MACs of the read-out.
- FF, sequential schedule: a pass trains one layer and runs the frozen layers below it
  forward, 2 x 2*MACs each.
- BP (and bp_ckpt, whose recomputation is overhead, not useful work): forward 2*MACs, input
  gradient 2*MACs (not for the first layer, whose input is data), weight gradient 2*MACs;
  the output layer likewise.
- Goodness evaluation: 2*MACs per layer for every candidate label.
"""


def layer_macs(features: int, width: int, depth: int) -> list[int]:
    return [(features if i == 0 else width) * width for i in range(depth)]


def _readout_macs(cfg, width: int, classes: int) -> int:
    depth = cfg.model.depth
    evaluated = depth - (1 if cfg.algo.eval_skip_first and depth > 1 else 0)
    return evaluated * width * classes


def train_flops_per_example(cfg, features: int, classes: int) -> float:
    """Useful FLOPs of one training example in one pass over the data, averaged over the
    passes of the run (they differ only in FF's sequential schedule)."""
    width, depth = cfg.model.width, cfg.model.depth
    macs = layer_macs(features, width, depth)
    if cfg.algo.name != "ff":
        head = width * classes
        return 2 * sum(macs) + 2 * (sum(macs) - macs[0]) + 2 * sum(macs) + 6 * head
    extra = 2 * sum(macs) + 4 * _readout_macs(cfg, width, classes) if cfg.algo.readout else 0
    if cfg.algo.schedule == "sequential":
        per_pass = [8 * macs[k] + 4 * sum(macs[:k]) for k in range(depth)]
        return sum(per_pass) / depth + extra
    return 8 * sum(macs) + extra


def goodness_eval_flops_per_example(cfg, features: int, classes: int) -> float:
    """FLOPs of predicting one example by goodness: every label through every layer."""
    return classes * 2 * sum(layer_macs(features, cfg.model.width, cfg.model.depth))
