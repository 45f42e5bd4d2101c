"""The learning rules a config can choose (algo.name): each a ffbench.learner.Learner."""

from ffbench.bp import Backprop, CheckpointedBackprop
from ffbench.ff import ForwardForward

# algo.name -> the learner class
LEARNERS = {"ff": ForwardForward, "bp": Backprop, "bp_ckpt": CheckpointedBackprop}
