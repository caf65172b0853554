"""Training: seeded, resumable, with progress bars; writes weights and a model card."""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import ImageSplit, data_checksum, get_spec, load_split
from .models import QShieldHybrid, build_model, count_parameters
from .zoo import load_weights_into, read_card, save_model

CHECKPOINT_DIR = Path("checkpoints")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in the model card)."""

    dataset: str
    model: str
    epochs: int
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    augment: str = "crop"
    init_from: str | None = None
    cnn_lr_scale: float = 1.0
    extra: dict = field(default_factory=dict)


# Recipes chosen to fit a 2-core CPU budget; see README "Training".
RECIPES: dict[tuple[str, str], dict] = {
    ("mnist", "classical"): dict(epochs=5, lr=0.1, augment="shift2"),
    ("organamnist", "classical"): dict(epochs=10, lr=0.1, augment="shift2"),
    ("cifar10", "classical"): dict(epochs=16, lr=0.2, label_smoothing=0.1, augment="crop4-flip"),
}
HYBRID_RECIPE = dict(epochs=1, lr=1e-3, weight_decay=1e-4, cnn_lr_scale=0.1)


def default_config(dataset: str, model: str, **overrides) -> TrainConfig:
    """The recipe for (dataset, model), with any overrides (None values are ignored)."""
    dataset = get_spec(dataset).name
    recipe = dict(HYBRID_RECIPE, init_from="classical") if model.startswith("hybrid-") else RECIPES[(dataset, model)]
    if dataset == "cifar10" and model.startswith("hybrid-"):
        recipe = dict(recipe, label_smoothing=0.1, augment="crop4-flip")
    elif model.startswith("hybrid-"):
        recipe = dict(recipe, augment="shift2")
    recipe = dict(recipe, **{k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(dataset=dataset, model=model, **recipe)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment_batch(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random shifts (zero or reflect padding, then crop) and optional horizontal flips."""
    pad = 4 if kind.startswith("crop4") else 2
    mode = "reflect" if kind.startswith("crop4") else "constant"
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    idx = torch.arange(n).view(n, 1, 1, 1)
    out = padded[idx, torch.arange(images.shape[1]).view(1, -1, 1, 1), rows, cols]
    if kind.endswith("flip"):
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """SGD+OneCycle for CNNs from scratch; Adam (paper's choice) with a slower CNN for hybrids."""
    if isinstance(model, QShieldHybrid):
        groups = [{"params": model.cnn.parameters(), "lr": cfg.lr * cfg.cnn_lr_scale},
                  {"params": [p for n, p in model.named_parameters() if not n.startswith("cnn.")], "lr": cfg.lr}]
        opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                    pct_start=0.15)
        return opt, sched
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.25)
    return opt, sched


def loss_fn(model: nn.Module, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy on logits; NLL on the hybrid's log-probabilities (label smoothing on both)."""
    return F.cross_entropy(outputs, labels, label_smoothing=smoothing)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500, desc: str | None = None) -> torch.Tensor:
    """Predicted labels for uint8 or float images, in batches."""
    model.eval()
    preds = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, leave=False):
        batch = images[start:start + batch_size]
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
        preds.append(model(batch).argmax(-1))
    return torch.cat(preds)


@torch.no_grad()
def mean_alpha(model: QShieldHybrid, images: torch.Tensor, batch_size: int = 500) -> float:
    """Mean fusion weight alpha over ``images`` (1 = the CNN alone)."""
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].float() / 255.0
        total += float(model.details(batch).alpha.sum())
    return total / len(images)


def _checkpoint_path(cfg: TrainConfig) -> Path:
    return CHECKPOINT_DIR / f"{cfg.dataset}-{cfg.model}.ckpt.pt"


def _save_checkpoint(path: Path, model, opt, sched, epoch: int, elapsed: tuple[float, float],
                     gen: torch.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "elapsed": elapsed[0], "cpu_elapsed": elapsed[1], "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state()}, path)


def _versions() -> dict:
    import pennylane
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pennylane": pennylane.__version__, "numpy": np.__version__}


def train(cfg: TrainConfig, data_root: str | None = None, resume: bool = False, out_dir: Path | None = None,
          log=print) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset``, evaluate on the full test split, save weights + card."""
    seed_everything(cfg.seed)
    spec = get_spec(cfg.dataset)
    train_split = load_split(spec.name, "train", data_root)
    test_split = load_split(spec.name, "test", data_root)
    model = build_model(spec.name, cfg.model, grad_mode="paper", backend="fast")
    init_card = None
    if cfg.init_from:
        init_card = load_weights_into(model, spec.name, cfg.init_from, out_dir)
        log(f"initialised the CNN from {spec.name}-{cfg.init_from} ({init_card['weights_sha256'][:12]})")
    model = model.to(memory_format=torch.channels_last) if spec.channels == 3 else model
    steps_per_epoch = len(train_split) // cfg.batch_size
    opt, sched = make_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch, elapsed, cpu_elapsed = 0, 0.0, 0.0
    ckpt = _checkpoint_path(cfg)
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, elapsed, cpu_elapsed = state["epoch"], state["elapsed"], state.get("cpu_elapsed", 0.0)
        log(f"resumed from {ckpt} at epoch {start_epoch}")
    history = []
    for epoch in range(start_epoch, cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, acc = _train_epoch(model, train_split, cfg, opt, sched, gen, steps_per_epoch, epoch)
        elapsed += time.perf_counter() - t0
        cpu_elapsed += time.process_time() - c0
        history.append({"epoch": epoch + 1, "train_loss": round(loss, 4), "train_accuracy": round(acc, 4),
                        "seconds": round(elapsed, 1)})
        log(json.dumps(history[-1]))
        _save_checkpoint(ckpt, model, opt, sched, epoch + 1, (elapsed, cpu_elapsed), gen)
    card = _evaluate_for_card(model, cfg, spec, train_split, test_split, data_root, elapsed, history, init_card)
    card["train_cpu_seconds"] = round(cpu_elapsed, 1)
    files = save_model(model.to(memory_format=torch.contiguous_format), card, spec.name, cfg.model, out_dir)
    log(f"saved {files.weights} and {files.card}: clean test accuracy {card['clean_test_accuracy']:.4f}")
    return read_card(spec.name, cfg.model, out_dir)


def _train_epoch(model, split: ImageSplit, cfg: TrainConfig, opt, sched, gen, steps: int, epoch: int):
    model.train()
    order = torch.randperm(len(split), generator=gen)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(steps), desc=f"{cfg.dataset}-{cfg.model} epoch {epoch + 1}/{cfg.epochs}", leave=False,
               mininterval=5)
    for step in bar:
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        images = augment_batch(split.images[idx].float() / 255.0, cfg.augment, gen)
        if images.shape[1] == 3:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = split.labels[idx]
        outputs = model(images)
        loss = loss_fn(model, outputs, labels, cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total_loss += float(loss) * len(idx)
        correct += int((outputs.argmax(-1) == labels).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen


def _evaluate_for_card(model, cfg: TrainConfig, spec, train_split, test_split, data_root, elapsed, history,
                       init_card) -> dict:
    model.eval()
    torch.manual_seed(cfg.seed)
    preds = predict(model, test_split.images, desc="test accuracy")
    accuracy = float((preds == test_split.labels).float().mean())
    card = {
        "dataset": spec.name,
        "model": cfg.model,
        "architecture": _architecture_name(model, spec.name),
        "parameter_count": count_parameters(model),
        "input": {"shape": list(spec.input_shape), "range": [0, 1], "normalisation": "inside the model",
                  "output": "log-probabilities (valid logits)" if isinstance(model, QShieldHybrid) else "logits"},
        "data": {"source": test_split.source, "exact": test_split.exact, "train_size": len(train_split),
                 "checksum": data_checksum(spec.name, data_root)},
        "clean_test_accuracy": round(accuracy, 4),
        "n_test": len(test_split),
        "train_seconds": round(elapsed, 1),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k not in ("dataset", "model")},
        "history": history,
        "versions": _versions(),
        "hardware": f"{platform.machine()}, {torch.get_num_threads()} CPU threads",
        "command": "python -m qshield_core " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py")
        else f"python -m qshield_core train --dataset {spec.name} --model {cfg.model}",
    }
    if not test_split.exact:
        card["data"]["note"] = "CIFAR-10 JPEG re-encoding: pixel values differ slightly from the original."
    if isinstance(model, QShieldHybrid):
        card.update(_hybrid_card_fields(model, cfg, test_split, accuracy, init_card))
    return card


def _hybrid_card_fields(model: QShieldHybrid, cfg, test_split, paper_accuracy: float, init_card) -> dict:
    model.grad_mode = "differentiable"
    diff_acc = float((predict(model, test_split.images, desc="test (differentiable)") == test_split.labels)
                     .float().mean())
    alpha = mean_alpha(model, test_split.images)
    model.grad_mode = "paper"
    return {
        "circuit": model.circuit_config.to_dict(),
        "noise_description": model.circuit_config.noise.describe(),
        "projection_seed": 0,
        "backend": model.backend,
        "trained_grad_mode": "paper",
        "clean_test_accuracy_by_grad_mode": {"paper": round(paper_accuracy, 4),
                                             "differentiable": round(diff_acc, 4)},
        "mean_alpha_test": round(alpha, 4),
        "init_from": None if init_card is None else {
            "model": f"{init_card['dataset']}-{init_card['model']}",
            "weights_sha256": init_card["weights_sha256"],
            "train_seconds": init_card["train_seconds"],
        },
    }


def _architecture_name(model: nn.Module, dataset: str) -> str:
    from .models import ARCHITECTURES

    arch, kwargs = ARCHITECTURES[dataset]
    base = f"{arch}{tuple(kwargs['widths'])}"
    if isinstance(model, QShieldHybrid):
        c = model.circuit_config
        return f"{base} -> {c.n_qubits}-qubit {c.encoding}-angle circuit ({c.entanglement}) -> dynamic fusion"
    return base

