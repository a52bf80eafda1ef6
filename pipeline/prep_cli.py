"""`rakd prep`: the prep stage with `--skip-invalid`."""

from __future__ import annotations

import argparse

from rakd.stages.prep import card_rows, run_prep
from rakd.tables import text_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad rows and count them in the card")


def command(args: argparse.Namespace, cfg) -> int:
    prep = cfg.prep.model_copy(update={"skip_invalid": True}) if args.skip_invalid else cfg.prep
    result = run_prep(prep, cfg.run.dir)
    print(text_table(card_rows(result.card)))
    print(f"\ndata written to {result.data_dir}/ (card: {result.data_dir / 'card.json'})")
    return 0
