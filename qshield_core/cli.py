"""Command line: ``python -m qshield_core {train,evaluate,grid,table,claims,info,draw,demo} ...``."""

from __future__ import annotations

import argparse
import shlex
import sys
from fractions import Fraction
from pathlib import Path

import torch

from .data import DataError
from .devices import DeviceUnavailableError
from .zoo import ModelUnavailableError


def command_line() -> str:
    """The command that is running, as ``python -m qshield_core ...`` when launched that way."""
    argv = sys.argv[1:] if sys.argv and sys.argv[0].endswith("__main__.py") else sys.argv
    return "python -m qshield_core " + shlex.join(argv)


def _add_train(sub) -> None:
    from .adversarial_training import METHODS as ADVERSARIAL_METHODS
    from .models import GRAD_MODES
    from .noise import NOISE_KINDS
    from .quantum import ENCODINGS, ENTANGLEMENTS, NOISE_PLACEMENTS
    from .train import RECIPE_NAMES

    p = sub.add_parser("train", help="train a model: pretrained/{dataset}-{model}.safetensors + .json for the "
                       "shipped names, user_models/{dataset}-hybrid-{name}.* for a circuit design")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, help="classical, dnn, hybrid-{none,linear,star,full,ring}, resnet18 (the "
                   "paper's CNN, trained from scratch), resnet18-hybrid-full (its hybrid), or hybrid: a circuit "
                   "design (--circuit FILE and/or the circuit flags below), saved as hybrid-NAME")
    p.add_argument("--data-root")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--init-from", help="model whose weights initialise the CNN (hybrids: classical)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/{dataset}-{model}.ckpt.pt")
    p.add_argument("--checkpoint-dir", type=Path, help="where the per-epoch checkpoints go (default checkpoints/)")
    p.add_argument("--data", choices=("dataset", "samples"), help="train on the full splits (default) or on the "
                   "shipped samples (train split = test split: a smoke run, not a model to ship)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, help="write the model here (default: pretrained/ for the shipped names, "
                   "user_models/ or $QSHIELD_USER_MODELS for a design)")
    p.add_argument("--grad-mode", choices=GRAD_MODES, help="hybrids' gradient mode while training (default: "
                   "differentiable for a design with trainable layers, else paper)")
    p.add_argument("--recipe", choices=RECIPE_NAMES, default="shipped", help="shipped: each model's own "
                   "recipe (hybrids fine-tuned from the shipped CNN); scratch: the paper's, from scratch for every "
                   "model (Adam 1e-3, weight decay 1e-4, batch 128, 2 epochs), for a variant name such as "
                   "hybrid-full@scratch-s1; extra-epoch: a classical model fine-tuned one epoch as a hybrid's CNN is "
                   "(the control for the epoch a hybrid adds to its CNN), e.g. resnet18@extra-epoch")
    a = p.add_argument_group("adversarial training (a variant name: --model classical@pgd-at, then "
                             "hybrid-full@pgd-at from it)")
    a.add_argument("--adversarial", choices=ADVERSARIAL_METHODS, help="train on PGD (Madry et al. 2018) or "
                   "FGSM-with-random-start (Wong et al. 2020) examples of every batch")
    a.add_argument("--adv-eps", type=parse_eps, help="their L-inf eps, e.g. 0.3 or 8/255 (default: the paper's)")
    a.add_argument("--adv-steps", type=int, help="PGD's steps (default 10, step 2.5 eps / steps)")
    d = p.add_argument_group("circuit design (with --model hybrid; flags override the file's fields)")
    d.add_argument("--circuit", type=Path, help="a design file, e.g. designs/depth3-trainable-p0.05.json")
    d.add_argument("--name", help="the design's name (default: the file's 'name', else its file name)")
    d.add_argument("--qubits", type=int, help="default: the dataset's max(2, ceil(log2 C))")
    d.add_argument("--encoding", choices=ENCODINGS)
    d.add_argument("--entanglement", choices=ENTANGLEMENTS)
    d.add_argument("--depth", type=int)
    d.add_argument("--variational", action=argparse.BooleanOptionalAction, default=None,
                   help="trainable Rot gates in every layer")
    d.add_argument("--noise", choices=NOISE_KINDS, help="noise model")
    d.add_argument("--p", type=float, help="noise strength")
    d.add_argument("--readout", type=float, help="symmetric readout bit-flip probability")
    d.add_argument("--noise-placement", choices=NOISE_PLACEMENTS, help="after every layer, or once at the end")
    d.add_argument("--shots", type=int, help="estimate the output from this many shots (0: exact)")
    d.add_argument("--device", help="add a calibrated device's noise, e.g. kolkata (needs `pip install .[devices]`), "
                   "or none")
    d.add_argument("--device-qubits", type=int, nargs="+", help="the device's physical qubits, one per wire "
                   "(default: the lowest-error connected ones)")
    p.set_defaults(func=_cmd_train)


DESIGN_FLAGS = ("circuit", "name", "qubits", "encoding", "entanglement", "depth", "variational", "noise", "p",
                "readout", "noise_placement", "shots", "device", "device_qubits")


def design_from_args(args):
    """The circuit design ``train --model hybrid`` trains: the file's, with the flags applied."""
    from dataclasses import replace

    from .designs import Design, load_design

    if args.circuit is not None:
        design = load_design(args.circuit)
    elif args.name:
        design = Design(args.name, source="command-line flags")
    else:
        raise ValueError("--model hybrid needs a design: --circuit FILE.json, or circuit flags and --name NAME.")
    if args.name:
        design = replace(design, name=args.name)
    noise = {k: v for k, v in (("kind", args.noise), ("p", args.p), ("readout", args.readout)) if v is not None}
    design = design.with_overrides(n_qubits=args.qubits, encoding=args.encoding, entanglement=args.entanglement,
                                   depth=args.depth, variational=args.variational, noise=noise or None,
                                   noise_placement=args.noise_placement)
    circuit = dict(design.circuit)
    if args.shots is not None:
        if args.shots < 0:
            raise ValueError(f"--shots must be 0 (exact) or positive, got {args.shots}.")
        circuit["shots"] = args.shots or None
    if args.device_qubits and args.device is None:
        raise ValueError("--device-qubits needs --device NAME.")
    if args.device is not None:
        circuit["device"] = None if args.device.lower() == "none" else {"backend": args.device,
                                                                        "qubits": args.device_qubits}
    return replace(design, circuit=circuit)


def _adversarial(args) -> dict | None:
    from .adversarial_training import AdversarialConfig
    from .data import get_spec

    if args.adversarial is None:
        if args.adv_eps is not None or args.adv_steps is not None:
            raise ValueError("--adv-eps and --adv-steps need --adversarial pgd or fgsm-rs.")
        return None
    eps = args.adv_eps if args.adv_eps is not None else get_spec(args.dataset).paper_eps
    return AdversarialConfig.preset(args.adversarial, eps, args.adv_steps).to_dict()


def _cmd_train(args) -> int:
    from .train import default_config, train
    from .zoo import user_model_name

    torch.set_num_threads(args.threads)
    recipe = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  init_from=args.init_from, grad_mode=args.grad_mode, adversarial=_adversarial(args))
    data = {} if args.data is None else {"data": args.data}
    if args.model == "hybrid":
        design = design_from_args(args)
        circuit = design.config_for(args.dataset)
        print(f"design {design.name}: {circuit.n_qubits} qubits, {circuit.encoding} encoding, {circuit.entanglement} "
              f"entanglement, depth {circuit.depth}{', trainable' if circuit.variational else ''}; "
              f"{circuit.describe_noise()}")
        cfg = default_config(args.dataset, user_model_name(design.name), recipe=args.recipe, circuit=circuit.to_dict(),
                             extra={"design": design.card_entry(), **data}, **recipe)
    else:
        given = [f"--{flag.replace('_', '-')}" for flag in DESIGN_FLAGS if getattr(args, flag) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: circuit designs train with --model hybrid (not {args.model}).")
        cfg = default_config(args.dataset, args.model, recipe=args.recipe, extra=data, **recipe)
    train(cfg, data_root=args.data_root, resume=args.resume, out_dir=args.out_dir, checkpoint_dir=args.checkpoint_dir)
    return 0


# --------------------------------------------------------------------------- evaluate


def parse_eps(text: str) -> float:
    """An epsilon as a decimal (``0.3``) or a fraction of 255 (``8/255``)."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def parse_shard(text: str) -> tuple[int, int]:
    """``i/k``: the i-th of k shards (0-based)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/k, e.g. 0/4, got {text!r}") from None
    return index, count


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="clean accuracy, or attacks with robust accuracy, ASR and attacker cost, as JSON records",
        description="Evaluate cells (dataset x model x gradient mode x attack x eps) on a seeded, class-balanced "
                    "subset of the test split. Resumable: cells already in --json are skipped.")
    p.add_argument("--dataset", required=True, nargs="+", help="mnist, organamnist, cifar10 (several allowed)")
    p.add_argument("--model", required=True, nargs="+", help="classical, dnn, hybrid-{none,linear,star,full}, "
                   "resnet18, resnet18-hybrid-full, or any trained model's name, e.g. hybrid-<design> (found in "
                   "pretrained/, then user_models/)")
    p.add_argument("--grad-mode", nargs="+", default=["paper"], choices=["paper", "differentiable"],
                   help="hybrid gradient mode(s) (default: paper)")
    p.add_argument("--attack", nargs="+", default=["none"],
                   help="attack name(s), paper-suite, adaptive-suite, or none (clean accuracy; the default)")
    p.add_argument("--eps", nargs="+", type=parse_eps, help="L-inf epsilon(s), e.g. 0.3 or 8/255 (default: the "
                   "paper's per dataset); several give a sweep")
    p.add_argument("--steps", type=int, help="override the attack's iterations (queries for Square)")
    p.add_argument("--n", type=int, default=1000, help="points per cell (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, type=Path, help="results file (records are appended, resumable)")
    p.add_argument("--markdown", type=Path, help="also write Markdown tables of the whole results file here")
    p.add_argument("--backend", default="fast", choices=["fast", "pennylane", "paper-loop"])
    p.add_argument("--data-root")
    p.add_argument("--source", default="auto", choices=["auto", "test", "samples"],
                   help="test split, shipped samples, or auto (test split when present)")
    p.add_argument("--model-dir", type=Path, help="directory of the shipped models (default pretrained/)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--shots", type=int, default=1000, help="shots per circuit estimate, for the projected cost")
    p.add_argument("--draws", type=int, default=None,
                   help="draws of a randomised model's randomness each cell is judged over (default 5; the "
                        "paper mode is randomised, other models take 1)")
    p.add_argument("--all-attacks", action="store_true",
                   help="also run suite members that do not apply to a model (e.g. EOT on a deterministic one)")
    p.add_argument("--limit", type=int, help="run at most this many cells")
    p.add_argument("--replace", action="store_true",
                   help="recompute the cells even if they are in --json, replacing their records")
    p.add_argument("--shard", type=parse_shard, help="i/k: run only every k-th cell from the i-th")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from .evaluation import load_results, plan_cells, run_cells
    from .report import render_markdown

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
    cells = plan_cells(args.dataset, args.model, args.grad_mode, args.attack, args.eps, n=args.n, seed=args.seed,
                       backend=args.backend, steps=args.steps, source=args.source,
                       only_applicable=not args.all_attacks, data_root=args.data_root)
    if not cells:
        raise ValueError("No cell to run: none of the attacks applies to these models (see --all-attacks).")
    summary = run_cells(cells, args.json, limit=args.limit, shard=args.shard, replace=args.replace,
                        progress=not args.quiet,
                        data_root=args.data_root, model_dir=args.model_dir, batch_size=args.batch_size,
                        shots=args.shots, draws=args.draws, command=command_line())
    print(f"{len(summary.ran)} cell(s) run, {len(summary.skipped)} already in {args.json}.")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(load_results(args.json), command=command_line()))
        print(f"wrote {args.markdown}")
    return 0


# --------------------------------------------------------------------------- grid


def _add_grid(sub) -> None:
    p = sub.add_parser(
        "grid", help="run a grid file (grids/*.toml) on Dask: local worker processes, or a cluster",
        description="Plan the cells of a grid file's stages and run those not yet in their results files, one "
                    "task per cell, on a local Dask cluster (one single-threaded worker process per core) or on the "
                    "cluster at --address / $DASK_SCHEDULER_ADDRESS. The workers return their records and this process "
                    "merges each into its results file under the file's lock (records other processes added are kept).")
    p.add_argument("grid", type=Path, help="grid file, e.g. grids/results.toml")
    p.add_argument("--stage", nargs="+", help="only these stages (default: all)")
    p.add_argument("--dataset", nargs="+", help="only these datasets")
    p.add_argument("--model", nargs="+", help="only these models")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--address", help="scheduler of a running Dask cluster, e.g. tcp://host:8786 (default: "
                   "$DASK_SCHEDULER_ADDRESS, else a local cluster is started)")
    p.add_argument("--retries", type=int, default=2,
                   help="reruns of a cell whose task fails or whose worker dies, before it is reported (default 2)")
    p.add_argument("--out-dir", type=Path, help="write each stage's results file into this folder (same file name)")
    p.add_argument("--source", choices=["auto", "test", "samples"], help="override the grid file's source of points")
    p.add_argument("--n", type=int, help="points per cell in every run (a quick slice: its cells get other keys)")
    p.add_argument("--data-root")
    p.add_argument("--model-dir", type=Path, help="directory of the shipped models (default pretrained/)")
    p.add_argument("--limit", type=int, help="run at most this many cells")
    p.add_argument("--replace", action="store_true", help="recompute the cells even if they are in their files")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints/cells"),
                   help="where each running cell keeps its finished batches, so that a cell interrupted part-way "
                        "(a session's end, a dead worker) goes on from them when the same command is run again "
                        "(default checkpoints/cells; on a remote cluster, a path on the workers)")
    p.add_argument("--fresh", action="store_true",
                   help="do not go on from batches an earlier run finished (after changing the attacks' code)")
    p.add_argument("--dry-run", action="store_true", help="list the cells that would run, and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_grid)


def _cmd_grid(args) -> int:
    from .grid import NoWorkersError, check_cluster_options, load_grid, pending, plan, run_grid

    if args.retries < 0:
        raise ValueError(f"--retries must be at least 0, got {args.retries}.")
    check_cluster_options(args.address, args.workers)
    data_root = None if args.data_root is None else str(Path(args.data_root).resolve())
    jobs = plan(load_grid(args.grid), args.stage, args.dataset, args.model, out_dir=args.out_dir, source=args.source,
                n=args.n, data_root=data_root)
    if not jobs:
        raise ValueError(f"No cell to run: {args.grid} plans none for these stages, datasets and models.")
    todo, _ = pending(jobs, args.replace)
    to_run = set(todo)
    for stage in dict.fromkeys(j.stage for j in jobs):
        mine = [j for j in jobs if j.stage == stage]
        print(f"stage {stage}: {len(mine)} cells, {sum(j in to_run for j in mine)} to run -> {mine[0].out}")
    if args.dry_run:
        for job in todo[:args.limit]:
            print(job.cell.key)
        return 0
    try:
        summary = run_grid(jobs, address=args.address, workers=args.workers, retries=args.retries,
                           replace=args.replace, limit=args.limit, progress=not args.quiet, data_root=data_root,
                           model_dir=None if args.model_dir is None else str(args.model_dir.resolve()),
                           command=command_line(), checkpoint_dir=str(args.checkpoint_dir.resolve()),
                           resume=not args.fresh)
    except NoWorkersError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(summary.ran)} cell(s) run in {summary.seconds:.0f} s on {len(summary.cells_per_worker)} worker "
          f"process(es), {len(summary.skipped)} already done.")
    if summary.models_loaded:
        print("models loaded / cells run, per worker process: " + ", ".join(
            f"{w} {summary.models_loaded[w]}/{summary.cells_per_worker[w]}" for w in summary.models_loaded))
    if summary.failed:
        print(f"{len(summary.failed)} cell(s) failed (rerun the same command to retry them):", file=sys.stderr)
        for key, error in summary.failed.items():
            print(f"  {key}: {error}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- table / info / draw


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="render Markdown tables from results JSON file(s)")
    p.add_argument("json", nargs="+", type=Path, help="results file(s) written by evaluate (merged)")
    p.add_argument("--out", type=Path, help="write here instead of printing")
    p.add_argument("--paper", type=Path, help="the paper's figures (default: qshield-paper-results.json)")
    p.add_argument("--title")
    p.add_argument("--readme", type=Path, help="also update the summary tables between the <!-- qshield:NAME --> "
                   "markers of this file (e.g. README.md)")
    p.set_defaults(func=_cmd_table)


def _add_study(sub) -> None:
    from .studies import STUDIES

    p = sub.add_parser("study", help="the table of a study (results/design-study.json, advtrain.json, seed-study.json)",
                       description="One row per model and mode: its seeds' mean and spread (clean, PGD-10, transfer, "
                                   "AutoAttack, the per-point worst case) beside the CNN's, and whether it exceeds "
                                   "the CNN beyond the intervals (qshield_core.studies). design: at the paper's eps "
                                   "beside the shipped CNN; advtrain: at the training eps beside the defended CNN; "
                                   "seed: the paper's models trained from scratch over seeds, with the check of the "
                                   "paper's entanglement ordering.")
    p.add_argument("study", choices=list(STUDIES))
    p.add_argument("json", nargs="+", type=Path, help="results file(s) of the study (merged)")
    p.add_argument("--out", type=Path, help="write the Markdown here instead of printing")
    p.add_argument("--readme", type=Path, help="also update the <!-- qshield:STUDY-study --> block of this file")
    p.set_defaults(func=_cmd_study)


def _cmd_study(args) -> int:
    from .report import update_marked_blocks
    from .studies import STUDIES

    text = STUDIES[args.study].markdown(_merged_records(args.json))
    updated = _readme_update(args.readme, lambda t: update_marked_blocks(t, {f"{args.study}-study": text}))
    _write_report(f"# The {args.study} study\n\nRegenerate: `{command_line()}`\n\n{text}\n", args.out,
                  f"wrote {args.out}")
    _finish_readme(args.readme, updated, f"updated the {args.study}-study block of {args.readme}")
    return 0


def _readme_update(readme: Path | None, update) -> str | None:
    """The updated text of ``readme`` (None without one), computed before anything is written, so that a bad
    ``--readme`` loses nothing."""
    if readme is None:
        return None
    if not readme.is_file():
        raise ValueError(f"File to update not found: {readme}")
    return update(readme.read_text())


def _write_report(text: str, out: Path | None, message: str) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(message)
    else:
        print(text, end="")


def _finish_readme(readme: Path | None, updated: str | None, message: str) -> None:
    if readme is not None and updated is not None:
        readme.write_text(updated)
        print(message)


def _merged_records(paths: list[Path]) -> list[dict]:
    from .evaluation import load_results

    records, seen = [], set()
    for path in paths:
        if not path.is_file():
            raise ValueError(f"Results file not found: {path}")
        for record in load_results(path):
            if record.get("key") not in seen:
                seen.add(record.get("key"))
                records.append(record)
    return records


def _cmd_table(args) -> int:
    from .report import load_paper_results, readme_blocks, render_markdown, update_marked_blocks

    records = _merged_records(args.json)
    paper = load_paper_results(args.paper)
    if args.paper and paper is None:
        raise ValueError(f"Paper results file not found: {args.paper}")
    updated = _readme_update(args.readme, lambda t: update_marked_blocks(t, readme_blocks(records, paper)))
    text = render_markdown(records, paper=paper, title=args.title, command=command_line())
    _write_report(text, args.out, f"wrote {args.out} ({len(records)} records)")
    _finish_readme(args.readme, updated, f"updated the tables of {args.readme}")
    return 0


def _add_claims(sub) -> None:
    p = sub.add_parser(
        "claims", help="the masking audit and one claim card per model (results/claims.json, README table)",
        description="For every shipped model and gradient mode with records: clean, paper-protocol and AutoAttack "
                    "robust accuracy, the per-point worst case over attacks, the masking flags (live checks on "
                    "shipped samples, and comparisons of attacks on the same points), and whether RobustBench "
                    "would admit it.")
    p.add_argument("json", nargs="+", type=Path, help="results file(s) the cards read")
    p.add_argument("--out", type=Path, default=Path("results/claims.json"))
    p.add_argument("--markdown", type=Path, help="also write the cards' table here (e.g. results/claims.md)")
    p.add_argument("--readme", type=Path, help="also update the <!-- qshield:claims --> block of this file")
    p.add_argument("--dataset", nargs="+", default=["mnist", "organamnist", "cifar10"])
    p.add_argument("--n-live", type=int, default=30, help="shipped samples the live checks run on")
    p.add_argument("--model-dir", type=Path)
    p.set_defaults(func=_cmd_claims)


def _cmd_claims(args) -> int:
    from .audit import claim_cards, load_claims, save_claims
    from .report import claims_table, update_marked_blocks

    records = _merged_records(args.json)
    if args.readme and not args.readme.is_file():
        raise ValueError(f"File to update not found: {args.readme}")
    cards = claim_cards(records, args.dataset, args.model_dir, args.n_live,
                        progress=lambda c: print(f"{c.dataset} {c.model} {c.grad_mode or ''}: "
                                                 f"{sum(bool(f.raised) for f in c.flags)} flag(s) raised"))
    save_claims(args.out, cards, command_line())
    table = claims_table(load_claims(args.out))
    print(f"wrote {args.out} ({len(cards)} cards)")
    if args.markdown:
        args.markdown.write_text(f"# Claim cards\n\nRegenerate with: `{command_line()}`\n\n{table}\n")
        print(f"wrote {args.markdown}")
    if args.readme:
        args.readme.write_text(update_marked_blocks(args.readme.read_text(), {"claims": table}))
        print(f"updated the claims table of {args.readme}")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="list the shipped models with their model-card figures")
    p.add_argument("--dataset", nargs="+", help="only these datasets")
    p.add_argument("--model-dir", type=Path, help="directory of the shipped models (default pretrained/)")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from .data import DATASETS, get_spec
    from .zoo import PRETRAINED_DIR, USER_MODELS_DIR, available_models, model_files, read_card, sha256_file, user_models

    directory = args.model_dir or PRETRAINED_DIR
    datasets = [get_spec(d).name for d in args.dataset] if args.dataset else list(DATASETS)
    header = f"{'dataset':12s} {'model':20s} {'clean acc':>9s} {'diff. acc':>9s} {'params':>10s} {'train s':>8s} " \
             f"{'alpha':>6s}  {'weights':14s} noise"
    print(header)
    found = 0
    for dataset in datasets:
        listed = [(m, directory) for m in available_models(dataset, directory)]
        if args.model_dir is None:  # and the models trained from circuit designs
            listed += [(m, USER_MODELS_DIR) for m in user_models(dataset)]
        for model, folder in listed:
            card = read_card(dataset, model, folder)
            files = model_files(dataset, model, folder)
            ok = files.weights.is_file() and sha256_file(files.weights) == card.get("weights_sha256")
            by_mode = card.get("clean_test_accuracy_by_grad_mode") or {}
            diff = by_mode.get("differentiable")
            alpha = card.get("mean_alpha_test")
            accuracy = card.get("clean_test_accuracy") or float("nan")
            print(f"{dataset:12s} {model:20s} {100 * accuracy:8.2f}% "
                  f"{'' if diff is None else f'{100 * diff:8.2f}%':>9s} {card.get('parameter_count', 0):10,d} "
                  f"{card.get('train_seconds', 0):8.0f} {'' if alpha is None else f'{alpha:.3f}':>6s}  "
                  f"{card.get('weights_sha256', '')[:12] + ('' if ok else ' BAD'):14s} "
                  f"{card.get('noise_description', '-')}")
            found += 1
    if not found:
        print(f"(no shipped models in {directory})")
    return 0


def _add_draw(sub) -> None:
    from .noise import NOISE_KINDS
    from .quantum import ENCODINGS, ENTANGLEMENTS

    p = sub.add_parser("draw", help="print the QShield circuit (qml.draw)")
    p.add_argument("--entanglement", default="full", choices=ENTANGLEMENTS)
    p.add_argument("--noise", default="mixed", choices=NOISE_KINDS)
    p.add_argument("--p", type=float, default=0.005, help="noise strength (default 0.005)")
    p.add_argument("--readout", type=float, default=0.0, help="readout bit-flip probability")
    p.add_argument("--encoding", default="enhanced", choices=ENCODINGS)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--qubits", type=int, help="number of qubits (default: from --dataset's classes, else 4)")
    p.add_argument("--dataset", help="take the qubit count from this dataset's classes")
    p.add_argument("--variational", action="store_true", help="add trainable Rot layers")
    p.set_defaults(func=_cmd_draw)


def _cmd_draw(args) -> int:
    from .data import get_spec
    from .noise import NoiseModel
    from .quantum import CircuitConfig
    from .quantum import draw_text as draw
    from .simulator import qubits_for_classes

    qubits = args.qubits or (qubits_for_classes(get_spec(args.dataset).num_classes) if args.dataset else 4)
    noise = NoiseModel(kind=args.noise, p=args.p, readout=args.readout)
    config = CircuitConfig(n_qubits=qubits, encoding=args.encoding, entanglement=args.entanglement,
                           depth=args.depth, variational=args.variational, noise=noise)
    print(f"{qubits} qubits, {args.encoding} encoding, {args.entanglement} entanglement, depth {args.depth}, "
          f"noise: {noise.describe()}")
    print(draw(config))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="a short demo on the shipped models and samples: one attack, both models")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--attack", default="pgd", help="an attack of the registry (default: the paper's PGD)")
    p.add_argument("--eps", type=parse_eps, help="L-inf epsilon (default: the paper's for the dataset)")
    p.add_argument("--grad-mode", default="paper", choices=["paper", "differentiable"])
    p.add_argument("--per-class", type=int, default=1, help="shipped samples per class (default 1)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    """Attack a few shipped samples with the Attack Lab's own computation and print a table."""
    from . import lab
    from .data import get_spec

    spec = get_spec(args.dataset)
    models = {"classical": lab.load(spec.name, "classical"),
              "hybrid-full": lab.load(spec.name, "hybrid-full", grad_mode=args.grad_mode)}
    twin = lab.load(spec.name, "hybrid-full", grad_mode="differentiable")
    seen: dict[int, int] = {}
    entries = []
    for entry in lab.sample_table(spec.name):
        seen[entry["label"]] = seen.get(entry["label"], 0) + 1
        if seen[entry["label"]] <= args.per_class:
            entries.append(entry)
    print(f"{spec.display_name}: {args.attack} at eps {args.eps or spec.paper_eps:.4f} on {len(entries)} shipped "
          f"test images; hybrid-full in {args.grad_mode} mode")
    rows = [["image", *models]]
    flips = {key: 0 for key in models}
    correct = {key: 0 for key in models}
    names = spec.class_names
    for entry in entries:
        result = lab.compare_attack(spec.name, lab.sample_image(entry), entry["label"], args.attack, models,
                                    eps=args.eps, twin=twin, classical=models["classical"])
        row = [entry["title"]]
        for key, outcome in result.outcomes.items():
            flips[key] += outcome.flipped
            correct[key] += bool(outcome.clean_correct)
            row.append(f"{names[outcome.clean_pred]}->{names[outcome.adv_pred]} {outcome.verdict}")
        rows.append(row)
    print(format_columns(rows))
    print("flipped (right before the attack, wrong after): "
          + ", ".join(f"{key} {flips[key]} of {correct[key]}" for key in models))
    wrong = {key: len(entries) - correct[key] for key in models if correct[key] < len(entries)}
    if wrong:
        print("wrong before (already misclassified, not counted): "
              + ", ".join(f"{key} {count}" for key, count in wrong.items()))
    print("Try --grad-mode differentiable, or --attack autoattack: see README 'Results'.")
    return 0


def format_columns(rows: list[list[str]], gap: int = 3) -> str:
    """Left-aligned text columns, each as wide as its longest cell plus ``gap`` spaces (none after the last)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("".join(cell.ljust(width + gap) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qshield_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_grid(sub)
    _add_table(sub)
    _add_study(sub)
    _add_claims(sub)
    _add_info(sub)
    _add_draw(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, DeviceUnavailableError, ModelUnavailableError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
