"""What an attack costs: forward and backward passes counted through the model, and the circuit
executions an attacker of a real quantum device would need for them."""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_SHOTS = 1000


class CountingModel(nn.Module):
    """Wraps a model and counts, per sample, the forward passes and the backward passes through it.

    A forward pass of a batch of B adds B to ``forward_samples``. Every time autograd computes
    the gradient of the output (a tensor hook on it), the rows of that gradient that are not all
    zero are added to ``backward_samples``: a full Jacobian (DeepFool) counts one backward pass per
    class, a sample whose output gradient is zero (left out of the loss, as the batched DeepFool
    does with the images it has already fooled) counts none, and so does a forward pass run
    without autograd or never differentiated.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # torchattacks restores this mode on the model after an attack
        self.reset()

    def reset(self) -> None:
        self.forward_samples = 0
        self.backward_samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.forward_samples += int(x.shape[0])
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backward_samples += int((grad.reshape(grad.shape[0], -1) != 0).any(dim=1).sum())


def projected_circuit_executions(forwards_per_image: float, backwards_per_image: float, n_qubits: int = 4,
                                 shots: int = DEFAULT_SHOTS, gradient_through_circuit: bool = True,
                                 n_circuit_parameters: int | None = None) -> dict:
    """Circuit executions an attacker of a real quantum device would need per image.

    Assumptions (also returned as text):

    - every forward pass of the hybrid runs the circuit once, estimated from ``shots`` shots
      (score-based attacks: one forward per query, so queries x shots);
    - every backward pass through the circuit uses the parameter-shift rule: 2 shifted circuits per
      gate parameter, with 3n encoding angles (RX, RY, RZ per qubit) as the parameters. That is an
      upper bound: with C < 3n classes, 3n - C of the angles are constant zeros an attacker can skip;
    - in the ``paper`` gradient mode no gradient goes through the circuit (the quantum branch is
      cut from autograd), so backward passes cost no circuit runs (``gradient_through_circuit=False``);
    - a 4-qubit circuit is easy to simulate classically: a white-box attacker who knows the circuit
      needs none of these runs. This counts what the paper's "attacker cost" argument would require.
    """
    params = 3 * n_qubits if n_circuit_parameters is None else n_circuit_parameters
    per_backward = 2 * params if gradient_through_circuit else 0
    circuits = forwards_per_image + backwards_per_image * per_backward
    return {
        "circuit_evaluations_per_image": circuits,
        "shots_per_image": circuits * shots,
        "shots": shots,
        "circuit_parameters": params,
        "gradient_through_circuit": gradient_through_circuit,
        "assumptions": (f"1 circuit estimate of {shots} shots per forward pass; "
                        + (f"parameter-shift: 2 x {params} circuit parameters (3n angles, an upper bound) "
                           "estimates per backward pass; " if gradient_through_circuit else
                           "no circuit runs per backward pass (paper mode: no gradient through the circuit); ")
                        + "a classical simulation of the circuit, open to any white-box attacker, needs none"),
    }
