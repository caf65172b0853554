"""What the quantum circuit costs beside the CNN, on each execution backend.

Prints, in one run and measured side by side on this machine:

1. circuit only: forward+backward time of the 4-qubit QShield circuit (full entanglement) for a
   batch, on the fast backend (its product path, and its general path for comparison), PennyLane
   ``default.qubit`` / ``default.mixed`` (backprop, broadcast),
   ``lightning.qubit`` (adjoint, noiseless only) and the paper's per-sample loop (forward only: it
   has no gradient);
2. per dataset: forward+backward time per batch of the classical CNN and of hybrid-full (mixed
   noise, p = 0.005) on the fast backend, batched PennyLane and the paper's loop, as hybrid/classical;
3. per dataset: PGD-10 time per image (torchattacks.PGD, eps = the dataset's paper_eps, step
   2/255), hybrid/classical, for each backend.

Usage: ``python bench/bench_backends.py [--repeats 5] [--datasets mnist cifar10] [--json out.json]``.
bench/README.md explains each number.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pennylane as qml
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qshield_core.data import get_spec
from qshield_core.models import QShieldHybrid, build_model
from qshield_core.noise import NoiseModel
from qshield_core.quantum import CircuitConfig, QuantumCircuitLayer, circuit
from qshield_core.simulator import FastCircuitSimulator
from qshield_core.zoo import ModelUnavailableError, load_model

DATASETS = ("mnist", "organamnist", "cifar10")
SHIPPED_NOISE = NoiseModel("mixed", 0.005)
PGD_STEP = 2 / 255
PGD_STEPS = 10


@dataclass
class Timing:
    """One measurement: the median seconds of one unit of work (``per``), and its ratio to a reference."""

    section: str
    dataset: str
    label: str
    seconds: float
    per: str
    note: str = ""
    ratio: float | None = None


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(section: str, dataset: str, label: str, fn: Callable[[], object], repeats: int, per: str,
            scale: float = 1.0, note: str = "") -> Timing:
    """Time ``fn`` and multiply by ``scale``; a backend that fails is reported in the table, not fatal."""
    try:
        seconds = median_seconds(fn, repeats) * scale
    except Exception as err:  # a device that cannot differentiate this measurement is reported
        return Timing(section, dataset, label, math.nan, per, f"failed: {str(err).splitlines()[0][:90]}")
    return Timing(section, dataset, label, seconds, per, note)


def set_ratios(rows: list[Timing], reference: Timing) -> list[Timing]:
    for row in rows:
        row.ratio = row.seconds / reference.seconds
    return rows


# --------------------------------------------------------------------------- circuit only


def circuit_step(run: Callable[[torch.Tensor], torch.Tensor], angles: torch.Tensor, backward: bool) -> Callable:
    """One forward (and, if ``backward``, backward w.r.t. the angles) pass of a circuit executor."""
    cotangent = torch.linspace(-1.0, 1.0, 16)

    def step() -> None:
        a = angles.clone().requires_grad_(backward)
        probs = run(a).reshape(a.shape[0], -1)
        if backward:
            (probs * cotangent.to(probs.dtype)).sum().backward()
    return step


def lightning_executor(config: CircuitConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The noiseless circuit on ``lightning.qubit`` with adjoint differentiation.

    The adjoint method cannot differentiate ``qml.probs``, so the QNode returns the expectation values
    of the 2^n - 1 Pauli-Z strings and the probabilities are recovered exactly by the Walsh-Hadamard
    transform p(b) = (1 + sum_S (-1)^{|b & S|} <Z_S>) / 2^n. The device has no noise channels.
    """
    n = config.n_qubits
    subsets = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    signs = torch.tensor([[(-1) ** sum((b >> (n - 1 - w)) & 1 for w in s) for s in subsets] for b in range(2**n)],
                         dtype=torch.float64)
    dev = qml.device("lightning.qubit", wires=n)

    def z_strings(angles, weights):
        for op in qml.tape.make_qscript(circuit)(angles, weights, config).operations:  # the gates, not qml.probs
            qml.apply(op)
        return [qml.expval(qml.prod(*[qml.PauliZ(w) for w in s])) for s in subsets]

    qnode = qml.QNode(z_strings, dev, interface="torch", diff_method="adjoint")
    weights = torch.zeros(config.weight_shape, dtype=torch.float64)

    def run(angles: torch.Tensor) -> torch.Tensor:
        expectations = torch.stack(qnode(angles.double(), weights), -1).double()
        return (1 + expectations @ signs.T) / 2**n

    return run


def general_path(config: CircuitConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fast backend's general (statevector / density-matrix) path, which the product path replaced
    for circuits without trainable rotations."""
    return FastCircuitSimulator(config.n_qubits, config.encoding, config.pairs, config.depth,
                                config.noise).general_probabilities


def bench_circuit(batch: int, loop_batch: int, repeats: int) -> list[Timing]:
    clean = CircuitConfig(4, "enhanced", "full", noise=NoiseModel("none", 0.0))
    noisy = CircuitConfig(4, "enhanced", "full", noise=SHIPPED_NOISE)
    angles = (torch.rand(batch, 4, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * math.pi
    per = f"batch {batch}, fwd+bwd"
    rows = [
        measure("circuit", "-", "fast, noiseless (product path)",
                circuit_step(QuantumCircuitLayer(clean, "fast"), angles, True), repeats, per),
        measure("circuit", "-", "fast, mixed p=0.005 (product path)",
                circuit_step(QuantumCircuitLayer(noisy, "fast"), angles, True), repeats, per),
        measure("circuit", "-", "fast general path, noiseless (statevector)",
                circuit_step(general_path(clean), angles, True), repeats, per,
                note="what circuits with trainable rotations run"),
        measure("circuit", "-", "fast general path, mixed p=0.005 (density matrix)",
                circuit_step(general_path(noisy), angles, True), repeats, per,
                note="what circuits with trainable rotations run"),
        measure("circuit", "-", "PennyLane default.qubit, noiseless",
                circuit_step(QuantumCircuitLayer(clean, "pennylane"), angles, True), repeats, per,
                note="backprop, broadcast"),
        measure("circuit", "-", "PennyLane default.mixed, mixed p=0.005",
                circuit_step(QuantumCircuitLayer(noisy, "pennylane"), angles, True), repeats, per,
                note="backprop, broadcast"),
        measure("circuit", "-", "PennyLane lightning.qubit, noiseless",
                circuit_step(lightning_executor(clean), angles, True), repeats, per,
                note="adjoint on 15 Z-string expectations; one tape per sample"),
        measure("circuit", "-", "paper loop (default.mixed per sample)",
                circuit_step(QuantumCircuitLayer(noisy, "paper-loop"), angles[:loop_batch], False),
                max(1, repeats // 2), f"batch {batch}, fwd only", scale=batch / loop_batch,
                note=f"{loop_batch} samples timed, x{batch / loop_batch:g}; no gradient exists"),
    ]
    return set_ratios(rows, rows[1])


# --------------------------------------------------------------------------- models


def models_for(dataset: str, pretrained: bool) -> tuple[nn.Module, QShieldHybrid, str]:
    """The classical CNN and hybrid-full of ``dataset``: shipped when asked and present, else untrained."""
    if pretrained:
        try:
            classical, _ = load_model(dataset, "classical")
            hybrid, card = load_model(dataset, "hybrid-full")
            return classical, hybrid, f"shipped ({card['noise_description']})"
        except ModelUnavailableError as err:
            print(f"[{dataset}] shipped models unavailable ({err}); timing untrained models", file=sys.stderr)
    torch.manual_seed(0)
    spec = get_spec(dataset)
    circuit_config = CircuitConfig.for_classes(spec.num_classes, entanglement="full", noise=SHIPPED_NOISE)
    classical = build_model(dataset, "classical").eval()
    hybrid = build_model(dataset, "hybrid-full", circuit=circuit_config).eval()
    return classical, hybrid, f"untrained ({SHIPPED_NOISE.describe()})"


def configured(hybrid: QShieldHybrid, backend: str) -> QShieldHybrid:
    """The fast and PennyLane backends run differentiable mode; the paper's loop runs paper mode."""
    hybrid.backend = backend
    hybrid.grad_mode = "paper" if backend == "paper-loop" else "differentiable"
    return hybrid


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """Forward, cross-entropy and backward to the parameters and the input (eval-mode layers)."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        x = images.clone().requires_grad_(True)
        F.cross_entropy(model(x), labels).backward()
    return step


def pgd_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> Callable[[], None]:
    attack = torchattacks.PGD(model, eps=eps, alpha=PGD_STEP, steps=PGD_STEPS, random_start=True)
    return lambda: attack(images, labels)


BACKEND_LABELS = {"fast": "hybrid-full, fast", "pennylane": "hybrid-full, PennyLane default.mixed",
                  "paper-loop": "hybrid-full, paper loop"}


def bench_dataset(dataset: str, args: argparse.Namespace) -> list[Timing]:
    spec = get_spec(dataset)
    classical, hybrid, origin = models_for(dataset, args.pretrained)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, *spec.input_shape, generator=gen)
    labels = torch.randint(0, spec.num_classes, (args.batch,), generator=gen)
    loop_scale = args.batch / args.loop_batch

    per = f"batch {args.batch}, fwd+bwd"
    passes = [measure("fwd+bwd", dataset, "classical", train_step(classical, images, labels), args.repeats, per,
                      note=origin)]
    for backend in ("fast", "pennylane"):
        passes.append(measure("fwd+bwd", dataset, BACKEND_LABELS[backend],
                              train_step(configured(hybrid, backend), images, labels), args.repeats, per,
                              note="differentiable mode"))
    passes.append(measure(
        "fwd+bwd", dataset, BACKEND_LABELS["paper-loop"],
        train_step(configured(hybrid, "paper-loop"), images[: args.loop_batch], labels[: args.loop_batch]),
        max(1, args.repeats // 2), per, scale=loop_scale,
        note=f"paper mode: backward through the CNN branch only; {args.loop_batch} images timed, x{loop_scale:g}"))
    set_ratios(passes, passes[0])

    per_image = f"per image, PGD-{PGD_STEPS}"
    n = args.pgd_batch
    attacks = [measure("pgd", dataset, "classical", pgd_step(classical, images[:n], labels[:n], spec.paper_eps),
                       args.pgd_repeats, per_image, scale=1 / n, note=f"batch {n}, eps {spec.paper_eps * 255:g}/255")]
    for backend in ("fast", "pennylane"):
        attacks.append(measure("pgd", dataset, BACKEND_LABELS[backend],
                               pgd_step(configured(hybrid, backend), images[:n], labels[:n], spec.paper_eps),
                               args.pgd_repeats, per_image, scale=1 / n, note=f"differentiable mode, batch {n}"))
    m = args.loop_pgd_images
    attacks.append(measure("pgd", dataset, BACKEND_LABELS["paper-loop"],
                           pgd_step(configured(hybrid, "paper-loop"), images[:m], labels[:m], spec.paper_eps),
                           1, per_image, scale=1 / m, note=f"paper mode, {m} images"))
    set_ratios(attacks, attacks[0])
    configured(hybrid, "fast")
    return passes + attacks


# --------------------------------------------------------------------------- report


def format_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1e3:,.1f} ms" if seconds < 100 else f"{seconds:,.0f} s"


def print_table(title: str, rows: list[Timing], ratio_name: str) -> None:
    print(f"\n{title}")
    label_width = max(len(r.label) for r in rows) + 2
    print(f"  {'dataset':<12}{'':<{label_width}}{'time':>12}  {ratio_name:>9}  per / note")
    for r in rows:
        ratio = "n/a" if r.ratio is None or math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        print(f"  {r.dataset:<12}{r.label:<{label_width}}{format_ms(r.seconds):>12}  {ratio:>9}  {r.per}; {r.note}")


def conditions(args: argparse.Namespace) -> dict:
    return {
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
        "pennylane": qml.__version__, "torchattacks": torchattacks.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arguments": {k: v for k, v in vars(args).items() if k != "json"},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    parser.add_argument("--pgd-repeats", type=int, default=2, help="timed PGD runs per measurement")
    parser.add_argument("--batch", type=int, default=128, help="batch size of the forward+backward timings")
    parser.add_argument("--loop-batch", type=int, default=8, help="images timed for the paper loop (then scaled)")
    parser.add_argument("--pgd-batch", type=int, default=128, help="images attacked at once by batched backends")
    parser.add_argument("--loop-pgd-images", type=int, default=2, help="images attacked through the paper loop")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--pretrained", action="store_true", help="time the shipped models (else untrained ones)")
    parser.add_argument("--skip-circuit", action="store_true", help="skip the circuit-only table")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = conditions(args)
    print(f"QShield backend benchmark: {info['torch_threads']} torch threads on {info['cpu_count']} CPUs, "
          f"load average {info['load_average_at_start']}, torch {info['torch']}, PennyLane {info['pennylane']}")
    rows: list[Timing] = []
    if not args.skip_circuit:
        circuit_rows = bench_circuit(args.batch, args.loop_batch, args.repeats)
        print_table("Circuit only (4 qubits, full entanglement, enhanced encoding)", circuit_rows, "vs fast")
        rows += circuit_rows
    for dataset in args.datasets:
        dataset_rows = bench_dataset(dataset, args)
        print_table(f"{get_spec(dataset).display_name}: forward+backward per batch, hybrid / classical",
                    [r for r in dataset_rows if r.section == "fwd+bwd"], "/ CNN")
        print_table(f"{get_spec(dataset).display_name}: PGD-{PGD_STEPS} per image, hybrid / classical",
                    [r for r in dataset_rows if r.section == "pgd"], "/ CNN")
        rows += dataset_rows
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        timings = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
                   for r in rows]
        args.json.write_text(json.dumps({"conditions": info, "timings": timings}, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
