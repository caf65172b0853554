"""Bring results files from record schema 1 to 2 (in place; idempotent).

Schema 2 records carry their points' test-split indices and kind (``test`` or ``samples``), and
their key names the resolved source instead of ``auto``. The indices of a schema 1 record are
recomputed from its dataset, n and seed with the same seeded selection, and accepted only if their
SHA-256 equals the one the record stored; nothing else in a record changes. Needs the datasets
(``../shared/datasets`` or ``--data-root``).

    python scripts/migrate_records_v2.py results/paper-reproduction.json results/adaptive.json results/sanity.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qshield_core.evaluation import RECORD_SCHEMA, evaluation_points, load_results, save_results

NOTE = "schema 1 -> 2: points' indices recomputed from dataset, n and seed (SHA-256 verified); key source resolved"


def migrate(record: dict, data_root: str | None) -> dict:
    """The schema 2 form of ``record`` (unchanged when it already is)."""
    if record.get("schema") == RECORD_SCHEMA:
        return record
    kind = "test" if "test split" in record["points"]["source"] else "samples"
    points = evaluation_points(record["dataset"], record["n"], record["seed"], data_root, kind)
    if points.indices_sha256 != record["points"]["indices_sha256"]:
        raise ValueError(f"{record['key']}: recomputed indices do not match the stored SHA-256; not migrated.")
    head, source = record["key"].rsplit("/", 1)
    if source not in ("auto", kind):
        raise ValueError(f"{record['key']}: key source {source!r} contradicts the points ({kind}).")
    return {**record, "schema": RECORD_SCHEMA, "key": f"{head}/{kind}",
            "points": {**record["points"], "kind": kind, "indices": points.indices}, "migrated": NOTE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    for path in args.files:
        records = load_results(path)
        migrated = [migrate(r, args.data_root) for r in records]
        keys = [r["key"] for r in migrated]
        if len(set(keys)) != len(keys):
            raise SystemExit(f"{path}: migrated keys collide; nothing written.")
        changed = sum(a is not b for a, b in zip(records, migrated, strict=True))
        save_results(path, migrated)
        print(f"{path}: {changed} of {len(records)} records migrated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
