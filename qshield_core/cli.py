"""Command line: ``python -m qshield_core {train,evaluate,info,draw,demo} ...``."""

from __future__ import annotations

import argparse
import sys

import torch

from .data import DataError
from .zoo import ModelUnavailableError


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model and write pretrained/{dataset}-{model}.safetensors + .json")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, help="classical or hybrid-{none,linear,star,full,ring}")
    p.add_argument("--data-root")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--init-from", help="model whose weights initialise the CNN (hybrids: classical)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/{dataset}-{model}.ckpt.pt")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .train import default_config, train

    torch.set_num_threads(args.threads)
    cfg = default_config(args.dataset, args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, init_from=args.init_from)
    train(cfg, data_root=args.data_root, resume=args.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qshield_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ModelUnavailableError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
