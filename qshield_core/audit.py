"""The masking audit and the claim cards: what a reviewer checks before believing a robustness number.

Each check is a small function with a threshold and a sentence that says what to do next, in the
spirit of AutoAttack's own checks (Croce & Hein 2020, ``autoattack/checks.py`` and its flags
documentation) and of RobustBench's admission rules (Croce et al. 2021, arXiv 2010.09670): a
deterministic forward pass, non-zero input gradients, and evaluation by standard AutoAttack.

Two kinds of evidence:

- *live* checks on the model itself, on shipped samples (seeded, so the audit repeats):
  :func:`check_randomised_forward`, :func:`check_cut_branch`, :func:`check_zero_gradients` and
  :func:`check_large_eps` (ART's security-curve check: at eps = 1 an L-inf attack may replace the
  image by any other, so robust accuracy must reach about 0);
- checks on the committed records, comparing attacks on the points they all saw:
  :func:`check_blackbox_beats_whitebox` and :func:`check_eot_gain`.

:func:`claim_card` puts them together with the headline numbers, one card per model and gradient
mode; ``python -m qshield_core claims`` writes ``results/claims.json`` and the table of the README.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import rng
from .attacks import ATTACKS, resolve_params
from .data import get_spec
from .evaluation import (
    compare_on_shared_points,
    evaluation_points,
    is_preset_budget,
    predict_probs,
    run_attack,
    select_records,
    worst_case,
)
from .models import QShieldHybrid, is_hybrid_name
from .report import lowest_on_shared_points

CLAIMS_SCHEMA = "qshield.claims/1"
WHITE_BOX = ("fgsm", "pgd", "apgd", "vmifgsm", "pgd100", "apgd-ce", "apgd-dlr")
"""Gradient attacks on the model itself (AutoAttack is left out: it contains Square)."""
GRADIENT_FREE = ("square", "square5000", "transfer-classical")
"""Attacks that need no gradient of the model: score-based queries, or a transfer from the CNN."""
EOT_PAIRS = (("eot-pgd", "pgd100"), ("autoattack-rand", "apgd-ce"))
"""(attack built for randomness, its plain counterpart)."""
LARGE_EPS = 1.0
LARGE_EPS_STEPS = 50
ZERO_GRADIENT_SHARE = 0.01
REMAINING_AT_LARGE_EPS = 0.05


@dataclass
class Flag:
    """One check: whether it raised, on what evidence, and what to do about it."""

    name: str
    title: str
    raised: bool | None
    """True: the check found the problem; False: it did not; None: not measurable here."""
    evidence: str
    advice: str

    @property
    def mark(self) -> str:
        return {True: "raised", False: "clear", None: "not measured"}[self.raised]


# --------------------------------------------------------------------------- live checks


def check_randomised_forward(model: nn.Module, images: torch.Tensor) -> Flag:
    """Two identical forward passes (two draws of the model's randomness) that give different outputs."""
    a = predict_probs(model, images, seed=0)
    b = predict_probs(model, images, seed=1)
    differ = float((a - b).abs().amax())
    changed = float((a.argmax(-1) != b.argmax(-1)).float().mean())
    raised = differ > 1e-6
    return Flag("randomised_forward", "randomised forward pass", raised,
                f"two identical calls on {len(images)} shipped images differ by up to {differ:.3g} in probability; "
                f"{100 * changed:.1f} % of the predicted classes change",
                "a randomised defence: evaluate over several draws and with attacks built for randomness "
                "(EOT, AutoAttack's rand version)" if raised else "deterministic: standard AutoAttack applies")


def _quantum_branch_gradient(model: QShieldHybrid, images: torch.Tensor) -> float:
    x = images.clone().requires_grad_(True)
    with rng.seeded(0), torch.enable_grad():
        quantum_probs = model.details(x).quantum_probs
        if not quantum_probs.requires_grad:
            return 0.0
        weights = torch.linspace(-1, 1, quantum_probs.shape[-1], dtype=quantum_probs.dtype)
        (grad,) = torch.autograd.grad((quantum_probs * weights).sum(), x, allow_unused=True)
    return 0.0 if grad is None else float(grad.abs().amax())


def check_cut_branch(model: nn.Module, images: torch.Tensor) -> Flag:
    """A branch of the model whose output has no gradient with respect to the input."""
    inner = getattr(model, "model", model)
    if not isinstance(inner, QShieldHybrid):
        return Flag("cut_branch", "branch cut from the input gradient", False,
                    "a single-branch network: every output depends differentiably on the input", "")
    largest = _quantum_branch_gradient(inner, images)
    raised = largest == 0.0
    return Flag("cut_branch", "branch cut from the input gradient", raised,
                f"largest |d(quantum branch output)/d(input)| over {len(images)} shipped images: {largest:.3g}",
                "the gradient sees only the CNN: attack through a differentiable twin (BPDA) or without gradients "
                "(Square, transfer)" if raised else "gradients flow through the quantum branch")


def check_zero_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Flag:
    """Points whose cross-entropy has an all-zero input gradient (AutoAttack's ``check_zero_gradients``)."""
    x = images.clone().requires_grad_(True)
    with rng.seeded(0), torch.enable_grad():
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    share = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
    raised = share > ZERO_GRADIENT_SHARE
    return Flag("zero_gradients", "zero input gradients", raised,
                f"{100 * share:.1f} % of {len(images)} shipped images have an all-zero input gradient",
                "gradient attacks cannot start on these points: use gradient-free attacks" if raised else "")


def check_large_eps(model: nn.Module, dataset: str, images: torch.Tensor, labels: torch.Tensor) -> Flag:
    """ART's security-curve check: PGD at eps = 1 (any image reachable) must leave about no point robust."""
    params = resolve_params("pgd100", dataset, steps=LARGE_EPS_STEPS)
    params.update(eps=LARGE_EPS, alpha=LARGE_EPS / 20, n_restarts=1, random_start=False)
    out = run_attack(model, images, labels, "pgd100", dataset, params=params, seed=0)
    robust = float((out.clean_correct & out.adv_correct).float().mean())
    raised = robust > REMAINING_AT_LARGE_EPS
    return Flag("large_eps", f"robust accuracy at eps = {LARGE_EPS:g}", raised,
                f"PGD-{LARGE_EPS_STEPS} (steps of {LARGE_EPS / 20:g} from the clean image) at eps = {LARGE_EPS:g} "
                f"leaves {100 * robust:.1f} % of {len(images)} shipped images robust",
                "an attack that cannot win with an unbounded budget is being blocked (masked gradients): the number "
                "at the real eps is not a robustness figure" if raised else "")


# --------------------------------------------------------------------------- record checks


def _at_eps(records: Sequence[dict], eps: float) -> dict[str, dict]:
    """{attack: the record that stands for it at ``eps``} over records on the test split."""
    chosen = select_records(r for r in records if r.get("eps") is not None and abs(r["eps"] - eps) < 1e-9
                            and "robust_accuracy" in r and is_preset_budget(r))
    return {key[3]: r for key, r in chosen.items()}


def _compare(stronger: Sequence[dict], weaker: Sequence[dict]) -> tuple[str, str, float, float, int, bool] | None:
    """The strongest attack of each group (lowest robust accuracy on the points both groups saw), then those
    two compared on every point they share: (attack a, attack b, a's robust accuracy, b's, n, whether a lies
    below b beyond Newcombe's paired 95 % interval)."""
    case = worst_case([*stronger, *weaker])
    if case is None:
        return None
    names_a = [r["attack"] for r in stronger if r["attack"] in case.per_attack]
    names_b = [r["attack"] for r in weaker if r["attack"] in case.per_attack]
    if not names_a or not names_b:
        return None
    a = min(names_a, key=lambda k: case.per_attack[k])
    b = min(names_b, key=lambda k: case.per_attack[k])
    record = {r["attack"]: r for r in [*stronger, *weaker]}
    paired = compare_on_shared_points(worst_case([record[b]]), worst_case([record[a]]))  # b - a
    return a, b, paired.accuracy_b, paired.accuracy_a, paired.n, paired.difference_ci[0] > 0


def check_blackbox_beats_whitebox(records: Sequence[dict], eps: float) -> Flag:
    """A gradient-free or transfer attack that leaves fewer points robust than every white-box gradient attack."""
    at = _at_eps(records, eps)
    found = _compare([at[a] for a in GRADIENT_FREE if a in at], [at[a] for a in WHITE_BOX if a in at])
    title = "gradient-free or transfer attack beats white-box ones"
    if found is None:
        return Flag("blackbox_beats_whitebox", title, None, "no gradient-free and white-box records on shared points",
                    "run square5000 and transfer-classical beside PGD on the same points")
    free, white, r_free, r_white, n, beyond_noise = found
    raised = r_free < r_white and beyond_noise
    return Flag("blackbox_beats_whitebox", title, raised,
                f"on the same {n} points: {ATTACKS[free].display_name} leaves {100 * r_free:.1f} % robust, the "
                f"best white-box attack ({ATTACKS[white].display_name}) {100 * r_white:.1f} %",
                "the white-box gradient is not informative (masking): trust the gradient-free figure, and adapt the "
                "attack" if raised else "")


def check_eot_gain(records: Sequence[dict], eps: float) -> Flag:
    """An attack built for randomness (EOT) that beats its plain counterpart."""
    at = _at_eps(records, eps)
    title = "EOT gains over the plain attack"
    results = [_compare([at[e]], [at[p]]) for e, p in EOT_PAIRS if e in at and p in at]
    results = [r for r in results if r is not None]
    if not results:
        return Flag("eot_gain", title, None, "no EOT and plain records on shared points",
                    "run eot-pgd beside pgd100 (or autoattack-rand beside apgd-ce) on the same points")
    best = min(results, key=lambda r: r[2] - r[3])
    eot, plain, r_eot, r_plain, n, beyond_noise = best
    raised = r_eot < r_plain and beyond_noise
    return Flag("eot_gain", title, raised,
                f"on the same {n} points: {ATTACKS[eot].display_name} leaves {100 * r_eot:.1f} % robust, "
                f"{ATTACKS[plain].display_name} {100 * r_plain:.1f} %",
                "the randomness hides the gradient: report the EOT figure" if raised else "")


# --------------------------------------------------------------------------- claim cards


@dataclass
class ClaimCard:
    """One model's claim, RobustBench style: the numbers, the flags, and whether it would be admitted."""

    dataset: str
    model: str
    grad_mode: str | None
    eps: float
    clean_accuracy: dict | None
    paper_protocol: dict | None
    autoattack: dict | None
    worst_case: dict | None
    flags: list[Flag] = field(default_factory=list)
    robustbench_admissible: bool = False
    admission_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _headline(record: dict | None) -> dict | None:
    if record is None:
        return None
    out = {"attack": record["attack"], "robust_accuracy": record["robust_accuracy"],
           "robust_accuracy_ci": record["robust_accuracy_ci"], "asr": record.get("asr"), "n": record["n"],
           "key": record["key"]}
    draws = record.get("draws")
    if draws:
        out["draws"] = {"n_draws": draws["n_draws"], "robust_accuracy": draws["robust_accuracy"]}
    return out


def _autoattack_record(at: dict[str, dict]) -> dict | None:
    """AutoAttack's record: standard or rand (EOT), whichever leaves fewer points robust on the points both saw."""
    return lowest_on_shared_points([at[a] for a in ("autoattack", "autoattack-rand") if a in at])


def _admission(flags: Sequence[Flag], standard_autoattack: bool) -> tuple[bool, list[str]]:
    """RobustBench's rules: deterministic forward, non-zero gradients, standard AutoAttack evaluated."""
    by_name = {f.name: f for f in flags}
    reasons = []
    if by_name["randomised_forward"].raised:
        reasons.append("randomised forward pass (RobustBench admits deterministic models only)")
    if by_name["cut_branch"].raised or by_name["zero_gradients"].raised:
        reasons.append("part of the model has no input gradient (obfuscated gradients)")
    if not standard_autoattack:
        reasons.append("no standard AutoAttack evaluation on record")
    return not reasons, reasons


def claim_card(model: nn.Module, dataset: str, model_name: str, grad_mode: str | None, records: Sequence[dict],
               n_live: int = 30, surrogate: nn.Module | None = None) -> ClaimCard:
    """The claim card of one model and gradient mode: headline numbers from ``records`` (this model's),
    the live checks on ``n_live`` shipped samples, the record checks, and RobustBench's verdict."""
    spec = get_spec(dataset)
    eps = spec.paper_eps
    points = evaluation_points(spec.name, n_live, seed=0, source="samples")
    on_test = [r for r in records if (r.get("points") or {}).get("kind", "test") == "test"]
    at = _at_eps(on_test, eps)
    clean = next((r for r in select_records(r for r in on_test if r["attack"] == "none").values()), None)
    flags = [
        check_randomised_forward(model, points.images),
        check_cut_branch(model, points.images),
        check_zero_gradients(model, points.images, points.labels),
        check_large_eps(model, spec.name, points.images, points.labels),
        check_blackbox_beats_whitebox(on_test, eps),
        check_eot_gain(on_test, eps),
    ]
    autoattack = _headline(_autoattack_record(at))
    case = worst_case(list(at.values())) if at else None
    admitted, reasons = _admission(flags, "autoattack" in at)
    return ClaimCard(
        dataset=spec.name, model=model_name, grad_mode=grad_mode, eps=eps,
        clean_accuracy=None if clean is None else {"accuracy": clean["clean_accuracy"],
                                                   "ci": clean["clean_accuracy_ci"], "n": clean["n"]},
        paper_protocol=_headline(at.get("pgd")), autoattack=autoattack,
        worst_case=None if case is None else {"robust_accuracy": case.robust_accuracy,
                                              "robust_accuracy_ci": list(case.robust_accuracy_ci), "n": case.n,
                                              "attacks": list(case.attacks)},
        flags=flags, robustbench_admissible=admitted, admission_reasons=reasons,
    )


# --------------------------------------------------------------------------- the committed cards


def claim_cards(records: Sequence[dict], datasets: Sequence[str] = ("mnist", "organamnist", "cifar10"),
                model_dir=None, n_live: int = 30, progress=None) -> list[ClaimCard]:
    """The claim cards of every shipped model and gradient mode that has records (a missing model is named
    in a card with an error flag, never skipped silently)."""
    from . import zoo

    cards = []
    for dataset in datasets:
        spec = get_spec(dataset)
        for name in zoo.available_models(spec.name, model_dir):
            modes = [None] if not is_hybrid_name(name) else ["paper", "differentiable"]
            for mode in modes:
                mine = [r for r in records if r.get("dataset") == spec.name and r.get("model") == name
                        and r.get("grad_mode") == mode]
                if not mine:
                    continue
                model, _ = zoo.load_model(spec.name, name, grad_mode=mode or "paper", directory=model_dir)
                model.requires_grad_(False)
                cards.append(claim_card(model, spec.name, name, mode, mine, n_live=n_live))
                if progress is not None:
                    progress(cards[-1])
    return cards


def save_claims(path, cards: Sequence[ClaimCard], command: str | None = None) -> None:
    """Write the cards as JSON (``{"schema": CLAIMS_SCHEMA, "command": ..., "cards": [...]}``), atomically."""
    import json
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"schema": CLAIMS_SCHEMA, "command": command,
                               "cards": [c.to_dict() for c in cards]}, indent=1) + "\n")
    os.replace(tmp, path)


def load_claims(path) -> list[dict]:
    """The cards of a claims file ([] when it does not exist); ValueError when it is not one."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("schema") != CLAIMS_SCHEMA:
        raise ValueError(f"{path} is not a claims file ({CLAIMS_SCHEMA}).")
    return data["cards"]
