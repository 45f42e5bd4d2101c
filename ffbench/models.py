"""The layer stack shared by FF and BP, and BP's classifier on top of it.

Every hidden layer is `activation(linear(normalise(input)))`. FF trains each layer on its
own; BP adds a linear output layer and trains everything end to end. Because both build on
`LayerStack`, a comparison changes the learning rule and nothing else.
"""

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward

from ffbench.activations import NORMALISATIONS


class LayerStack(nn.Module):
    def __init__(self, in_features: int, width: int, depth: int, activation: Callable, norm: str):
        super().__init__()
        sizes = [in_features] + [width] * depth
        # nn.ModuleList, not a Python list, so state_dict() holds every layer.
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = activation
        self.norm = NORMALISATIONS[norm]

    def layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Activities of hidden layer `index` given that layer's (unnormalised) input."""
        # The norm runs in float32 even when the previous layer ran in bf16 (autocast).
        return self.activation(self.layers[index](self.norm(x.float())))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activities of every hidden layer, bottom to top."""
        activities = []
        for index in range(len(self.layers)):
            x = self.layer(index, x)
            activities.append(x)
        return activities


class Classifier(nn.Module):
    """BP's network: the same stack plus a linear output layer on the normalised top layer.

    With `checkpoint`, each hidden layer keeps only its input for backward and is recomputed
    when its gradient is needed: the best memory BP can do on the same net.
    """

    def __init__(self, stack: LayerStack, num_classes: int, checkpoint: bool = False):
        super().__init__()
        self.stack = stack
        self.head = nn.Linear(stack.layers[-1].out_features, num_classes)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.checkpoint and torch.is_grad_enabled()):
            return self.head(self.stack.norm(self.stack(x)[-1]))
        for index in range(len(self.stack.layers)):
            x = recompute_in_backward(self.stack.layer, index, x, use_reentrant=False)
        return self.head(self.stack.norm(x))
