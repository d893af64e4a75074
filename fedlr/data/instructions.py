"""Instruction data for causal language models: (instruction, response) pairs.

Returns a DataFrame with columns ``instruction`` and ``response`` plus any other column (an id
to partition by). Sources: the chatterbot-corpus package's English YAML dialogues (2,393 pairs
in 21 topics, column ``category``: a natural non-IID split), a local .jsonl/.json/.csv/.parquet
file with ``data.instruction_column`` / ``data.response_column``, or a hub dataset id.
"""

from __future__ import annotations

import pandas as pd

from fedlr.config import ConfigError, DataConfig
from fedlr.data.corpora import _package_dir, read_table

CHATTERBOT = "chatterbot"


def chatterbot() -> pd.DataFrame:
    """Every consecutive (statement, reply) pair of chatterbot-corpus's English dialogues; the
    topic file's name (ai, emotion, trivia, …) is the ``category``."""
    import yaml

    rows = []
    for path in sorted((_package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        for dialog in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            for said, reply in zip(dialog, dialog[1:]):
                rows.append({"instruction": str(said), "response": str(reply), "category": path.stem})
    return pd.DataFrame(rows)


def load_instructions(cfg: DataConfig) -> pd.DataFrame:
    if cfg.dataset == CHATTERBOT:
        return chatterbot()
    raw = read_table(cfg.dataset)
    columns = (("instruction_column", cfg.instruction_column), ("response_column", cfg.response_column))
    for field, column in columns:
        if column not in raw.columns:
            raise ConfigError(f"data.{field}: column {column!r} not in {cfg.dataset} (columns: {list(raw.columns)})")
    raw = raw.dropna(subset=[c for _, c in columns]).reset_index(drop=True)
    if raw.empty:
        raise ConfigError(f"data.dataset: {cfg.dataset} has no row with both an instruction and a response")
    df = pd.DataFrame({"instruction": raw[cfg.instruction_column].astype(str),
                       "response": raw[cfg.response_column].astype(str)})
    for col in raw.columns:
        if col not in (cfg.instruction_column, cfg.response_column, "instruction", "response"):
            df[col] = raw[col]
    return df
