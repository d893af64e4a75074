import numpy as np
import pandas as pd
import pytest

from fedlr.config import ConfigError, experiment_from_dict
from fedlr.data import FederatedData
from fedlr.data.corpora import load_table


def data_for(**data):
    fed = data.pop("federation", {"num_clients": 10, "clients_per_round": 2})
    return FederatedData(experiment_from_dict({"data": data, "federation": fed}))


def test_rotten_tomatoes_natural_partition_keeps_each_movie_on_one_client():
    d = data_for(dataset="rotten_tomatoes", partitioner="natural")
    assert len(d.table) == 12_808 and d.label_names == ["rotten", "fresh"]
    movies = [set(d.table["movie_name"].iloc[p]) for p in d.partitions]
    assert all(a.isdisjoint(b) for i, a in enumerate(movies) for b in movies[i + 1:])
    all_rows = np.concatenate(d.partitions)
    assert len(all_rows) == len(set(all_rows)) == len(d.train_rows)
    assert set(all_rows) == set(d.train_rows) and set(all_rows).isdisjoint(d.test_rows)
    # non-IID: clients' label rates differ
    rates = [d.table["label"].iloc[p].mean() for p in d.partitions]
    assert max(rates) - min(rates) > 0.05


def test_partitions_depend_on_the_seed_only():
    a, b = data_for(partitioner="natural"), data_for(partitioner="natural")
    assert all(np.array_equal(x, y) for x, y in zip(a.partitions, b.partitions))
    c = FederatedData(experiment_from_dict({"seed": 1, "federation": {"num_clients": 10, "clients_per_round": 2}}))
    assert not all(np.array_equal(x, y) for x, y in zip(a.partitions, c.partitions))


def test_iid_and_dirichlet_partitions_cover_the_train_rows():
    iid = data_for(dataset="sms_spam", partitioner="iid")
    sizes = [len(p) for p in iid.partitions]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(iid.train_rows)
    dirichlet = data_for(dataset="sms_spam", partitioner="dirichlet", alpha=0.3)
    assert sum(len(p) for p in dirichlet.partitions) == len(dirichlet.train_rows)
    spam_share = [dirichlet.table["label"].iloc[p].mean() if len(p) else 0 for p in dirichlet.partitions]
    assert np.std(spam_share) > 0.05  # label skew


def test_sms_spam_has_no_natural_ids():
    with pytest.raises(ConfigError, match="data.partition_by"):
        data_for(dataset="sms_spam", partitioner="natural")


def test_too_many_clients_for_natural_ids():
    with pytest.raises(ConfigError, match="federation.num_clients"):
        data_for(partitioner="natural", federation={"num_clients": 600, "clients_per_round": 2})


def test_local_csv_and_jsonl_files(tmp_path):
    df = pd.DataFrame({"sentence": [f"text {i}" for i in range(40)], "y": ["pos", "neg"] * 20,
                       "user": [f"u{i % 5}" for i in range(40)]})
    csv = tmp_path / "d.csv"
    df.to_csv(csv, index=False)
    d = data_for(dataset=str(csv), text_column="sentence", label_column="y", partitioner="natural",
                 partition_by="user", federation={"num_clients": 5, "clients_per_round": 2})
    assert d.label_names == ["neg", "pos"] and d.num_labels == 2
    assert all(d.table["user"].iloc[p].nunique() == 1 for p in d.partitions)
    jsonl = tmp_path / "d.jsonl"
    df.to_json(jsonl, orient="records", lines=True)
    table, names = load_table(experiment_from_dict({"data": {"dataset": str(jsonl), "text_column": "sentence",
                                                             "label_column": "y"}}).data)
    assert len(table) == 40 and names == ["neg", "pos"]


def test_numeric_labels_are_in_numeric_order(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(6)], "label": [10, 2, 1, 2, 10, 1]}).to_csv(path, index=False)
    table, names = load_table(experiment_from_dict({"data": {"dataset": str(path)}}).data)
    assert names == ["1", "2", "10"]  # as text, "10" would come before "2"
    assert table["label"].tolist() == [2, 1, 0, 1, 2, 0]


def test_missing_file_and_column(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        data_for(dataset=str(tmp_path / "missing.csv"))
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="data.label_column: column 'y'"):
        data_for(dataset=str(path), label_column="y")


def test_client_splits_are_disjoint_and_tokenized_once():
    from fedlr.models import load_tokenizer

    exp = experiment_from_dict({"federation": {"num_clients": 10, "clients_per_round": 2}})
    d = FederatedData(exp, load_tokenizer(exp.model))
    train, val = d.client_rows(3)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(d.partitions[3])
    first = d.client_train(3)
    assert d.client_train(3) is first  # cached: tokenized once per process
    batch = first.batch([0, 1, 2])
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] <= exp.model.max_length
    assert d.majority_rate() == pytest.approx(0.558, abs=0.02)
