"""Benchmark of the Streamlit app's responsiveness (targets: first page within 10 s, one attack within 2 s).

Measures, in one run, on this machine:

1. **Server start to first page**: the server is started as ``make run`` does it (``scripts/serve.py``;
   ``--launcher streamlit`` for plain ``streamlit run app.py``; clock starts), headless
   Chromium (already running) opens the app as soon as the server answers, and the clock stops
   when the Attack Lab has drawn its first result (both models' verdicts) and finished its run.
   The moments the server answered and the page title appeared are printed too.
2. **One attack, both models, with its figures**: PGD with 10 steps on one shipped image against
   the classical CNN and the hybrid (``lab.compare_attack``) plus every Plotly figure the Attack
   Lab draws for it, serialised as Streamlit sends it; in-process, models already loaded (as the
   app's cache holds them), one thread as in the app; per dataset, over several images.
3. **The same click in the browser**: moving the epsilon slider one step in the running app until
   the page has redrawn (Streamlit's own overhead included).
4. **Hybrid / classical on one image** (issue 11): the attacker times the Attack Lab shows side by side
   must be the models' costs, not the simulator's per-call overhead. For one shipped image: one
   forward+backward pass to the input (one attack gradient) and one PGD-10 (``evaluation.run_attack``,
   its ``seconds``, what the page shows), for the classical CNN and hybrid-full in both gradient
   modes, the three models timed in turn (interleaved) ``--ratio-repeats`` times, 1 thread; the
   ratio of medians is reported (and the ratio of minima, which a busy machine disturbs least).
   Target: at most 1.3x. ``--with-stages`` also times the hybrid on its stage-by-stage nodes (no fused
   head, before that issue's item 6), ``--with-reference`` on the code paths before that issue (the fast
   backend's general path, the fusion's op-by-op formulas), interleaved in the same run. A last row times
   forward+backward on a batch of ``--ratio-batch`` images (128; a quarter of the repeats), to check that
   the batched path did not get slower.

Usage: ``python bench/bench_app.py [--images 10] [--clicks 5] [--ratio-repeats 40] [--with-stages] [--with-reference]
[--ratio-batch 128] [--only-ratios] [--datasets mnist ...] [--no-browser]``.
Needs Debian's Chromium (/usr/bin/chromium) and Playwright for parts 1 and 3.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from browser_support import CHROMIUM, SETTLED_JS, launch_options, streamlit_server  # noqa: E402

from qshield_core import fusion_ops, lab, viz  # noqa: E402
from qshield_core.data import get_spec  # noqa: E402
from qshield_core.evaluation import run_attack  # noqa: E402
from qshield_core.models import DynamicFusion, QShieldHybrid  # noqa: E402
from qshield_core.simulator import FastCircuitSimulator  # noqa: E402

TARGET_FIRST_PAGE_S = 10.0
TARGET_ATTACK_S = 2.0
TARGET_RATIO = 1.3
DATASETS = ("mnist", "organamnist", "cifar10")


def attack_with_figures(dataset: str, entry: dict, models: dict) -> float:
    """Seconds for PGD-10 on one image against every model, plus the Attack Lab's figures as JSON."""
    spec = get_spec(dataset)
    start = time.perf_counter()
    result = lab.compare_attack(dataset, lab.sample_image(entry), entry["label"], "pgd", models,
                                eps=spec.paper_eps, steps=10, seed=len(entry["file"]))
    for out in result.outcomes.values():  # what the Attack Lab draws: two pictures and two Plotly figures
        for picture in (out.image, out.adv_image):
            viz.pixel_image(picture)
        for fig in (viz.perturbation_figure(out.perturbation, out.linf, out.l2),
                    viz.topk_figure(out.clean_probs, out.adv_probs, spec.class_names, label=out.label)):
            fig.to_json()
    return time.perf_counter() - start


def bench_attack(images: int) -> None:
    torch.set_num_threads(1)
    print(f"\n## One attack on one image, both models (PGD, 10 steps, paper eps), with figures; "
          f"in-process, models loaded, 1 thread; {images} images per dataset")
    print(f"{'dataset':<12} {'hybrid':<28} {'first (s)':>10} {'median (s)':>11} {'max (s)':>8}  "
          f"target {TARGET_ATTACK_S} s")
    for dataset in ("mnist", "organamnist", "cifar10"):
        for mode in ("paper", "differentiable"):
            try:
                models = {"classical": lab.load(dataset, "classical"),
                          f"hybrid-full ({mode})": lab.load(dataset, "hybrid-full", grad_mode=mode)}
            except lab.zoo.ModelUnavailableError as err:
                print(f"{dataset:<12} skipped: {err}")
                break
            table = lab.sample_table(dataset)
            step = max(len(table) // images, 1)
            times = [attack_with_figures(dataset, table[i * step], models) for i in range(images)]
            verdict = "ok" if statistics.median(times) <= TARGET_ATTACK_S else "OVER"
            label = f"hybrid-full ({mode})"
            print(f"{dataset:<12} {label:<28} {times[0]:>10.3f} {statistics.median(times):>11.3f} "
                  f"{max(times):>8.3f}  {verdict}")


def bench_browser(clicks: int, launcher: str) -> None:
    from playwright.sync_api import sync_playwright

    how = "make run: scripts/serve.py" if launcher == "serve" else "streamlit run app.py"
    print(f"\n## Server start to first page rendered (headless Chromium; {how})")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch_options())
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        started = time.perf_counter()
        with streamlit_server(launcher=launcher) as (url, _, healthy_after):
            page.goto(url)
            title = page.get_by_role("heading", name="Attack Lab").first
            title.or_(page.get_by_text("Starting QShield")).first.wait_for(timeout=300_000)
            first_paint_after = time.perf_counter() - started
            title.wait_for(timeout=300_000)
            title_after = time.perf_counter() - started
            page.get_by_text("FLIPPED").or_(page.get_by_text("HELD")).first.wait_for(timeout=300_000)
            page.wait_for_function(SETTLED_JS, timeout=300_000, polling=50)
            result_after = time.perf_counter() - started
            print(f"server answering /_stcore/health: {healthy_after:6.2f} s")
            print(f"first content (start-up message): {first_paint_after:6.2f} s")
            print(f"Attack Lab title visible:         {title_after:6.2f} s")
            print(f"first attack result drawn:        {result_after:6.2f} s   target {TARGET_FIRST_PAGE_S} s: "
                  f"{'ok' if result_after <= TARGET_FIRST_PAGE_S else 'OVER'}")

            print(f"\n## Moving the epsilon slider one step in the browser (a new PGD-10 on both models), "
                  f"{clicks} clicks")
            slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
            times = []
            for _ in range(clicks):
                slider.focus()
                before = page.locator(".gtitle").all_text_contents()
                tick = time.perf_counter()
                slider.press("ArrowLeft")
                page.wait_for_function("() => document.querySelector('[data-testid=\"stApp\"]')"
                                       ".getAttribute('data-test-script-state') === 'running'", timeout=60_000,
                                       polling=20)
                page.wait_for_function(SETTLED_JS, timeout=300_000, polling=20)
                times.append(time.perf_counter() - tick)
                assert page.locator(".gtitle").all_text_contents() != before, "the figures were redrawn"
            print(f"click to redrawn page: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
                  f"(target {TARGET_ATTACK_S} s: {'ok' if statistics.median(times) <= TARGET_ATTACK_S else 'OVER'})")
        browser.close()


def gradient_seconds(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor) -> float:
    """Seconds of one forward pass and one backward pass to the input (the gradient an attack step takes)."""
    start = time.perf_counter()
    x = image.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), label), x)
    return time.perf_counter() - start


def pgd_seconds(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, dataset: str) -> float:
    """PGD-10 at the paper's eps on one image: the attack time ``run_attack`` reports (the Attack Lab's figure)."""
    return run_attack(model, image, label, "pgd", dataset, eps=get_spec(dataset).paper_eps, steps=10).seconds


Sample = tuple[torch.Tensor, torch.Tensor]


def interleaved(models: dict[str, torch.nn.Module], samples: list[Sample], timed: Callable[..., float], repeats: int,
                warmup: int = 3) -> dict[str, list[float]]:
    """``timed(model, image, label)`` for every model in turn, ``repeats`` times, cycling over ``samples``
    (interleaved, so that a change of machine load hits all models alike)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + repeats):
        image, label = samples[r % len(samples)]
        for name, model in models.items():
            seconds = timed(model, image, label)
            if r >= warmup:
                times[name].append(seconds)
    return times


@contextlib.contextmanager
def earlier_paths(which: str) -> Iterator[None]:
    """Run the hybrid on an earlier code path: ``"stages"``, the stage-by-stage nodes (before the fused
    head of issue 11 item 6); ``"before"``, as before issue 11 (also the fast backend's general path and the
    fusion's op-by-op formulas). Patches the classes, so only for this single-threaded benchmark."""
    saved = (QShieldHybrid.fused_head, FastCircuitSimulator.product_path_applies, DynamicFusion.alpha,
             DynamicFusion.__dict__["fuse"])
    QShieldHybrid.fused_head = lambda self, cnn_logits: None
    if which == "before":
        FastCircuitSimulator.product_path_applies = lambda self, weights: False
        DynamicFusion.alpha = lambda self, logits, quantum: fusion_ops.reference_alpha(self.mlp, logits, quantum)
        DynamicFusion.fuse = staticmethod(fusion_ops.reference_fuse)
    try:
        yield
    finally:
        (QShieldHybrid.fused_head, FastCircuitSimulator.product_path_applies, DynamicFusion.alpha,
         DynamicFusion.fuse) = saved


class EarlierPaths(torch.nn.Module):
    """``model`` run inside :func:`earlier_paths` (its backward pass follows the graph built then)."""

    def __init__(self, model: torch.nn.Module, which: str) -> None:
        super().__init__()
        self.model, self.which = model, which

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with earlier_paths(self.which):
            return self.model(x)


def ratio_cell(times: dict[str, list[float]], name: str) -> str:
    """Median ms, hybrid / classical ratio of medians [of minima], verdict."""
    median = statistics.median(times[name])
    ratio = median / statistics.median(times["classical"])
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER"
    return f"{median * 1e3:8.2f} {ratio:5.2f}x [{min(times[name]) / min(times['classical']):4.2f}x] {verdict:<4}"


def ratio_models(dataset: str, earlier: list[str]) -> dict[str, torch.nn.Module]:
    """The classical CNN and hybrid-full in both modes as the app holds them (and on the ``earlier`` paths)."""
    models = {"classical": lab.load(dataset, "classical").model}
    for mode in ("paper", "differentiable"):
        models[mode] = lab.load(dataset, "hybrid-full", grad_mode=mode).model
    for which in earlier:
        for mode in ("paper", "differentiable"):
            models[f"{mode}, {which}"] = EarlierPaths(models[mode], which)
    return {name: lab.InferenceOnly(model) for name, model in models.items()}


def batch_samples(samples: list[Sample], size: int) -> list[Sample]:
    """One batch of ``size`` images: the samples repeated."""
    index = [i % len(samples) for i in range(size)]
    return [(torch.cat([samples[i][0] for i in index]), torch.cat([samples[i][1] for i in index]))]


def bench_ratios(datasets: list[str], repeats: int, earlier: list[str], batch: int) -> None:
    torch.set_num_threads(1)
    print(f"\n## Hybrid / classical on one image, interleaved, {repeats} repeats, 1 thread (target <= {TARGET_RATIO}x):"
          f" median ms, ratio of medians [ratio of minima]")
    columns = ["paper", "differentiable"] + [f"{mode}, {which}" for which in earlier
                                             for mode in ("paper", "differentiable")]
    print(f"{'dataset':<12} {'measure':<22} {'classical':>9} "
          + " ".join(f"{'hybrid-full (' + name + ')':>30}" for name in columns))
    for dataset in datasets:
        spec = get_spec(dataset)
        try:
            models = ratio_models(dataset, earlier)
        except lab.zoo.ModelUnavailableError as err:
            print(f"{dataset:<12} skipped: {err}")
            continue
        samples = [(lab.sample_image(e).reshape(1, *spec.input_shape), torch.tensor([e["label"]]))
                   for e in lab.sample_table(dataset)[:10]]
        measures = [("forward+backward", gradient_seconds, samples, repeats),
                    ("PGD-10", lambda m, x, y, d=dataset: pgd_seconds(m, x, y, d), samples, repeats)]
        if batch > 1:
            measures.append((f"fwd+bwd, batch {batch}", gradient_seconds, batch_samples(samples, batch),
                             max(repeats // 4, 5)))
        for measure, timed, inputs, n in measures:
            times = interleaved(models, inputs, timed, n)
            print(f"{dataset:<12} {measure:<22} {statistics.median(times['classical']) * 1e3:9.2f} "
                  + " ".join(f"{ratio_cell(times, name):>30}" for name in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--ratio-repeats", type=int, default=40, help="interleaved repeats of the ratio timings")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS,
                        help="datasets of the ratio timings")
    parser.add_argument("--only-ratios", action="store_true", help="only the hybrid / classical ratios (part 4)")
    parser.add_argument("--with-reference", action="store_true",
                        help="part 4 also times the hybrid on the code paths before issue 11, in the same run")
    parser.add_argument("--with-stages", action="store_true",
                        help="part 4 also times the hybrid on its stage-by-stage nodes (no fused head), same run")
    parser.add_argument("--ratio-batch", type=int, default=128,
                        help="part 4 also times forward+backward on a batch of this size (0: not)")
    parser.add_argument("--no-browser", action="store_true", help="skip the parts that need Chromium")
    parser.add_argument("--only-browser", action="store_true",
                        help="only the server start, first result and clicks in Chromium (for interleaved runs)")
    parser.add_argument("--launcher", choices=["serve", "streamlit"], default="serve",
                        help="start the server as make run does (serve) or with plain streamlit run")
    args = parser.parse_args()
    print(f"QShield app benchmark: torch {torch.__version__}, {torch.get_num_threads()} torch threads by default, "
          f"Chromium {CHROMIUM}")
    if not (args.no_browser or args.only_ratios):
        bench_browser(args.clicks, args.launcher)
    if args.only_browser:
        return
    if not args.only_ratios:
        bench_attack(args.images)
    earlier = ["stages"] * args.with_stages + ["before"] * args.with_reference
    bench_ratios(args.datasets, args.ratio_repeats, earlier, args.ratio_batch)


if __name__ == "__main__":
    main()
