"""Study reports over training seeds: one row per design (or model), its seeds' mean and spread beside the CNN.

A study model is named ``<model>-s<seed>`` (e.g. ``hybrid-depth3-trainable-p0.05-s1``, trained by
``scripts/design_study.sh``); its records are those of :mod:`qshield_core.evaluation`, all on the same
seeded points. For each seed the report takes, at the dataset's paper eps:

- the clean accuracy, the paper-protocol PGD-10's attack success rate, the transfer attack's robust accuracy;
- AutoAttack's robust accuracy (the ``rand`` version for a randomised model, where the grid runs it);
- the **per-point worst case** over every attack the seed's model met, once AutoAttack is among them
  (:func:`~qshield_core.evaluation.worst_case`: a point counts as robust only if it survived all of them), and
  its difference from the CNN's worst case on the points both saw, with Newcombe's 95 % interval for paired
  outcomes (:func:`~qshield_core.evaluation.compare_on_shared_points`).

A design "exceeds the CNN beyond the intervals" when that interval lies above 0 for every seed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .data import get_spec
from .evaluation import WorstCase, compare_on_shared_points, select_records, spread, worst_case
from .evaluation import format_interval as _ci
from .evaluation import format_percent as _pct

SEED_NAME = re.compile(r"^(?P<model>.+)-s(?P<seed>\d+)$")
BASELINE = "classical"
AUTOATTACKS = ("autoattack", "autoattack-rand")


@dataclass(frozen=True)
class SeedResult:
    """One trained model of a study at the paper's eps (None: its cell has not run)."""

    model: str
    seed: int | None
    grad_mode: str | None
    clean: float | None
    pgd_asr: float | None
    transfer: float | None
    autoattack: dict | None
    worst: WorstCase | None
    pgd_n: int | None = None
    """The points the PGD-10 cell attacked (the paper protocol's n, often more than AutoAttack's)."""

    @property
    def complete(self) -> bool:
        """Whether AutoAttack has run: without it the worst case over the other attacks is no worst case."""
        return self.autoattack is not None

    @property
    def randomised(self) -> bool:
        return self.autoattack is not None and self.autoattack["attack"] == "autoattack-rand"


def split_seed(model: str) -> tuple[str, int | None]:
    """``hybrid-x-s2`` -> (``hybrid-x``, 2); a name without a seed suffix -> (name, None)."""
    match = SEED_NAME.fullmatch(model)
    return (match["model"], int(match["seed"])) if match else (model, None)


def _at_eps(records: Sequence[dict], dataset: str, eps: float) -> list[dict]:
    """One dataset's records at ``eps``, with its clean records (no eps)."""
    return [r for r in records if r["dataset"] == dataset and (r.get("eps") is None or abs(r["eps"] - eps) < 1e-9)]


def seed_result(records: Sequence[dict]) -> SeedResult:
    """The figures of one model's records (one dataset, one gradient mode)."""
    by_attack = {r["attack"]: r for r in select_records(records).values()}
    clean = by_attack.get("none")
    pgd, transfer = by_attack.get("pgd"), by_attack.get("transfer-classical")
    autoattack = next((by_attack[a] for a in reversed(AUTOATTACKS) if a in by_attack), None)
    attacked = [r for a, r in by_attack.items() if a != "none"]
    model, seed = split_seed(records[0]["model"])
    return SeedResult(model, seed, records[0].get("grad_mode"), None if clean is None else clean["clean_accuracy"],
                      None if pgd is None else pgd["asr"], None if transfer is None else transfer["robust_accuracy"],
                      autoattack, worst_case(attacked) if attacked else None, None if pgd is None else pgd["n"])


def study_results(records: Sequence[dict], dataset: str,
                  baseline: str = BASELINE) -> dict[tuple[str, str | None], list[SeedResult]]:
    """Per (base model name without its seed suffix, gradient mode), its seeds' results in seed order; the
    baseline first."""
    at_eps = [r for r in records if r["dataset"] == dataset and (r.get("points") or {}).get("kind", "test") == "test"]
    groups: dict[tuple[str, str | None], list[dict]] = {}
    for r in at_eps:
        groups.setdefault((r["model"], r.get("grad_mode")), []).append(r)
    rows: dict[tuple[str, str | None], list[SeedResult]] = {}
    for group in groups.values():
        result = seed_result(group)
        rows.setdefault((result.model, result.grad_mode), []).append(result)
    order = sorted(rows, key=lambda k: (k[0] != baseline, k[0], k[1] or ""))
    return {k: sorted(rows[k], key=lambda s: -1 if s.seed is None else s.seed) for k in order}


def difference_from(result: SeedResult, baseline: SeedResult | None) -> tuple[float, tuple[float, float]] | None:
    """The worst-case robust accuracy minus the baseline's on the points both saw, and its paired 95 % interval
    (None if either is missing or has not met AutoAttack yet)."""
    if result.worst is None or baseline is None or baseline.worst is None or not (result.complete
                                                                                    and baseline.complete):
        return None
    paired = compare_on_shared_points(result.worst, baseline.worst)
    return None if paired is None else (paired.difference, paired.difference_ci)


def verdict(differences: Sequence[tuple[float, tuple[float, float]] | None]) -> str:
    """Above / below / within the CNN, decided on the intervals of every seed."""
    found = [d for d in differences if d is not None]
    if not differences:
        return "-"
    if len(found) < len(differences):
        return f"pending ({len(found)} of {len(differences)} seeds)"
    if all(lo > 0 for _, (lo, _) in found):
        return f"**above**, every seed ({len(found)})"
    if all(hi < 0 for _, (_, hi) in found):
        return f"below, every seed ({len(found)})"
    above = sum(lo > 0 for _, (lo, _) in found)
    return "no: within" + (f" ({above} of {len(found)} seeds above)" if above else "")


def _mean_sd(values: Sequence[float | None], ci: Sequence[float] | None = None) -> str:
    """"mean +- sd" over the seeds that have the value, "(k of n seeds)" after it while some have not; one value
    with its interval."""
    found = [v for v in values if v is not None]
    if not found:
        return "-"
    partial = f" ({len(found)} of {len(values)} seeds)" if len(found) < len(values) else ""
    if len(found) == 1:
        return f"{_pct(found[0])}" + (f" {_ci(ci)}" if ci else "") + partial
    s = spread(found)
    return f"{_pct(s['mean'])} ± {_pct(s['std'])}{partial}"


def _reference_for(seed: SeedResult, baselines: Sequence[SeedResult]) -> SeedResult | None:
    """The baseline a seed is compared with: the one baseline model, or the baseline of the same seed
    (a study that trains its CNN over seeds as well)."""
    if len(baselines) == 1:
        return baselines[0]
    return next((b for b in baselines if b.seed == seed.seed), None)


def _row(name: str, seeds: list[SeedResult], baselines: Sequence[SeedResult], is_baseline: bool,
         autoattack_modes: Sequence[str] | None = None, modes_shown: Sequence[str | None] = (),
         seeds_of_model: Sequence[int | None] = ()) -> list[str]:
    """One model's row; a hybrid mode outside ``autoattack_modes`` (None: every mode) is not attacked by
    AutoAttack in its study, and says where its AutoAttack is instead of "pending" (or that it has not run, when
    none of those modes has a row yet: ``modes_shown`` are the model's modes in the table). ``seeds_of_model``:
    the seeds any of the model's modes has reached, in order; a row with fewer says "k of n", its per-seed
    differences stand under their seed numbers ("·" for a seed it has not reached) and its verdict is pending."""
    one = len(seeds) == 1
    aa = [s.autoattack for s in seeds]
    aa_text = _mean_sd([None if r is None else r["robust_accuracy"] for r in aa],
                       aa[0]["robust_accuracy_ci"] if one and aa[0] else None)
    if any(s.randomised for s in seeds):
        aa_text += " (rand)"
    worst = [s.worst if s.complete else None for s in seeds]  # no worst case before AutoAttack has run
    worst_text = _mean_sd([None if w is None else w.robust_accuracy for w in worst],
                          worst[0].robust_accuracy_ci if one and worst[0] else None)
    mode = seeds[0].grad_mode or "-"
    judged = autoattack_modes is None or seeds[0].grad_mode in (None, *autoattack_modes)
    by_seed = {s.seed: s for s in seeds}
    order = list(dict.fromkeys([*seeds_of_model, *by_seed]))  # a seed this mode has not reached: pending
    diffs = [] if is_baseline or not judged else [
        None if seed not in by_seed else difference_from(by_seed[seed], _reference_for(by_seed[seed], baselines))
        for seed in order]
    diff_text = "-" if not diffs else "; ".join(
        "·" if d is None else f"{100 * d[0]:+.1f} {_ci(d[1])}" for d in diffs)
    judgement = ("baseline" if is_baseline else verdict(diffs) if judged
                 else f"- (AutoAttack: the {' and '.join(autoattack_modes)} row)"
                 if set(autoattack_modes) & set(modes_shown)
                 else f"- (AutoAttack: on the {' and '.join(autoattack_modes)} mode, not run yet)")
    seeds_text = str(len(seeds)) + (f" of {len(order)}" if len(order) > len(seeds) else "")
    return [display_name(name), mode, seeds_text, _mean_sd([s.clean for s in seeds]),
            _mean_sd([s.pgd_asr for s in seeds]), _mean_sd([s.transfer for s in seeds]), aa_text, worst_text,
            diff_text, judgement]


def display_name(model: str) -> str:
    """A design study's ``hybrid-<design>`` by its design; a variant of a shipped model (``hybrid-full@pgd-at``)
    whole, where ``full@pgd-at`` would not say what it is."""
    return model if "@" in model else model.removeprefix("hybrid-")


HEADER = ["model", "mode", "seeds", "clean %", "PGD-10 ASR %", "transfer robust %", "AutoAttack robust %",
          "worst case robust %", "worst case - CNN, per seed (points) [95 %]", "above the CNN?"]


def _dataset_results(records: Sequence[dict], dataset: str, eps: float | None,
                     baseline: str) -> tuple[float, dict[tuple[str, str | None], list[SeedResult]]]:
    """(eps, :func:`study_results` of one dataset's records at ``eps``, default the paper's)."""
    eps = get_spec(dataset).paper_eps if eps is None else eps
    return eps, study_results(_at_eps(records, dataset, eps), dataset, baseline)


@dataclass(frozen=True)
class StudyRows:
    """One dataset's study table: its title (dataset, eps, n) and its rows under :data:`HEADER`."""

    title: str
    rows: list[list[str]]
    results: dict[tuple[str, str | None], list[SeedResult]]
    """What the rows were made from (:func:`study_results`), for a note beside them (:attr:`Study.note`)."""


def study_rows(records: Sequence[dict], dataset: str, eps: float | None = None, baseline: str = BASELINE,
               results: dict | None = None, autoattack_modes: Sequence[str] | None = None) -> StudyRows | None:
    """The rows of one dataset at ``eps`` (default: the paper's), None without records. ``results``: that
    dataset's :func:`study_results` at ``eps`` when the caller has them already. ``autoattack_modes``: the
    hybrids' modes the study attacks with AutoAttack (None: all); each seed is compared with the baseline's
    seed of the same number when the baseline has several, else with the one."""
    spec = get_spec(dataset)
    if results is None:
        eps, results = _dataset_results(records, dataset, eps, baseline)
    eps = spec.paper_eps if eps is None else eps
    if not results:
        return None
    baselines = next((seeds for (model, _), seeds in results.items() if model == baseline), [])
    n = {s.worst.n for seeds in results.values() for s in seeds if s.worst is not None and s.complete}
    pgd_n = {s.pgd_n for seeds in results.values() for s in seeds if s.pgd_n is not None} - n
    reached: dict[str, set[int | None]] = {}
    for (model, _), seeds in results.items():
        reached.setdefault(model, set()).update(s.seed for s in seeds)
    rows = [_row(model, seeds, baselines, model == baseline, autoattack_modes,
                 [mode for (other, mode) in results if other == model],
                 sorted(reached[model], key=lambda seed: -1 if seed is None else seed))
            for (model, _), seeds in results.items()]
    in_255 = f"{eps * 255:.3g}/255"
    eps_text = in_255 if abs(eps * 255 - round(eps * 255)) < 1e-9 else f"{eps:g} ({in_255})"
    points = (f"n = {', '.join(map(str, sorted(n)))} test points (the same for every model)" if n
              else "no model's worst case complete yet")
    title = (f"**{spec.display_name}**, eps = {eps_text}, {points}"
             + (f"; PGD-10 on {', '.join(map(str, sorted(pgd_n)))}" if pgd_n else ""))
    return StudyRows(title, rows, results)


def study_table(records: Sequence[dict], dataset: str, eps: float | None = None, baseline: str = BASELINE,
                results: dict | None = None, autoattack_modes: Sequence[str] | None = None) -> str:
    """The Markdown table of one dataset at ``eps`` (default: the paper's) (:data:`HEADER`); "" without records.
    ``results``: that dataset's :func:`study_results` at ``eps`` when the caller has them already."""
    from .report import markdown_table

    table = study_rows(records, dataset, eps, baseline, results, autoattack_modes)
    return "" if table is None else table.title + "\n\n" + markdown_table(HEADER, table.rows)


def _legend(baseline: str, attacks: str) -> str:
    return ("Mean ± standard deviation over the seeds that have run (one value: with its 95 % Wilson interval). "
            f"*Worst case*: a point counts as robust only if it survived every attack its model met ({attacks}). "
            f"*Above the CNN?*: whether each seed's worst case exceeds {baseline}'s on the points both saw, beyond "
            "Newcombe's 95 % interval for the difference of paired outcomes.")


def design_legend() -> str:
    """How to read a design-study table."""
    return ("Each model is attacked in the mode it was trained in. "
            + _legend("the shipped CNN", "PGD-10, transfer from the CNN, AutoAttack"))


def advtrain_legend() -> str:
    """How to read an adversarial-training table."""
    return _legend("the adversarially trained CNN", "PGD-10, transfer from the defended CNN, AutoAttack")


def design_study_markdown(records: Sequence[dict], datasets: Sequence[str] = ("mnist", "organamnist")) -> str:
    """Both datasets' tables at the paper's eps, and how to read them."""
    tables = [t for t in (study_table(records, d) for d in datasets) if t]
    if not tables:
        return "No design-study records yet: `bash scripts/design_study.sh`."
    return "\n\n".join([*tables, design_legend()])


ADVTRAIN_EPS = {"mnist": 0.3, "organamnist": 8 / 255}
"""The eps the adversarial-training study trains and attacks at (grids/advtrain.toml)."""
ADVTRAIN_BASELINE = "classical@pgd-at"
ADVTRAIN_CONTROL = "classical@pgd-at-extra-epoch"
"""The defended CNN trained the one epoch (of PGD batches) that hybrid-full@pgd-at's recipe adds to its CNN, with no
circuit (``train --recipe extra-epoch``; :func:`~qshield_core.models.extra_epoch_control_of`)."""


ADVTRAIN_CONTROL_CAPTION = (f"Against the extra-epoch control ({ADVTRAIN_CONTROL}: {ADVTRAIN_BASELINE} trained the "
                            "hybrid's extra epoch of PGD batches with no circuit; *above the CNN?* compares with it)")


def advtrain_control_tables(records: Sequence[dict], dataset: str) -> list[tuple[str, str, dict]]:
    """The advtrain study's second table for ``dataset``, as (heading, caption, :func:`study_rows` options): every
    model against the extra-epoch control, once the control has met AutoAttack (before that, each of its rows
    would read pending)."""
    control_met_autoattack = any(r["dataset"] == dataset and r["model"] == ADVTRAIN_CONTROL
                                 and r["attack"] == "autoattack" for r in records)
    if dataset not in ADVTRAIN_EPS or not control_met_autoattack:
        return []
    return [("Adversarial training: against the extra-epoch control", ADVTRAIN_CONTROL_CAPTION,
             {"eps": ADVTRAIN_EPS[dataset], "baseline": ADVTRAIN_CONTROL})]


def advtrain_markdown(records: Sequence[dict]) -> str:
    """The adversarially trained CNN beside its hybrid in both gradient modes, per dataset at its training eps; once
    the extra-epoch control has met AutoAttack, a second table compares every model with it."""
    tables = []
    for dataset, eps in ADVTRAIN_EPS.items():
        tables.append(study_table(records, dataset, eps, ADVTRAIN_BASELINE))
        tables += [f"{caption}:\n\n" + study_table(records, dataset, **options)
                   for _, caption, options in advtrain_control_tables(records, dataset)]
    tables = [t for t in tables if t]
    if not tables:
        return "No adversarial-training records yet: `bash scripts/advtrain_study.sh`."
    return "\n\n".join([*tables, advtrain_legend()])


SEED_BASELINE = "classical@scratch"
SEED_AUTOATTACK_MODES = ("differentiable",)
"""The seed study's AutoAttack runs on each hybrid's differentiable mode (grids/seed-study.toml); its paper-mode
rows have the paper's protocol only."""
PAPER_ORDER = ("hybrid-none@scratch", "hybrid-linear@scratch", "hybrid-star@scratch", "hybrid-full@scratch")
"""The paper's single-run ordering of PGD's attack success rate on MNIST: none > linear > star > full."""


def ordering_check(results: dict[tuple[str, str | None], list[SeedResult]],
                   order: Sequence[str] = PAPER_ORDER) -> list[tuple[str, str, float, tuple[float, float]] | None]:
    """For each neighbouring pair of ``order``: (first, second, difference of the mean PGD ASR over seeds in the
    paper's gradient mode, Welch's 95 % interval of it); None where a pair lacks two seeds each. The ordering
    stands outside the seed-to-seed spread where every interval lies above 0."""
    from scipy import stats

    by_model = {model: [s.pgd_asr for s in seeds if s.pgd_asr is not None] for (model, mode), seeds in results.items()
                if mode != "differentiable"}  # the paper's protocol: its mode (AutoAttack's rows are the other)
    out = []
    for first, second in itertools.pairwise(order):
        a, b = by_model.get(first, []), by_model.get(second, [])
        if len(a) < 2 or len(b) < 2:
            out.append(None)
            continue
        interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        out.append((first, second, float(sum(a) / len(a) - sum(b) / len(b)),
                    (float(interval.low), float(interval.high))))
    return out


def _ordering_text(pairs: list) -> str:
    found = [p for p in pairs if p is not None]
    if not found:
        return "The paper's ordering: not enough seeds yet (two per model at least)."
    parts = [f"{a.split('@')[0].removeprefix('hybrid-')} - {b.split('@')[0].removeprefix('hybrid-')}: "
             f"{100 * d:+.1f} {_ci(ci)}" for a, b, d, ci in found]
    stands = len(found) == len(pairs) and all(ci[0] > 0 for _, _, _, ci in found)
    verdict = ("stands outside the seed-to-seed spread" if stands else
               "does not stand outside the seed-to-seed spread" if len(found) == len(pairs) else "pending")
    return (f"The paper's ordering of PGD ASR (none > linear > star > full), difference of means with Welch's 95 % "
            f"interval over seeds, points: {'; '.join(parts)}. It {verdict}.")


def seed_legend() -> str:
    """How to read a seed-study table."""
    return _legend("the same-recipe CNN", "PGD-10, AutoAttack")


def seed_study_note(results: dict[tuple[str, str | None], list[SeedResult]]) -> str:
    """Whether the paper's entanglement ordering stands outside the seed-to-seed spread, from one dataset's
    :func:`study_results`."""
    return _ordering_text(ordering_check(results))


def seed_study_markdown(records: Sequence[dict], datasets: Sequence[str] = ("mnist", "organamnist")) -> str:
    """Per dataset at the paper's eps: each model's seeds beside the CNN's, and the ordering check."""
    parts = []
    for dataset in datasets:
        _, results = _dataset_results(records, dataset, None, SEED_BASELINE)
        if results:
            table = study_table(records, dataset, baseline=SEED_BASELINE, results=results,
                                autoattack_modes=SEED_AUTOATTACK_MODES)
            parts += [table, seed_study_note(results)]
    if not parts:
        return "No seed-study records yet: `bash scripts/seed_study.sh`."
    return "\n\n".join([*parts, seed_legend()])


@dataclass(frozen=True)
class Study:
    """One of the project's studies: its results file under ``results/``, the script that runs it, how its
    records are read for a dataset (:func:`study_rows`' options; None: it does not run on that dataset) and
    rendered (the README's block, the app's table)."""

    name: str
    """As ``python -m qshield_core study NAME`` takes it; the README's block is ``NAME-study``."""
    results_file: str
    title: str
    script: str
    markdown: Callable[[Sequence[dict]], str]
    legend: Callable[[], str]
    row_options: Callable[[str], dict | None]
    note: Callable[[dict], str] | None = None
    """A sentence beside a dataset's table, from the results its rows were made from (the seed study's
    ordering check)."""
    more_tables: Callable[[Sequence[dict], str], list[tuple[str, str, dict]]] | None = None
    """Further tables of a dataset from its records, as (heading, caption, :func:`study_rows` options): the
    advtrain study's comparison with its extra-epoch control."""

    @property
    def command(self) -> str:
        """The command that regenerates its tables from its committed results."""
        stem = self.results_file.removesuffix(".json")
        return f"python -m qshield_core study {self.name} results/{self.results_file} --out results/{stem}.md"


STUDIES: dict[str, Study] = {study.name: study for study in (
    Study("design", "design-study.json", "Design study: can a richer circuit be a real defence?",
          "scripts/design_study.sh", design_study_markdown, design_legend, lambda dataset: {}),
    Study("advtrain", "advtrain.json", "Adversarial training: does the circuit add to a real defence?",
          "scripts/advtrain_study.sh", advtrain_markdown, advtrain_legend,
          lambda dataset: ({"eps": ADVTRAIN_EPS[dataset], "baseline": ADVTRAIN_BASELINE}
                           if dataset in ADVTRAIN_EPS else None), more_tables=advtrain_control_tables),
    Study("seed", "seed-study.json", "Seed study: the paper's entanglement ordering over training seeds",
          "scripts/seed_study.sh", seed_study_markdown, seed_legend,
          lambda dataset: {"baseline": SEED_BASELINE, "autoattack_modes": SEED_AUTOATTACK_MODES}, seed_study_note),
)}
"""Every study, by name: the CLI, the app and the results loader (which leaves their files out of the shipped
models' cells) read this one list."""
