"""Classification metrics of one evaluation, from the logits it already computed (no second pass).

With n examples, labels y_i ∈ {0, …, K−1}, predictions ŷ_i = argmax_c logit_ic, and for class c
the counts TP_c = #{y_i = c, ŷ_i = c}, FP_c = #{y_i ≠ c, ŷ_i = c}, FN_c = #{y_i = c, ŷ_i ≠ c},
support n_c = #{y_i = c} and predicted p_c = #{ŷ_i = c}:

- accuracy = (1/n) Σ_i [ŷ_i = y_i];
- balanced accuracy = mean over the classes with n_c > 0 of the recall TP_c / n_c (the mean
  per-class recall; scikit-learn's ``balanced_accuracy_score``). A classifier that always answers
  the majority class scores 1/K' (K' classes present), whatever the imbalance;
- macro-F1 = mean over the classes with n_c + p_c > 0 of F1_c = 2·TP_c / (2·TP_c + FP_c + FN_c)
  (scikit-learn's ``f1_score(average="macro")``, which averages over the labels present in the
  truth or the predictions);
- ROC AUC of class c against the rest, with scores s_i = softmax(logit_i)_c:
  AUC_c = (1 / (n_c·(n − n_c))) Σ_{y_i = c} Σ_{y_j ≠ c} ([s_i > s_j] + ½[s_i = s_j])
  (Mann–Whitney U / (n_pos·n_neg); a tie counts one half), computed from average ranks:
  AUC_c = (R_c − n_c(n_c + 1)/2) / (n_c·(n − n_c)), R_c the sum of the ranks of class c's scores.
  Binary (K = 2): AUC_1, the AUC of the positive class's score (ranked by logit_1 − logit_0,
  the same order as s_i). Multi-class: the macro mean of
  AUC_c over the classes where it is defined (0 < n_c < n; scikit-learn's ``multi_class="ovr",
  average="macro"`` when every class is present). None where no class has it defined.

Per-class counts ``support`` (n_c) and ``predicted`` (p_c) are lists indexed by class id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    roc_auc: float | None  # None where no class has both positive and negative examples
    support: list[int]  # n_c: test examples of class c
    predicted: list[int]  # p_c: examples predicted as class c


# the metrics beyond loss and accuracy that a central evaluation hands on (``metric_values``); the
# ledger row has each as ``eval_<name>``, the summary as ``final_<name>``
EVAL_METRICS = ("balanced_accuracy", "macro_f1", "roc_auc", "class_support", "class_predicted")


def metric_values(m: ClassificationMetrics | None) -> dict[str, float | list[int]]:
    """``EVAL_METRICS`` of ``m`` for a Flower MetricRecord, which holds no None: an undefined AUC
    (and everything, for an evaluation without examples) is left out."""
    if m is None:
        return {}
    values = dict(balanced_accuracy=m.balanced_accuracy, macro_f1=m.macro_f1, roc_auc=m.roc_auc,
                  class_support=m.support, class_predicted=m.predicted)
    return {k: v for k, v in values.items() if v is not None}


def classification_metrics(labels, logits) -> ClassificationMetrics:
    """All the metrics above for ``labels`` (n,) and ``logits`` (n, K) (arrays or tensors), n ≥ 1."""
    y = np.asarray(labels, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or y.size == 0:
        raise ValueError(f"expected n >= 1 labels and (n, K) logits, got {y.shape} and {z.shape}")
    num_classes = z.shape[1]
    pred = z.argmax(axis=1)
    support = np.bincount(y, minlength=num_classes)
    predicted = np.bincount(pred, minlength=num_classes)
    tp = np.bincount(y[pred == y], minlength=num_classes)
    return ClassificationMetrics(
        accuracy=int(tp.sum()) / y.size,
        balanced_accuracy=balanced_accuracy(tp, support),
        macro_f1=macro_f1(tp, support, predicted),
        roc_auc=roc_auc(y, z),
        support=[int(v) for v in support], predicted=[int(v) for v in predicted])


def balanced_accuracy(tp: np.ndarray, support: np.ndarray) -> float:
    """Mean of TP_c / n_c over the classes with n_c > 0."""
    present = support > 0
    return float(np.mean(tp[present] / support[present]))


def macro_f1(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> float:
    """Mean of 2·TP_c / (n_c + p_c) (= 2·TP_c / (2·TP_c + FP_c + FN_c)) over the classes with n_c + p_c > 0."""
    seen = support + predicted > 0
    return float(np.mean(2 * tp[seen] / (support[seen] + predicted[seen])))


def roc_auc(labels: np.ndarray, logits: np.ndarray) -> float | None:
    """Binary (two columns): AUC of the positive class's score, ranked by logit_1 − logit_0 (the
    order of softmax(logit)_1, without the ties rounding makes where the softmax saturates);
    otherwise the macro mean of the one-vs-rest AUC_c of softmax(logit)_c over the classes where it
    is defined; None where none is."""
    if logits.shape[1] == 2:
        return one_vs_rest_auc(labels == 1, logits[:, 1] - logits[:, 0])
    scores = softmax(logits)
    aucs = [a for c in range(scores.shape[1]) if (a := one_vs_rest_auc(labels == c, scores[:, c])) is not None]
    return float(np.mean(aucs)) if aucs else None


def one_vs_rest_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """(R_pos − n_pos(n_pos + 1)/2) / (n_pos·n_neg) with average ranks for tied scores; None when
    either side is empty."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = float(average_ranks(score)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # first index of each run of equals
    ends = np.r_[starts[1:], x.size]
    run_rank = (starts + 1 + ends) / 2  # mean of ranks starts+1 … ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
