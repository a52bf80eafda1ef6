"""The prep stage: task source -> deduplicated, split, verified JSONL plus a data card.

Writes `data/{train,val,test}.jsonl` and `data/card.json` under the run folder,
and `tokenizer/` when the models are trained from scratch. Everything is
validated before anything is written, and each folder is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rakd.data.config import PrepConfig
from rakd.data.generator import generate
from rakd.data.loaders import load_task_file
from rakd.io import atomic_dir, atomic_write_json, sha256_bytes, sha256_file, to_jsonl
from rakd.layout import RunLayout
from rakd.schema import DataError, Summary
from rakd.verify import normalize_number, reward

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PrepResult:
    data_dir: Path
    tokenizer_dir: Path | None
    card: dict


def normalize_question(question: str) -> str:
    return re.sub(r"\s+", " ", question.strip().lower())


def question_id(question: str) -> str:
    return hashlib.sha256(normalize_question(question).encode()).hexdigest()[:16]


def split_of(question: str, cfg: PrepConfig) -> str:
    """Deterministic split from a hash of the normalised question (never seed-dependent)."""
    digest = hashlib.sha256(f"{cfg.split_salt}\x00{normalize_question(question)}".encode())
    bucket = int.from_bytes(digest.digest()[:8], "big") / 2**64
    if bucket < cfg.test_fraction:
        return "test"
    if bucket < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"


def _load_source(cfg: PrepConfig) -> tuple[list[dict], dict, int]:
    """(records, source description, invalid rows skipped)."""
    if cfg.source == "generator":
        records = generate(cfg.generator)
        for record in records:  # a generator bug must never become training data
            if reward(record["solution"], record["answer"]) != 1.0:
                raise DataError(f"generated solution does not verify: {record}")
        info = {"kind": "generator", "config": cfg.generator.model_dump(), "requested": cfg.generator.n_items}
        return records, info, 0
    loaded = load_task_file(cfg.path, cfg.source, skip_invalid=cfg.skip_invalid)
    info = {"kind": cfg.source, "path": str(cfg.path), "sha256": sha256_file(cfg.path)}
    return loaded.records, info, loaded.invalid


def deduplicate(records: list[dict]) -> tuple[list[dict], int]:
    """Keep the first record of each normalised question; return (kept, removed)."""
    seen: dict[str, dict] = {}
    for record in records:
        seen.setdefault(question_id(record["question"]), record)
    return list(seen.values()), len(records) - len(seen)


def _length_stats(texts: list[str]) -> dict:
    if not texts:
        return {"min": 0, "mean": 0.0, "max": 0}
    lengths = [len(t) for t in texts]
    return {"min": min(lengths), "mean": round(statistics.fmean(lengths), 2), "max": max(lengths)}


def _answer_summary(answers: list[str]) -> dict:
    numeric = [float(n) for a in answers if (n := normalize_number(a)) is not None]
    summary = {
        "distinct": len(set(answers)),
        "non_numeric": len(answers) - len(numeric),
        "most_common": [list(pair) for pair in Counter(answers).most_common(5)],
    }
    if numeric:
        summary.update(min=min(numeric), max=max(numeric), mean=round(statistics.fmean(numeric), 3))
    return summary


def build_card(splits: dict[str, list[dict]], source: dict, duplicates: int, invalid: int) -> dict:
    everything = [r for name in SPLITS for r in splits[name]]
    return {
        "source": source,
        "counts": {**{name: len(splits[name]) for name in SPLITS}, "total": len(everything)},
        "duplicates_removed": duplicates,
        "invalid_skipped": invalid,
        "question_chars": {name: _length_stats([r["question"] for r in splits[name]]) for name in SPLITS},
        "solution_chars": {
            name: _length_stats([r["solution"] for r in splits[name] if "solution" in r]) for name in SPLITS
        },
        "answers": _answer_summary([r["answer"] for r in everything]),
        "fingerprint": sha256_bytes("".join(to_jsonl(splits[name]) for name in SPLITS).encode()),
    }


def split_records(records: list[dict], cfg: PrepConfig) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for record in records:
        row = {"id": question_id(record["question"]), **record}
        splits[split_of(record["question"], cfg)].append(row)
    for name in SPLITS:
        splits[name].sort(key=lambda row: row["id"])
    return splits


def run_prep(cfg: PrepConfig, run_dir: str | Path) -> PrepResult:
    """Run the prep stage into `run_dir`; nothing is written if any input is invalid."""
    layout = RunLayout(run_dir)
    records, source, invalid = _load_source(cfg)
    records, duplicates = deduplicate(records)
    splits = split_records(records, cfg)
    if not splits["train"]:
        raise DataError(f"the train split is empty ({len(records)} records in all)")
    card = build_card(splits, source, duplicates, invalid)
    tokenizer_dir = None
    if cfg.tokenizer is not None:
        tokenizer_dir = layout.tokenizer
        with atomic_dir(tokenizer_dir) as staging:
            from rakd.models.tokenizer import train_tokenizer  # tokenizers and transformers: only when training

            tokenizer = train_tokenizer(splits["train"], cfg.tokenizer, staging)
        card["tokenizer"] = {"path": "tokenizer", "vocab_size": len(tokenizer)}
    with atomic_dir(layout.data) as staging:
        for name in SPLITS:
            (staging / f"{name}.jsonl").write_text(to_jsonl(splits[name]), encoding="utf-8")
        atomic_write_json(staging / "card.json", card)
    return PrepResult(data_dir=layout.data, tokenizer_dir=tokenizer_dir, card=card)


def card_rows(card: dict) -> list[dict]:
    """A data card as (item, value) rows."""
    counts = card["counts"]
    rows = [
        ("source", card["source"]["kind"]),
        ("items", f"{counts['total']} (train {counts['train']}, val {counts['val']}, test {counts['test']})"),
        ("removed", f"{card['duplicates_removed']} duplicates, {card['invalid_skipped']} invalid rows"),
        ("question", f"{card['question_chars']['train']['mean']} chars on average (train)"),
        (
            "answers",
            f"{card['answers']['distinct']} distinct, most common {json.dumps(card['answers']['most_common'][:3])}",
        ),
        ("fingerprint", card["fingerprint"][:16]),
    ]
    if "tokenizer" in card:
        rows.append(("tokenizer", f"{card['tokenizer']['vocab_size']} tokens"))
    return [{"item": item, "value": value} for item, value in rows]


# ---------------------------------------------------------------- the stage contract (pipeline.registry)
# (section config, RunLayout) -> summary, a small JSON dict read back from the outputs, so that a run that just
# finished and outputs current under their key give the same summary; the stage's own summary rows.


def done_file(layout: RunLayout) -> Path:
    return layout.card


def run_stage(cfg: PrepConfig, layout: RunLayout) -> Summary:
    run_prep(cfg, layout.root)
    return read_stage(cfg, layout)


def read_stage(cfg: PrepConfig, layout: RunLayout) -> Summary:
    return {"path": str(layout.card.parent), "card": json.loads(layout.card.read_text())}


def stage_rows(summary: Summary) -> list[dict]:
    return card_rows(summary["card"])
