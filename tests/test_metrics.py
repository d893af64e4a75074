"""``fedlr.metrics`` against scikit-learn's metrics on random labels and logits, and against
straightforward independent implementations: accuracy, balanced accuracy (mean recall over the classes present), macro-F1
(over the classes in the truth or the predictions, as scikit-learn's default), ROC AUC by the
Mann–Whitney pair count (ties count ½) — on random labels and logits with many ties and classes
that never appear — and scikit-learn's documented values; and the majority-class baseline's
closed form against the metrics of a constant prediction."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlr.metrics import average_ranks, classification_metrics
from fedlr.results.stats import majority_baseline


def reference_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def pair_count_auc(positive, score):
    pos = [s for s, p in zip(score, positive) if p]
    neg = [s for s, p in zip(score, positive) if not p]
    if not pos or not neg:
        return None
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def reference(labels, logits):
    n, k = len(labels), len(logits[0])
    pred = [max(range(k), key=lambda c: (row[c], -c)) for row in logits]  # argmax, first maximum wins
    classes_true = sorted(set(labels))
    recall = [sum(1 for y, p in zip(labels, pred) if y == c == p) / labels.count(c) for c in classes_true]
    f1 = []
    for c in sorted(set(labels) | set(pred)):
        tp = sum(1 for y, p in zip(labels, pred) if y == c == p)
        fp = sum(1 for y, p in zip(labels, pred) if p == c != y)
        fn = sum(1 for y, p in zip(labels, pred) if y == c != p)
        f1.append(2 * tp / (2 * tp + fp + fn))
    z = np.asarray(logits, dtype=np.float64)
    if k == 2:
        auc = pair_count_auc([y == 1 for y in labels], list(z[:, 1] - z[:, 0]))
    else:
        probs = reference_softmax(z)
        aucs = [a for c in range(k) if (a := pair_count_auc([y == c for y in labels], list(probs[:, c]))) is not None]
        auc = sum(aucs) / len(aucs) if aucs else None
    return {"accuracy": sum(y == p for y, p in zip(labels, pred)) / n, "balanced_accuracy": sum(recall) / len(recall),
            "macro_f1": sum(f1) / len(f1), "roc_auc": auc,
            "support": [labels.count(c) for c in range(k)], "predicted": [pred.count(c) for c in range(k)]}


@st.composite
def labels_and_logits(draw):
    k = draw(st.integers(2, 5))
    n = draw(st.integers(1, 40))
    present = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))  # others never appear
    labels = draw(st.lists(st.sampled_from(present), min_size=n, max_size=n))
    # few distinct values: ties within a column and between rows are common
    logits = draw(st.lists(st.lists(st.integers(-3, 3).map(float), min_size=k, max_size=k), min_size=n, max_size=n))
    return labels, logits


@settings(max_examples=300, deadline=None)
@given(labels_and_logits())
def test_metrics_match_the_reference_implementations(case):
    labels, logits = case
    got = classification_metrics(labels, logits)
    want = reference(labels, logits)
    assert got.support == want["support"] and got.predicted == want["predicted"]
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert getattr(got, name) == pytest.approx(want[name], abs=1e-12), name
    if want["roc_auc"] is None:
        assert got.roc_auc is None
    else:
        assert got.roc_auc == pytest.approx(want["roc_auc"], abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(labels_and_logits())
def test_metrics_match_scikit_learn(case):
    """scikit-learn's accuracy, balanced accuracy (mean recall over the classes in the truth), macro-F1
    (over the classes in the truth or the predictions) and ROC AUC (binary on the logit margin; with
    more classes one-vs-rest on the softmax, averaged over the classes present, as fedlr documents)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    labels, logits = case
    got = classification_metrics(labels, logits)
    z = np.asarray(logits, dtype=np.float64)
    pred = np.argmax(z, axis=1)  # the first maximum wins, as in fedlr
    y = np.asarray(labels)
    assert got.accuracy == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": the documented case
        assert got.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert got.macro_f1 == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    k = z.shape[1]
    columns = [(y == 1, z[:, 1] - z[:, 0])] if k == 2 else [(y == c, reference_softmax(z)[:, c]) for c in range(k)]
    aucs = [roc_auc_score(truth, score) for truth, score in columns if 0 < truth.sum() < len(truth)]
    if not aucs:
        assert got.roc_auc is None
    else:
        assert got.roc_auc == pytest.approx(sum(aucs) / len(aucs), abs=1e-12)


def test_scikit_learn_documented_values():
    # roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75 (scikit-learn's user guide)
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics([0, 0, 1, 1], np.stack([np.zeros(4), scores], axis=1))
    assert m.roc_auc == pytest.approx(0.75)
    # balanced_accuracy_score([0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1]) == 0.625
    pred = [0, 1, 0, 0, 0, 1]
    m = classification_metrics([0, 1, 0, 0, 1, 0], np.eye(2)[pred])
    assert m.balanced_accuracy == pytest.approx(0.625)
    # f1_score([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1], average="macro") == 0.26666...
    pred = [0, 2, 1, 0, 0, 1]
    m = classification_metrics([0, 1, 2, 0, 1, 2], np.eye(3)[pred])
    assert m.macro_f1 == pytest.approx(0.26666666666666666)
    assert m.support == [2, 2, 2] and m.predicted == [3, 2, 1]


def test_majority_class_predictions_score_chance_where_accuracy_looks_good():
    labels = [0] * 87 + [1] * 13  # SMS spam's imbalance
    logits = np.tile([1.0, 0.0], (100, 1))
    m = classification_metrics(labels, logits)
    assert m.accuracy == 0.87 and m.balanced_accuracy == 0.5 and m.roc_auc == 0.5
    assert m.macro_f1 == pytest.approx((2 * 87 / (87 + 100)) / 2)  # the never-predicted spam class scores 0


def test_auc_is_undefined_with_one_class_and_ranks_average_ties():
    assert classification_metrics([1, 1], [[0.0, 1.0], [0.0, 2.0]]).roc_auc is None
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    with pytest.raises(ValueError):
        classification_metrics([], np.zeros((0, 2)))
    assert not math.isnan(classification_metrics([0], [[1.0, 0.0]]).balanced_accuracy)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 5).flatmap(lambda k: st.lists(st.integers(0, k - 1), min_size=1, max_size=60).map(
    lambda labels: (k, labels))))
def test_majority_baseline_is_what_always_answering_the_majority_class_scores(case):
    """The report's closed-form baseline (``fedlr.results.stats.majority_baseline``) against the
    metrics of a constant prediction of the most frequent class, by fedlr.metrics and by the
    independent reference above."""
    k, labels = case
    support = [labels.count(c) for c in range(k)]
    majority = support.index(max(support))
    logits = np.tile(np.eye(k)[majority], (len(labels), 1))
    baseline = majority_baseline(support)
    got, want = classification_metrics(labels, logits), reference(labels, logits.tolist())
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
        if want[name] is None:
            assert baseline[name] is None and getattr(got, name) is None, name
        else:
            assert baseline[name] == pytest.approx(want[name], abs=1e-12) == getattr(got, name), name
