r"""The quantum-noise certificate, computed exactly: how far may the circuit's input state move before
the quantum branch's prediction can change, and what that means for the logits and the pixels.

Setting
-------
The hybrid encodes the CNN's C logits z into angles theta(z) and prepares the product state
rho = |psi(theta)><psi(theta)| (``simulator.encoded_state``). Everything after the encoding (CNOT layers,
per-wire noise, readout error written as a bit flip before measurement) is one CPTP map Phi, so the basis
probabilities are q_i(rho) = Tr[Pi_i Phi(rho)] = Tr[E_i rho] with the effects E_i = Phi^dagger(Pi_i)
(0 <= E_i <= I, sum_i E_i = I), read off the circuit's exact superoperator
(:meth:`~qshield_core.simulator.FastCircuitSimulator.superoperator`). The quantum branch predicts
k = argmax_{c<C} pi_c with pi_c = q_c / S, S = sum_{c<C} q_c. Renormalisation divides every class by the
same S, so argmax_c pi_c = argmax_{c<C} q_c and pi_k - pi_j = (q_k - q_j) / S: it changes no decision.
A perturbation is any state sigma (pure or mixed) with trace distance T(rho, sigma) = ||rho - sigma||_1 / 2
<= tau. Four sound radii follow: (A)-(C) hold against any state, (D) against pure states.

(A) Operator bound (the sharpest here). With A_j = E_k - E_j and its spread s_j = lambda_max(A_j) -
lambda_min(A_j), the prediction cannot change while tau < tau_op = min_{j<C, j!=k} (q_k - q_j) / s_j.
Proof: write sigma - rho = P - N with P, N >= 0 of orthogonal support (Jordan decomposition); both have
trace T(rho, sigma) <= tau, so Tr[A_j (sigma - rho)] = Tr[A_j P] - Tr[A_j N] >= -tau s_j and
q_k(sigma) - q_j(sigma) >= (q_k - q_j) - tau s_j > 0. It is the exact worst case over perturbations
P - N of that size (positivity of sigma ignored), attained when rho can shed weight along the top
eigenvector of A_j, as in the single-qubit example of the tests, where tau_op = z/2 is exact.

(B) Elementary bound (contractivity of the trace distance). Let eta = sup_{rho != sigma} TV(q(rho),
q(sigma)) / T(rho, sigma) be the trace-norm contraction coefficient of the measured circuit rho -> q.
It is at most that of the quantum channel Phi, itself at most 1 (data processing), and it is computed
*exactly*: TV(q(rho), q(sigma)) = max_S Tr[E_S (rho - sigma)] over outcome sets S (E_S = sum_{i in S} E_i),
whose supremum over state pairs is lambda_max(E_S) - lambda_min(E_S), reached by two orthogonal
eigenvectors (T = 1), so eta = max_S [lambda_max(E_S) - lambda_min(E_S)] over the 2^(2^n - 1) sets
(S and its complement give the same value). Then TV(q(rho), q(sigma)) <= eta tau; a distribution within TV
delta can lose at most delta on k and gain at most delta on the runner-up, both at once (move delta from
one to the other), so q_k - q_j falls by at most 2 eta tau and
    tau_el = (q_k - q_(2)) / (2 eta) = S (pi_(1) - pi_(2)) / (2 eta).
Since s_j <= 2 eta (same argument), tau_el <= tau_op. Without noise eta = 1 (a unitary then a complete
measurement) and tau_el = (q_k - q_(2)) / 2.
The quantum channel's own coefficient eta_tr(Phi) is bracketed, not computed: eta <= eta_tr(Phi) <= 1 - p*
(p* below; Phi = (1 - p*) Psi + p* R with R constant contracts by at most 1 - p*). For one qubit it is
exact: eta_tr = ||T||_2, the largest singular value of the Bloch matrix T_ab = Tr[sigma_a Phi(sigma_b)]/2
(:func:`qubit_contraction_coefficient`; 1 - 4p/3 for PennyLane's ``DepolarizingChannel(p)``).

(C) Du, Hsieh, Liu, Tao and Liu, "Quantum noise protects quantum classifiers against adversaries",
Phys. Rev. Research 3, 023153 (2021), arXiv:2003.09416. Their setting is a classifier {Pi_i} o D_p o U
with *global* depolarizing noise D_p(rho) = (1 - p) rho + p I/d after an arbitrary unitary U. Their lemma:
it is epsilon-quantum-differentially private on tau-neighbouring states (T(rho, sigma) <= tau), i.e.
y_i(rho) <= e^epsilon y_i(sigma) for every outcome, with epsilon = ln[1 + d (1 - p) tau / p]
(:func:`du_epsilon`); their robustness theorem (after Lecuyer et al.'s PixelDP, 2019): if
y_k(rho) > e^(2 epsilon) max_{i != k} y_i(rho), every sigma within tau is classified k. Solved for tau
(:func:`du_radius`): tau_Du = p / (d (1 - p)) * (sqrt(y_k / y_(2)) - 1), with y the basis probabilities
(y_k / y_(2) = pi_(1) / pi_(2): renormalisation does not matter). Assumptions: measurement operators
0 <= Pi <= I with Tr Pi >= 1 (basis projectors), delta = 0, and the replacement state I/d. Proof: y_i =
(1 - p) a_i + p/d with |a_i(rho) - a_i(sigma)| <= T(rho, sigma) and y_i >= p/d.
Both formulas are re-derived here (the proof line), so the implementation stands on that proof.

Local and non-unital noise. The proof only uses Phi = (1 - p*) Psi + p* R with R(X) = Tr(X) I/d and Psi
any CPTP map. The largest such weight is p* = d lambda_min(J(Phi)) (J the Choi matrix
sum_ab Phi(|a><b|) (x) |a><b|; Phi - p* R is CP iff J >= p* I/d (x) I, and then also TP)
(:attr:`CircuitChannel.global_depolarizing_weight`), so tau_Du is applied with p = p*. For global
depolarizing p* = p. For per-wire depolarizing of probability p_w (Nielsen-Chuang convention) on n wires
p* = p_w^n: only the branch in which every wire is depolarized is a global replacement; for the shipped
circuit (``mixed``, p = 0.005: PennyLane ``DepolarizingChannel(0.002)``, p_w = 0.00267 per wire) that is
p* ~ 5e-11, so Du's bound is vacuous there. Amplitude damping alone has a rank-2 Choi matrix
(lambda_min = 0) and contributes nothing: its fixed point is |0>, not I/d; after a depolarizing channel it
turns the replaced wire's state into diag((1 + gamma)/2, (1 - gamma)/2) and so lowers p*. When p = 0
(or there is no depolarizing component) p* = 0, epsilon = infinity and tau_Du = 0: the noise-dependent term
vanishes, while (A) and (B), which need no noise, still certify.

(D) Exact radius over pure perturbations. The encoder only ever produces pure states, so the relevant
question is min{<phi|A_j|phi> : |<psi|phi>|^2 >= 1 - tau^2} (T = sqrt(1 - |<psi|phi>|^2) for pure states).
For any t >= 0 and such phi, t <phi|A_j|phi> >= lambda_min(t A_j - |psi><psi|) + (1 - tau^2) (weak duality),
so the prediction holds while tau^2 < 1 + lambda_min(t A_j - |psi><psi|), for *every* t: tau_pure =
min_j sqrt(1 + sup_t lambda_min(t A_j - |psi><psi|)) (:func:`pure_state_radii`). The function of t is concave
(a minimum of linear functions), and the duality is exact because the joint numerical range of two Hermitian
forms is convex (Toeplitz-Hausdorff), so this is the exact pure-state radius; tau_pure >= tau_op, tau_Du.

The whole input space (:func:`global_certificate`). Every encoded state lies within a proven trace distance
R = pi ||P||_2 sqrt(C) / 2 of |0...0> (:func:`encoder_reach_bound`: 0.497 for C = 10, 0.521 for C = 11). If
tau_pure(|0...0>) > R, the quantum branch predicts the same class for *every* input image, perturbed or not:
a certificate with no eps in it, which holds because the branch is constant, not because it is robust.

Noise does not enlarge the exact radius under global depolarizing noise: q_i = (1 - p) a_i + p/d leaves
every decision sigma -> argmax q(sigma) unchanged for p < 1, so the true certified radius is the noiseless
one and tau_op does not depend on p (E_k - E_j and q_k - q_j both scale by 1 - p). Du's bound grows with p
but stays below that noise-free radius: the growth is the bound's, not the classifier's.

Back to the logits and pixels (:func:`pixel_view`). theta = pi tanh(P^T s), s = (z - mean z)/(std z + 1e-8)
(population std), P the C x 3n projection (0.1 x orthonormal columns). One rotation by delta moves a pure
state by at most delta/2 in Fubini-Study angle (trace distance sin(delta/2)), and the angle is a metric, so
T(psi(theta), psi(theta')) <= sin(min(pi/2, ||theta - theta'||_1 / 2)). Along a logit segment of length r,
|d theta/d v| <= pi, ||J_s(z')||_2 = 1/(std z' + 1e-8) and std is 1/sqrt(C)-Lipschitz, so
    T <= sin(min(pi/2, a r / (std z - r/sqrt(C) + 1e-8))),  a = pi ||P^T||_{2->1} / 2,
for r < sqrt(C) std z (:func:`state_distance_bound`; ||.||_{2->1} exact by enumerating sign vectors). No
global Lipschitz constant exists: the standardisation divides by the logits' spread. Pixels enter through
the CNN's Lipschitz constant: the product of its layers' spectral norms (:func:`cnn_lipschitz_upper_bound`)
is a valid, vacuous, upper bound; the exact local Jacobian norm and an attack on the encoded state
(:func:`encoded_state_attack`) are what the pixels actually do, and neither is a certificate.

What is covered. The certificate covers the *quantum branch's argmax* for the fixed (``differentiable``
mode) projection. It does not cover the fused prediction, which mixes in the CNN's uncertified softmax with
weight alpha (about 0.88 on the shipped MNIST model), nor the ``paper`` mode, whose projection is redrawn at
every forward pass.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property, lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import Normalize, QShieldHybrid, Residual
from ..noise import NoiseModel
from ..quantum import CircuitConfig
from ..simulator import FastCircuitSimulator, channel_superoperator, encoded_state, rx, ry, rz

MAX_EXACT_CONTRACTION_DIM = 16
"""Largest dimension whose measured contraction coefficient is computed exactly (2^(d-1) outcome sets)."""
GLOBAL_DEPOLARIZING = "global_depolarizing"
"""A noise kind of this module only: the noiseless circuit followed by D_p on all wires at once."""
_PAULI_X = np.array([[0, 1], [1, 0]], dtype=np.complex128)
_BLOCH = (np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.array([[1, 0], [0, -1]]))


# --------------------------------------------------------------------------- the circuit as a channel


@dataclass
class CircuitChannel:
    """The circuit after the encoding as a map on input states: its superoperator (row-major vec, readout
    error included as a bit flip on every wire) and what the certificates need from it."""

    n_qubits: int
    superop: np.ndarray
    description: str = ""
    choi_minimum: float | None = None
    """lambda_min of the Choi matrix when known from the circuit's structure (:func:`structured_choi_minimum`)."""

    @property
    def dim(self) -> int:
        return 2**self.n_qubits

    @cached_property
    def effects(self) -> np.ndarray:
        """E_i = Phi^dagger(Pi_i), shape (2^n, 2^n, 2^n): q_i(rho) = Tr[E_i rho]."""
        d = self.dim
        rows = self.superop[np.arange(d) * (d + 1)]  # q_i = sum_ab rows[i, a d + b] rho_ab
        effects = rows.reshape(d, d, d).transpose(0, 2, 1)
        return np.ascontiguousarray((effects + effects.conj().transpose(0, 2, 1)) / 2)

    @cached_property
    def choi(self) -> np.ndarray:
        """J = sum_ab Phi(|a><b|) (x) |a><b| (output index first), shape (4^n, 4^n)."""
        d = self.dim
        return self.superop.reshape(d, d, d, d).transpose(0, 2, 1, 3).reshape(d * d, d * d)

    @cached_property
    def global_depolarizing_weight(self) -> float:
        """p* = d lambda_min(J): the largest p with Phi = (1 - p) Psi + p Tr(.) I/d, Psi CPTP (module docstring)."""
        smallest = self.choi_minimum
        if smallest is None:
            smallest = _choi_minimum(self.superop, self.dim)
        return float(min(max(self.dim * smallest, 0.0), 1.0))

    @cached_property
    def measured_contraction(self) -> float | None:
        """eta = max_S lambda_max(E_S) - lambda_min(E_S): the exact trace-norm contraction coefficient of
        rho -> q (module docstring, (B)); None above :data:`MAX_EXACT_CONTRACTION_DIM`."""
        return measured_contraction(self.effects)

    @property
    def contraction_bounds(self) -> tuple[float | None, float]:
        """(lower, upper) bounds on the quantum channel's own coefficient: eta <= eta_tr(Phi) <= 1 - p*."""
        return self.measured_contraction, 1.0 - self.global_depolarizing_weight

    def spreads(self, num_classes: int) -> np.ndarray:
        """s[k, j] = lambda_max(E_k - E_j) - lambda_min(E_k - E_j) over the first C outcomes."""
        values = self.pair_spectra(num_classes)[0]
        return values[..., -1] - values[..., 0]

    def pair_spectra(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (C, C, d) and eigenvectors (C, C, d, d) of E_k - E_j (cached)."""
        cache = self.__dict__.setdefault("_pair_spectra", {})
        if num_classes not in cache:
            e = torch.from_numpy(self.effects[:num_classes])
            values, vectors = torch.linalg.eigh(e[:, None] - e[None, :])
            cache[num_classes] = (values.numpy(), vectors.numpy())
        return cache[num_classes]

    def probabilities(self, states: np.ndarray) -> np.ndarray:
        """Outcome probabilities of (B, d) pure states or (B, d, d) density matrices, shape (B, d)."""
        states = np.asarray(states)
        if states.shape[1:] not in ((self.dim,), (self.dim, self.dim)):
            raise ValueError(f"Expected (B, {self.dim}) state vectors or (B, {self.dim}, {self.dim}) density "
                             f"matrices, got {states.shape}.")
        if states.ndim == 2:
            return np.einsum("ba,iac,bc->bi", states.conj(), self.effects, states).real
        return np.einsum("iac,bca->bi", self.effects, states).real


def eigvalsh(matrices: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of (batches of) Hermitian matrices, through torch: it keeps to
    ``torch.set_num_threads``, where NumPy's threaded LAPACK can be 100x slower on a busy machine."""
    return torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(matrices))).numpy()


def measured_contraction(effects: np.ndarray, chunk: int = 2048) -> float | None:
    """Exact trace-norm contraction coefficient of the measurement map rho -> (Tr E_i rho)_i (module docstring)."""
    d = effects.shape[0]
    if d > MAX_EXACT_CONTRACTION_DIM:
        return None
    best = 0.0
    count = 2 ** (d - 1)  # sets without the last outcome: each set or its complement is one of them
    parts = torch.from_numpy(np.ascontiguousarray(effects[:-1])).reshape(d - 1, d * d)
    for start in range(0, count, chunk):
        codes = np.arange(start, min(start + chunk, count))
        bits = ((codes[:, None] >> np.arange(d - 1)) & 1).astype(np.float64)
        eig = eigvalsh((torch.from_numpy(bits).to(torch.complex128) @ parts).reshape(-1, d, d).numpy())
        best = max(best, float((eig[:, -1] - eig[:, 0]).max()))
    return best


def qubit_contraction_coefficient(kraus: list[np.ndarray]) -> float:
    """Exact trace-norm contraction coefficient of a single-qubit channel: the largest singular value of its
    Bloch matrix T_ab = Tr[sigma_a Phi(sigma_b)] / 2 (traceless parts map linearly, ||a.sigma||_1 = 2|a|)."""
    def apply(x: np.ndarray) -> np.ndarray:
        return sum(k @ x @ k.conj().T for k in kraus)

    bloch = np.array([[np.trace(a @ apply(b)).real / 2 for b in _BLOCH] for a in _BLOCH])
    return float(np.linalg.norm(bloch, 2))


def _readout_superoperator(readout: float, n_qubits: int) -> torch.Tensor | None:
    if readout == 0:
        return None
    kraus = [math.sqrt(1 - readout) * np.eye(2, dtype=np.complex128), math.sqrt(readout) * _PAULI_X]
    total = torch.eye(4**n_qubits, dtype=torch.complex128)
    for wire in range(n_qubits):
        total = channel_superoperator(kraus, wire, n_qubits) @ total
    return total


def _choi_minimum(superop: np.ndarray, dim: int) -> float:
    choi = superop.reshape(dim, dim, dim, dim).transpose(0, 2, 1, 3).reshape(dim * dim, dim * dim)
    return float(eigvalsh((choi + choi.conj().T) / 2)[0])


def structured_choi_minimum(config: CircuitConfig, global_depolarizing: float = 0.0) -> float | None:
    """lambda_min of the circuit's Choi matrix from one wire's, for one layer (None for deeper circuits).

    With one layer the channel is (x)_w N_w o U (N_w: the wire's noise then its readout bit flip, U the
    unitary). J(Phi o U) = (I (x) U^T) J(Phi) (I (x) U^T)^dagger has the spectrum of J((x)_w N_w), a tensor
    product of the wires' 4 x 4 Choi matrices (PSD), whose smallest eigenvalue is the product of theirs.
    Global depolarizing g mixes in J(R) = I (x) I / d: lambda -> (1 - g) lambda + g/d.
    """
    if config.depth != 1:
        return None
    wire = torch.eye(4, dtype=torch.complex128)
    for kraus in config.noise.kraus_per_wire:
        wire = channel_superoperator(kraus, 0, 1) @ wire
    readout = _readout_superoperator(config.noise.readout, 1)
    wire = wire if readout is None else readout @ wire
    smallest = max(_choi_minimum(wire.numpy(), 2), 0.0) ** config.n_qubits
    return (1 - global_depolarizing) * smallest + global_depolarizing / 2**config.n_qubits


def _global_depolarize(superop: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    """(1 - p) Phi + p R with R(X) = Tr(X) I/d, as superoperators (row-major vec)."""
    vec_identity = torch.eye(dim, dtype=torch.complex128).reshape(-1)
    return (1 - p) * superop + p * torch.outer(vec_identity / dim, vec_identity)


def circuit_channel(config: CircuitConfig, weights: torch.Tensor | None = None,
                    global_depolarizing: float = 0.0) -> CircuitChannel:
    """The channel of ``config``'s circuit after the encoding (cached when there are no trainable weights).

    ``global_depolarizing`` adds D_p on all wires at once after the last layer, before readout (Du et al.'s
    setting; ``config``'s own per-wire noise stays).
    """
    if not 0.0 <= global_depolarizing <= 1.0:
        raise ValueError(f"global_depolarizing must lie in [0, 1], got {global_depolarizing}.")
    if weights is None or weights.numel() == 0:
        return _cached_channel(config, float(global_depolarizing))
    return _build_channel(config, weights, float(global_depolarizing))


@lru_cache(maxsize=64)
def _cached_channel(config: CircuitConfig, global_depolarizing: float) -> CircuitChannel:
    return _build_channel(config, None, global_depolarizing)


def _build_channel(config: CircuitConfig, weights: torch.Tensor | None, global_depolarizing: float) -> CircuitChannel:
    if config.device is not None or config.noise_placement != "every_layer" or config.shots is not None:
        raise ValueError("The quantum-noise certificate covers circuits with per-layer noise only (no device noise, "
                         "no noise_placement='end', no finite shots).")
    sim = FastCircuitSimulator(config.n_qubits, config.encoding, config.pairs, config.depth, config.noise)
    superop = sim.superoperator(weights)
    if global_depolarizing > 0:
        superop = _global_depolarize(superop, global_depolarizing, sim.dim)
    readout = _readout_superoperator(config.noise.readout, config.n_qubits)
    if readout is not None:
        superop = readout @ superop
    label = config.noise.describe() + (f", then global depolarizing p={global_depolarizing:g}"
                                       if global_depolarizing else "")
    return CircuitChannel(config.n_qubits, superop.numpy(), label,
                          structured_choi_minimum(config, global_depolarizing))


def noise_variant(config: CircuitConfig, kind: str, p: float) -> tuple[CircuitConfig, float]:
    """``config`` with its noise kind and strength replaced (readout kept): (config, global weight).

    ``kind`` is one of the :class:`~qshield_core.noise.NoiseModel` kinds that use p, or
    :data:`GLOBAL_DEPOLARIZING` (the noiseless circuit, then D_p on all wires at once).
    """
    if kind == GLOBAL_DEPOLARIZING:
        return config.with_noise(NoiseModel("none", 0.0, readout=config.noise.readout)), float(p)
    if kind == "thermal":
        raise ValueError("The thermal noise model has no strength p to vary; choose another kind.")
    return config.with_noise(replace(config.noise, kind=kind, p=float(p))), 0.0


# --------------------------------------------------------------------------- the radii (state level)


def du_epsilon(p: float, tau: float, dim: int) -> float:
    """Du et al. (2021), lemma: epsilon = ln[1 + d (1 - p) tau / p] for global depolarizing p on d dimensions."""
    if tau <= 0:
        return 0.0
    if p <= 0:
        return math.inf
    return math.log1p(dim * (1 - p) * tau / p)


def du_radius(p: float, top: float, second: float, dim: int) -> float:
    """Du et al. (2021), robustness theorem solved for tau: the largest tau with top > e^(2 epsilon) second,
    tau = p / (d (1 - p)) (sqrt(top / second) - 1), capped at 1 (the largest trace distance)."""
    if p <= 0 or top <= second:
        return 0.0
    if p >= 1 or second <= 0:
        return 1.0
    return float(min(1.0, p / (dim * (1 - p)) * (math.sqrt(top / second) - 1)))


def pure_state_radii(channel: CircuitChannel, states: np.ndarray, predicted: np.ndarray, num_classes: int,
                     grid: int = 25, refine: int = 30) -> np.ndarray:
    """(D) The exact certified radius over *pure* perturbations of pure ``states`` (B, d), per state.

    For each competitor j, tau_j^2 = 1 + sup_{t >= 0} lambda_min(t A_j - |psi><psi|) (module docstring):
    a concave function of t, maximised on a log grid and refined by golden section. Every t gives a sound
    radius (weak duality), so the optimisation's accuracy only costs tightness, never soundness. The
    eigenvalue is that of a rank-one update of t A_j, found from A_j's spectrum by :func:`lowest_rank_one`.
    """
    alphas, vectors = channel.pair_spectra(num_classes)
    alpha = alphas[predicted]  # (B, C, d): eigenvalues of E_k - E_j
    weights = np.abs(np.einsum("bjai,ba->bji", vectors[predicted].conj(), states)) ** 2  # |<v_i|psi>|^2

    def phi(t: np.ndarray) -> np.ndarray:
        return lowest_rank_one(t[..., None] * alpha, weights)

    ts = np.concatenate([[0.0], np.logspace(-3, 4, grid)])
    values = np.stack([phi(np.full(alpha.shape[:2], t)) for t in ts])  # (T, B, C)
    best_index = values.argmax(0)
    low = ts[np.maximum(best_index - 1, 0)]
    high = ts[np.minimum(best_index + 1, len(ts) - 1)]
    best = np.maximum(values.max(0), _golden_max(phi, low, high, refine))
    tau = np.sqrt(np.clip(1 + best, 0.0, 1.0))
    tau[alpha[..., 0] >= 0] = 1.0  # q_k >= q_j for every state
    tau[(alpha * weights).sum(-1) <= 1e-12] = 0.0  # q_k - q_j <= 0 here: a tie is no prediction
    tau[np.arange(len(states)), predicted] = np.inf
    return np.clip(tau.min(1), 0.0, 1.0)


def lowest_rank_one(diagonal: np.ndarray, weights: np.ndarray, iterations: int = 52) -> np.ndarray:
    """A lower bound (to 2^-52 ||w||^2) on lambda_min(diag(d) - w w^dagger), given d and |w_i|^2, along the last axis.

    The smallest eigenvalue is the root below min(d) of sum_i |w_i|^2 / (d_i - lambda) = 1, increasing in
    lambda there, and lies in [min(d) - ||w||^2, min(d)]; bisection keeps the lower end, where the sum is <= 1.
    """
    top = diagonal.min(-1)
    low, high = top - weights.sum(-1), top.copy()
    for _ in range(iterations):
        mid = (low + high) / 2
        gap = diagonal - mid[..., None]
        with np.errstate(divide="ignore"):
            terms = np.divide(weights, gap, out=np.zeros_like(gap), where=weights > 0)
        below = terms.sum(-1) <= 1
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    return low


def _golden_max(f, low: np.ndarray, high: np.ndarray, steps: int) -> np.ndarray:
    """The largest value seen by elementwise golden-section search of a concave ``f`` on [low, high]."""
    ratio = (math.sqrt(5) - 1) / 2
    x1, x2 = high - ratio * (high - low), low + ratio * (high - low)
    f1, f2 = f(x1), f(x2)
    best = np.maximum(f1, f2)
    for _ in range(steps):
        left = f1 >= f2  # the maximum lies in [low, x2]: x1 becomes the new x2; else x2 becomes the new x1
        low, high = np.where(left, low, x1), np.where(left, x2, high)
        probe_x = np.where(left, high - ratio * (high - low), low + ratio * (high - low))
        probe = f(probe_x)
        x1, x2 = np.where(left, probe_x, x2), np.where(left, x1, probe_x)
        f1, f2 = np.where(left, probe, f2), np.where(left, f1, probe)
        best = np.maximum(best, probe)
    return best


def _radii(channel: CircuitChannel, states: np.ndarray, num_classes: int, elementary: bool = False,
           pure: bool = True) -> dict[str, np.ndarray]:
    """Per state: predicted class, runner-up, the top-two basis probabilities and the radii (A)-(D), from
    (B, d) pure states or (B, d, d) density matrices (the pure-state radius needs pure states)."""
    q = channel.probabilities(states)
    scores = q[:, :num_classes]
    order = np.argsort(-scores, axis=1, kind="stable")
    k, second = order[:, 0], order[:, 1]
    rows = np.arange(len(q))
    gaps = scores[rows, k][:, None] - scores  # q_k - q_j, (B, C)
    spreads = channel.spreads(num_classes)[k]  # s[k, j], (B, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(spreads > 1e-15, gaps / spreads, np.where(gaps > 0, np.inf, 0.0))
    ratio[rows, k] = np.inf
    top, runner = scores[rows, k], scores[rows, second]
    out = {"q": q, "predicted": k, "runner_up": second, "top": top, "second": runner,
           "operator": np.clip(ratio.min(1), 0.0, 1.0),
           "du": np.array([du_radius(channel.global_depolarizing_weight, a, b, channel.dim)
                           for a, b in zip(top, runner, strict=True)])}
    eta = channel.measured_contraction if elementary else None
    out["elementary"] = np.clip((top - runner) / (2 * eta), 0.0, 1.0) if eta else np.full(len(q), np.nan)
    out["radius"] = np.maximum(out["operator"], out["du"])
    is_vector = np.asarray(states).ndim == 2 and np.asarray(states).shape[1:] == (channel.dim,)
    out["pure"] = (np.maximum(pure_state_radii(channel, np.asarray(states), k, num_classes), out["radius"])
                   if pure and is_vector else np.full(len(q), np.nan))
    return out


@dataclass(frozen=True)
class StateCertificate:
    """The certificate of one input state (module docstring): the quantum branch's prediction cannot change
    for any state within trace distance ``radius`` (max of the operator and Du radii, both sound for pure and
    mixed perturbations), nor for any *pure* state within ``radius_pure``."""

    predicted: int
    runner_up: int
    top2: tuple[float, float]
    """The renormalised class probabilities pi of the prediction and of the runner-up."""
    class_mass: float
    """S = sum_{c<C} q_c, the probability of the outcomes that are classes."""
    radius_operator: float
    radius_elementary: float | None
    radius_du: float
    radius_pure: float | None
    contraction: float | None
    """eta, the exact contraction coefficient of the measured circuit (None if not computed)."""
    du_weight: float
    """p*, the global depolarizing weight Du et al.'s bound is applied with."""

    @property
    def gap(self) -> float:
        return self.top2[0] - self.top2[1]

    @property
    def radius(self) -> float:
        return max(self.radius_operator, self.radius_du)


def _optional(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def certify_state(channel: CircuitChannel, state: np.ndarray, num_classes: int,
                  elementary: bool = True) -> StateCertificate:
    """The certificate of one input ``state`` (a 2^n vector or a density matrix) for the first ``num_classes``
    outcomes."""
    if not 2 <= num_classes <= channel.dim:
        raise ValueError(f"num_classes must lie in [2, {channel.dim}], got {num_classes}.")
    r = {key: value[0] for key, value in
         _radii(channel, np.asarray(state, dtype=np.complex128)[None], num_classes, elementary).items()}
    mass = float(r["q"][:num_classes].sum())
    return StateCertificate(
        int(r["predicted"]), int(r["runner_up"]), (float(r["top"] / mass), float(r["second"] / mass)), mass,
        float(r["operator"]), _optional(r["elementary"]), float(r["du"]), _optional(r["pure"]),
        channel.measured_contraction if elementary else None, channel.global_depolarizing_weight)


# --------------------------------------------------------------------------- the hybrid model


def _check_hybrid(model: nn.Module) -> QShieldHybrid:
    if not isinstance(model, QShieldHybrid):
        raise TypeError(f"The quantum certificate needs a QShieldHybrid, got {type(model).__name__}.")
    return model


def _batch(image: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.dim() not in (3, 4):
        raise ValueError(f"Expected an image (channels, H, W) or a batch (B, channels, H, W), got {tuple(x.shape)}.")
    return x.unsqueeze(0) if x.dim() == 3 else x


def encode(model: QShieldHybrid, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(logits, angles, encoded states (B, 2^n) complex128) with the fixed projection, in eval mode, no grad."""
    with torch.no_grad():
        logits = model.cnn(images)
        angles = model.encoder(logits, random_projection=False)
        states = encoded_state(angles.to(torch.float64), model.circuit_config.encoding)
    return logits, angles, states.numpy()


def _weights(model: QShieldHybrid) -> torch.Tensor | None:
    weights = model.quantum.weights
    return None if weights is None else weights.detach().to(torch.float64)


def fused_predictions(model: QShieldHybrid, logits: torch.Tensor, q: np.ndarray) -> torch.Tensor:
    """The hybrid's fused argmax from the CNN logits and the circuit's outcome probabilities (as the model does)."""
    class_probs = torch.as_tensor(q[:, :model.num_classes], dtype=logits.dtype)
    class_probs = class_probs / class_probs.sum(-1, keepdim=True).clamp_min(1e-12)
    with torch.no_grad():
        alpha = model.fusion.alpha(logits, class_probs)
        return model.fusion.fuse(logits, class_probs, alpha).argmax(-1)


def per_wire_depolarizing(noise: NoiseModel) -> float:
    """The per-wire depolarizing probability in the Nielsen-Chuang convention (4/3 x PennyLane's)."""
    specs = dict(noise.channel_specs())
    return 4 / 3 * specs["DepolarizingChannel"][0] if "DepolarizingChannel" in specs else 0.0


@dataclass(frozen=True)
class QuantumCertificate:
    """What the quantum certificate says about one image (see the module docstring for each radius)."""

    predicted: int
    """The quantum branch's argmax (the certified quantity)."""
    runner_up: int
    top2: tuple[float, float]
    gap: float
    class_mass: float
    radius: float
    """Certified trace distance of the encoded state against any state, pure or mixed: max(operator, Du)."""
    radius_pure: float
    """Exact certified trace distance against pure states (what the encoder produces)."""
    radius_operator: float
    radius_elementary: float | None
    radius_du: float
    contraction: float | None
    contraction_bounds: tuple[float | None, float]
    du_weight: float
    du_naive: float
    """Du's formula with the per-wire depolarizing probability read as if global: NOT a certificate."""
    p: float
    noise: str
    fused_predicted: int
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return asdict(self)


def quantum_certificates(model: nn.Module, images: torch.Tensor, elementary: bool = True) -> list[QuantumCertificate]:
    """:class:`QuantumCertificate` of each image of a batch (B, channels, H, W) in [0, 1]."""
    model = _check_hybrid(model).eval()
    config = model.circuit_config
    channel = circuit_channel(config, _weights(model))
    logits, _, states = encode(model, _batch(images))
    r = _radii(channel, states, model.num_classes, elementary)
    fused = fused_predictions(model, logits, r["q"])
    p_wire = per_wire_depolarizing(config.noise)
    notes = _notes(channel)
    out = []
    for b in range(len(states)):
        mass = float(r["q"][b, :model.num_classes].sum())
        top2 = (float(r["top"][b] / mass), float(r["second"][b] / mass))
        out.append(QuantumCertificate(
            int(r["predicted"][b]), int(r["runner_up"][b]), top2, top2[0] - top2[1], mass, float(r["radius"][b]),
            float(r["pure"][b]), float(r["operator"][b]), _optional(r["elementary"][b]), float(r["du"][b]),
            channel.measured_contraction if elementary else None, channel.contraction_bounds,
            channel.global_depolarizing_weight, du_radius(p_wire, r["top"][b], r["second"][b], channel.dim),
            config.noise.p, channel.description, int(fused[b]), notes))
    return out


def quantum_certificate(model: nn.Module, image: torch.Tensor) -> QuantumCertificate:
    """The quantum certificate of one image (channels, H, W) in [0, 1]: see the module docstring."""
    return quantum_certificates(model, _batch(image)[:1])[0]


def _notes(channel: CircuitChannel) -> tuple[str, ...]:
    return (
        "Certifies the quantum branch's argmax for the fixed (differentiable-mode) projection: against any state "
        "within 'radius' of the encoded state, and any pure state within 'radius_pure'.",
        "Does not certify the fused prediction: it leans on the CNN's uncertified softmax with weight alpha.",
        f"Du et al.'s bound is applied with the circuit's global depolarizing weight p* = "
        f"{channel.global_depolarizing_weight:.3g}; with local noise that is the product of the per-wire weights.",
        "radius_elementary uses the exact contraction coefficient of the measured circuit; radius_operator is "
        "sharper; neither needs noise.",
    )


# --------------------------------------------------------------------------- the whole input space


def encoder_reach_bound(model: nn.Module) -> float:
    """A proven bound on T(|0...0>, psi(z)) over *every* logit vector z: min(1, pi ||P||_2 sqrt(C) / 2).

    ||s||_2 < sqrt(C) after standardisation, |theta_i| <= pi |v_i| with v = P^T s, and each qubit's fidelity
    with |0> is (1 + cos a cos b)/2 >= 1 - (a^2 + b^2)/4 (RX a, RY b; RZ only adds a phase), so the product
    fidelity is >= 1 - ||theta||^2 / 4 and T = sqrt(1 - F) <= ||theta||_2 / 2.
    """
    model = _check_hybrid(model)
    _require_enhanced(model)
    norm = float(torch.linalg.matrix_norm(model.encoder.fixed_projection.to(torch.float64), 2))
    return min(1.0, math.pi * norm * math.sqrt(model.num_classes) / 2)


@dataclass(frozen=True)
class GlobalCertificate:
    """Whether the quantum branch provably predicts one class for every input: true when the pure-state radius
    of |0...0> exceeds the encoder's reach around it (:func:`encoder_reach_bound`)."""

    constant_class: int
    center_radius_pure: float
    center_radius: float
    reach_bound: float
    proved: bool
    noise: str


def global_certificate(model: nn.Module, kind: str | None = None, p: float | None = None) -> GlobalCertificate:
    """The quantum branch's prediction over the whole input space (any image, any perturbation), at the
    model's noise or at (``kind``, ``p``)."""
    model = _check_hybrid(model)
    config, extra = model.circuit_config, 0.0
    if kind is not None or p is not None:
        config, extra = noise_variant(config, _kind(model, kind), config.noise.p if p is None else p)
    channel = circuit_channel(config, _weights(model), extra)
    center = np.zeros((1, channel.dim), dtype=np.complex128)
    center[0, 0] = 1.0
    r = _radii(channel, center, model.num_classes)
    reach = encoder_reach_bound(model)
    return GlobalCertificate(int(r["predicted"][0]), float(r["pure"][0]), float(r["radius"][0]), reach,
                             bool(r["pure"][0] > reach), channel.description)


# --------------------------------------------------------------------------- as a function of the noise


def _kind(model: QShieldHybrid, kind: str | None) -> str:
    return model.circuit_config.noise.kind if kind is None else kind


def radii_at(model: QShieldHybrid, states: np.ndarray, kind: str, p: float, elementary: bool = False,
             pure: bool = True) -> dict[str, np.ndarray]:
    """The radii of encoded ``states`` (B, 2^n) with the model's circuit under noise (``kind``, ``p``)."""
    config, extra = noise_variant(model.circuit_config, kind, p)
    channel = circuit_channel(config, _weights(model), extra)
    out = _radii(channel, states, model.num_classes, elementary, pure)
    out["du_weight"] = np.full(len(states), channel.global_depolarizing_weight)
    return out


def certified_radius_vs_p(model: nn.Module, image: torch.Tensor, ps, kind: str | None = None,
                          elementary: bool = False) -> list[dict]:
    """The certificate of one image as the noise strength p varies (``kind`` defaults to the model's own;
    :data:`GLOBAL_DEPOLARIZING` puts Du et al.'s global noise on the noiseless circuit). One dict per p."""
    model = _check_hybrid(model).eval()
    _, _, states = encode(model, _batch(image)[:1])
    rows = []
    for p in ps:
        r = radii_at(model, states, _kind(model, kind), float(p), elementary)
        rows.append({"p": float(p), "predicted": int(r["predicted"][0]), "radius": float(r["radius"][0]),
                     "radius_pure": float(r["pure"][0]), "radius_operator": float(r["operator"][0]),
                     "radius_du": float(r["du"][0]), "radius_elementary": _optional(r["elementary"][0]),
                     "du_weight": float(r["du_weight"][0])})
    return rows


DEFAULT_PS = (0.0, *np.logspace(-4, 0, 17).tolist())
"""The p grid of :func:`noise_to_certify`: 0, then 1e-4 to 1 at 4 points a decade."""


@dataclass(frozen=True)
class NoiseToCertify:
    """The smallest noise strength at which the certificate covers ``target`` (p None: no p <= 1 does)."""

    target: float
    kind: str
    p: float | None
    radius_at_p: float | None
    predicted_at_p: int | None
    max_radius: float
    """The largest certified radius over the p grid (to compare with the target)."""


def first_certifying_p(radius_grid: np.ndarray, ps, targets: np.ndarray) -> np.ndarray:
    """For each column (point) of a (len(ps), B) radius grid, the first p that covers its target (NaN if none)."""
    covered = radius_grid >= np.asarray(targets)[None, :]
    first = covered.argmax(0)
    return np.where(covered.any(0), np.asarray(ps, dtype=np.float64)[first], np.nan)


def noise_to_certify(model: nn.Module, image: torch.Tensor, target: float, kind: str | None = None,
                     ps=DEFAULT_PS, refine: int = 12, pure: bool = True) -> NoiseToCertify:
    """The smallest p (of the model's noise kind, or ``kind``) at which the certified radius of ``image`` first
    reaches ``target`` (e.g. the encoded-state distance the paper's eps causes, a pure-state perturbation:
    ``pure`` uses the pure-state radius, else the all-states one): the first grid point that covers it, refined
    by ``refine`` bisection steps towards the grid point before (assuming the radius is monotone in between).
    The certificate at p is for the circuit's own prediction at p."""
    model = _check_hybrid(model).eval()
    kind = _kind(model, kind)
    key = "pure" if pure else "radius"
    _, _, states = encode(model, _batch(image)[:1])

    def radius(p: float) -> dict[str, np.ndarray]:
        return radii_at(model, states, kind, p, pure=pure)

    radii = np.array([radius(float(p))[key][0] for p in ps])
    hits = np.flatnonzero(radii >= target)
    if hits.size == 0:
        return NoiseToCertify(float(target), kind, None, None, None, float(radii.max()))
    index = int(hits[0])
    high = float(ps[index])
    low = float(ps[index - 1]) if index > 0 else high
    for _ in range(refine if index > 0 else 0):
        mid = (low + high) / 2
        low, high = (low, mid) if radius(mid)[key][0] >= target else (mid, high)
    r = radius(high)
    return NoiseToCertify(float(target), kind, high, float(r[key][0]), int(r["predicted"][0]), float(radii.max()))


# --------------------------------------------------------------------------- back to the logits


def norm_2_to_1(matrix: torch.Tensor) -> float:
    """||M||_{2->1} = max_{||u||_2 = 1} ||M u||_1 = max over sign vectors s of ||M^T s||_2 (exact; rows <= 18)."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    rows = m.shape[0]
    if rows > 18:
        return math.sqrt(rows) * float(torch.linalg.matrix_norm(m, 2))
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=rows)), dtype=torch.float64)
    return float((signs @ m).norm(dim=1).max())


def _require_enhanced(model: QShieldHybrid) -> None:
    if model.circuit_config.encoding != "enhanced":
        raise ValueError("The logit-to-state bound is written for the 'enhanced' encoding (pi tanh of a projection).")


def angle_jacobian(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """d theta / d z at one logit vector (C,), shape (3n, C), with the fixed projection."""
    model = _check_hybrid(model)

    def angles(z: torch.Tensor) -> torch.Tensor:
        return model.encoder(z.unsqueeze(0), random_projection=False).reshape(-1)

    return torch.autograd.functional.jacobian(angles, logits.detach().to(torch.float64).reshape(-1))


def local_state_lipschitz(model: nn.Module, logits: torch.Tensor) -> float:
    """First-order (not certified) trace distance per unit logit L2 norm: ||J_theta||_{2->1} / 2."""
    return norm_2_to_1(angle_jacobian(model, logits)) / 2


def _logit_constants(model: QShieldHybrid, logits: torch.Tensor) -> tuple[float, float, int]:
    _require_enhanced(model)
    z = logits.detach().to(torch.float64).reshape(-1)
    a = math.pi * norm_2_to_1(model.encoder.fixed_projection.to(torch.float64).T) / 2
    return a, float(z.std(unbiased=False)), z.numel()


def state_distance_bound(model: nn.Module, logits: torch.Tensor, radius: float) -> float:
    """A certified upper bound on T(psi(z), psi(z')) over every z' with ||z' - z||_2 <= radius (module docstring)."""
    a, std, c = _logit_constants(_check_hybrid(model), logits)
    room = std - radius / math.sqrt(c) + 1e-8
    if room <= 0:
        return 1.0
    return math.sin(min(math.pi / 2, a * radius / room))


def certified_logit_radius(model: nn.Module, logits: torch.Tensor, tau: float) -> float:
    """The largest logit L2 radius whose encoded states provably stay within trace distance ``tau``
    (the inverse of :func:`state_distance_bound`; infinite when tau >= 1)."""
    if tau >= 1:
        return math.inf
    a, std, c = _logit_constants(_check_hybrid(model), logits)
    beta = math.asin(max(tau, 0.0))
    return beta * (std + 1e-8) / (a + beta / math.sqrt(c))


# --------------------------------------------------------------------------- back to the pixels


def _flatten(module: nn.Module):
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _flatten(child)
    else:
        yield module


def _conv_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, shape: torch.Size, iterations: int) -> float:
    """Spectral norm of a (BN-folded) convolution on inputs of ``shape``, by power iteration on J^T J."""
    weight = conv.weight.detach().to(torch.float64)
    if bn is not None:
        scale = bn.weight.detach().to(torch.float64) / torch.sqrt(bn.running_var.to(torch.float64) + bn.eps)
        weight = weight * scale.view(-1, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(1, *shape, generator=gen, dtype=torch.float64)
    norm = 0.0
    for _ in range(iterations):
        v = (v / v.norm()).requires_grad_(True)
        y = F.conv2d(v, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        (v,) = torch.autograd.grad(y, v, y)
        norm = math.sqrt(float(v.norm()))
    return norm


def _module_factor(layer: nn.Module, x: torch.Tensor, iterations: int) -> float:
    if isinstance(layer, Normalize):
        return float((1 / layer.std).max())
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(layer.weight.detach().to(torch.float64), 2))
    if isinstance(layer, nn.BatchNorm2d):
        return float((layer.weight / torch.sqrt(layer.running_var + layer.eps)).abs().max())
    if isinstance(layer, (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity, nn.AdaptiveMaxPool2d)):
        return 1.0
    if isinstance(layer, nn.MaxPool2d):
        if layer.kernel_size != layer.stride and layer.stride is not None:
            raise ValueError("Overlapping max pooling has no Lipschitz constant 1 here.")
        return 1.0
    if isinstance(layer, nn.AdaptiveAvgPool2d) and layer.output_size in (1, (1, 1)):
        return 1 / math.sqrt(x.shape[-1] * x.shape[-2])
    if isinstance(layer, Residual):
        return 1.0 + cnn_lipschitz_upper_bound(layer.body, tuple(x.shape[1:]), iterations)[0]
    raise ValueError(f"No Lipschitz bound for layer {type(layer).__name__}.")


def cnn_lipschitz_upper_bound(cnn: nn.Module, input_shape: tuple[int, ...],
                              iterations: int = 100) -> tuple[float, list[tuple[str, float]]]:
    """An upper bound on the CNN's L2 -> L2 Lipschitz constant (pixels in [0, 1] to logits): the product of
    its layers' spectral norms (BN folded into the convolution before it; max pooling 1, global average pooling
    1/sqrt(HW), residual 1 + its body's). Each convolution's norm is a converged power iteration. Returns
    (bound, [(layer, factor), ...])."""
    cnn = cnn.eval()
    layers = list(_flatten(cnn))
    x = torch.zeros(1, *input_shape)
    bound, factors, i = 1.0, [], 0
    with torch.no_grad():
        while i < len(layers):
            layer = layers[i]
            bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d) else None
            if isinstance(layer, nn.Conv2d):
                with torch.enable_grad():
                    factor = _conv_norm(layer, bn, x.shape[1:], iterations)
                x = layer(x)
                x = bn(x) if bn is not None else x
                i += 2 if bn is not None else 1
                name = "conv+bn" if bn is not None else "conv"
            else:
                factor = _module_factor(layer, x, iterations)
                x, i, name = layer(x), i + 1, type(layer).__name__
            bound *= factor
            factors.append((name, factor))
    return bound, factors


def logit_jacobian_norms(cnn: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The exact local L2 -> L2 sensitivity ||d z / d x||_2 of the logits at each image (one backward per class;
    eval mode, so the images do not interact), shape (B,)."""
    cnn = cnn.eval()
    x = images.detach().clone().requires_grad_(True)
    logits = cnn(x)
    rows = [torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < logits.shape[1] - 1)[0].flatten(1)
            for c in range(logits.shape[1])]
    return torch.linalg.matrix_norm(torch.stack(rows, 1), 2).detach()


def _qubit_states(angles: torch.Tensor, encoding: str) -> torch.Tensor:
    """Each qubit's encoded state, (B, n, 2) complex (differentiable)."""
    if encoding == "angle":
        half = angles / 2
        real = torch.stack([torch.cos(half), torch.sin(half)], -1)
        return torch.complex(real, torch.zeros_like(real))
    return (rz(angles[..., 2]) @ ry(angles[..., 1]) @ rx(angles[..., 0]))[..., :, 0]


def _infidelity(model: QShieldHybrid, reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """1 - |<psi_ref|psi(x)>|^2 = T^2 for pure states, per image (differentiable in the images)."""
    states = _qubit_states(model.encoder(model.cnn(images), random_projection=False), model.circuit_config.encoding)
    overlap = (reference.conj() * states).sum(-1).prod(-1)
    return 1 - overlap.abs() ** 2


def encoded_state_attack(model: nn.Module, images: torch.Tensor, eps: float, steps: int = 20, restarts: int = 1,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """How far an L-inf perturbation of size ``eps`` moves the encoded state: PGD (random start from
    ``generator``, step eps/4) maximising T(psi(x), psi(x + delta)). Returns the largest trace distance found
    and the logit L2 change there, each (B,). An empirical lower estimate of the worst case, not a bound."""
    model = _check_hybrid(model).eval()
    images = images.detach()
    with torch.no_grad():
        base_logits = model.cnn(images)
        reference = _qubit_states(model.encoder(base_logits, random_projection=False), model.circuit_config.encoding)
    best = torch.zeros(len(images))
    best_logit = torch.zeros(len(images))
    for _ in range(restarts):
        start = (torch.rand(images.shape, generator=generator) * 2 - 1) * eps
        x = (images + start).clamp(0, 1)
        for step in range(steps + 1):
            x = x.detach().requires_grad_(step < steps)
            with torch.set_grad_enabled(step < steps):
                value = _infidelity(model, reference, x)
            with torch.no_grad():
                improved = value.detach() > best**2
                best = torch.where(improved, value.detach().clamp_min(0).sqrt(), best)
                best_logit = torch.where(improved, (model.cnn(x) - base_logits).norm(dim=1), best_logit)
            if step == steps:
                break
            (grad,) = torch.autograd.grad(value.sum(), x)
            with torch.no_grad():
                x = images + (x + eps / 4 * grad.sign() - images).clamp(-eps, eps)
                x = x.clamp(0, 1)
    return best, best_logit


@dataclass(frozen=True)
class PixelView:
    """The certificate carried back to the logits and pixels (module docstring), for one image."""

    tau: float
    """The certified trace distance of the encoded state."""
    certified_logit_radius: float
    """Logit L2 radius whose encoded states provably stay within tau."""
    local_state_lipschitz: float
    """First-order trace distance per unit logit change (not a certificate)."""
    cnn_lipschitz_upper: float
    """Product of the CNN's layer spectral norms (L2 pixels -> L2 logits): a valid, loose, bound."""
    local_jacobian_norm: float
    """The exact local sensitivity ||dz/dx||_2 at the image (not a certificate)."""
    certified_pixel_radius_l2: float
    certified_pixel_radius_linf: float
    first_order_pixel_radius_l2: float
    """certified_logit_radius / local_jacobian_norm: what the local slope suggests, not a certificate."""
    eps: float
    state_bound_at_eps: float
    """Certified upper bound on the encoded-state distance an L-inf eps can cause (via the global bound)."""
    empirical_state_distance_at_eps: float
    """The largest encoded-state distance an attack at eps found (a lower estimate of the worst case)."""
    empirical_logit_change_at_eps: float

    @property
    def covered(self) -> bool:
        """Whether the certificate covers what the attack found at eps (an empirical check, not a proof)."""
        return self.tau >= self.empirical_state_distance_at_eps

    def to_dict(self) -> dict:
        return {**asdict(self), "covered": self.covered}


def pixel_view(model: nn.Module, image: torch.Tensor, eps: float, tau: float | None = None,
               cnn_bound: float | None = None, steps: int = 20, generator: torch.Generator | None = None) -> PixelView:
    """The certificate of ``image`` in logit and pixel terms (module docstring). ``tau`` defaults to the
    image's pure-state radius (the encoder's perturbations are pure); ``cnn_bound``
    (:func:`cnn_lipschitz_upper_bound`) is computed when not given."""
    model = _check_hybrid(model).eval()
    x = _batch(image)[:1]
    tau = quantum_certificate(model, x).radius_pure if tau is None else float(tau)
    if cnn_bound is None:
        cnn_bound = cnn_lipschitz_upper_bound(model.cnn, tuple(x.shape[1:]))[0]
    with torch.no_grad():
        logits = model.cnn(x)[0]
    r_logit = certified_logit_radius(model, logits, tau)
    jac = float(logit_jacobian_norms(model.cnn, x)[0])
    dims = x[0].numel()
    found, logit_change = encoded_state_attack(model, x, eps, steps, generator=generator)
    return PixelView(
        tau, r_logit, local_state_lipschitz(model, logits), cnn_bound, jac, r_logit / cnn_bound,
        r_logit / cnn_bound / math.sqrt(dims), r_logit / jac, eps,
        state_distance_bound(model, logits, cnn_bound * eps * math.sqrt(dims)), float(found[0]),
        float(logit_change[0]))
