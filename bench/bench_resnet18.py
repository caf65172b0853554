"""Time training steps of the paper's ResNet-18 recipe, to size its epochs (README "Training and evaluating").

Runs ``--steps`` training steps of ``default_config(dataset, "resnet18")`` (batch 128, Adam) through the training
loop itself (``qshield_core.train._train_epoch``) on the real training split (random images if it is absent), after
``--warmup`` steps, on ``--threads`` torch threads (run it with ``OMP_NUM_THREADS=1``), then extrapolates one epoch
and the whole recipe. Prints the machine's load average too: on a shared machine the step time is the load's.

Usage: ``OMP_NUM_THREADS=1 python bench/bench_resnet18.py [--dataset mnist organamnist] [--steps 20] [--model
resnet18-hybrid-full]`` (a hybrid is timed from scratch: its CNN's weights do not change its step time).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qshield_core.data import ImageSplit, dataset_available, get_spec, load_split
from qshield_core.train import _initial_model, _train_epoch, default_config, make_optimizer


def training_split(dataset: str, n: int) -> ImageSplit:
    """The real training split when it is on disk, else ``n`` random images (same shapes, same cost)."""
    if dataset_available(dataset):
        return load_split(dataset, "train")
    spec = get_spec(dataset)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *spec.input_shape), generator=gen, dtype=torch.uint8)
    return ImageSplit(spec.name, "train", images, torch.randint(0, spec.num_classes, (n,), generator=gen),
                      "random images", True)


def time_steps(dataset: str, model: str, steps: int, warmup: int) -> tuple[float, int, dict]:
    """Seconds per training step after ``warmup`` steps, the steps of one epoch, and the recipe."""
    cfg = replace(default_config(dataset, model), init_from=None)
    split = training_split(dataset, cfg.batch_size * (steps + warmup))
    model_, _ = _initial_model(cfg, get_spec(dataset), None, lambda _m: None)
    per_epoch = len(split) // cfg.batch_size
    opt, sched = make_optimizer(model_, cfg, cfg.epochs * per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    with contextlib.redirect_stderr(io.StringIO()):  # the training loop's progress bar
        _train_epoch(model_, split, cfg, opt, sched, gen, warmup, 0)
        start = time.perf_counter()
        _train_epoch(model_, split, cfg, opt, sched, gen, steps, 0)
    return (time.perf_counter() - start) / steps, per_epoch, {"epochs": cfg.epochs, "batch": cfg.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["mnist"])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for dataset in args.dataset:
        load = os.getloadavg()
        seconds, per_epoch, recipe = time_steps(dataset, args.model, args.steps, args.warmup)
        print(f"{dataset} {args.model}: {seconds:.2f} s a step of {recipe['batch']} ({args.steps} steps, "
              f"{args.threads} thread(s), load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end); "
              f"one epoch = {per_epoch} steps = {seconds * per_epoch / 60:.1f} min; the recipe's "
              f"{recipe['epochs']} epoch(s) = {seconds * per_epoch * recipe['epochs'] / 60:.1f} min")


if __name__ == "__main__":
    main()
