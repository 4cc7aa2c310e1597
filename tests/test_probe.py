"""probe.py: the EVAR linear probe against hand computations: separable and shuffled data, the scaler, early
stopping, seeds, the CI, and the validation carved out of a training set."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import probe


def blobs(n_per_class, n_classes=4, dim=8, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_probe_separable_reaches_about_100_percent():
    X, y = blobs(60)
    Xt, yt = blobs(30, seed=0)[0][::2], blobs(30, seed=0)[1][::2]
    fitted = probe.fit_linear_probe(X[::2], y[::2], X[1::2], y[1::2], 4, lr=1e-2, epochs=50, seed=0)
    assert fitted.accuracy(Xt, yt) >= 0.99
    assert fitted.accuracy(X, y) >= 0.99


def test_probe_shuffled_labels_is_about_chance():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 8)).astype(np.float32)
    y = rng.permutation(np.arange(1200) % 4)
    fitted = probe.fit_linear_probe(X[:600], y[:600], X[600:800], y[600:800], 4, lr=1e-2, seed=0)
    assert abs(fitted.accuracy(X[800:], y[800:]) - 0.25) < 0.08


def test_standard_scaler_matches_hand_computation():
    X = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    scaler = probe.StandardScaler.fit(X)
    np.testing.assert_allclose(scaler.mean, [3.0, 5.0])
    np.testing.assert_allclose(scaler.transform(X)[:, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    np.testing.assert_array_equal(scaler.transform(X)[:, 1], 0.0)  # constant feature: scale 1, not inf


def test_early_stopping_restores_best_and_later_ties_win():
    model = nn.Linear(1, 1)
    stopper = probe.EarlyStopping(patience=2)
    accs = [0.5, 0.7, 0.6, 0.7, 0.65, 0.6, 0.9]
    stopped_at = None
    for epoch, acc in enumerate(accs):
        with torch.no_grad():
            model.weight.fill_(epoch)
        if stopper.update(epoch, acc, model):
            stopped_at = epoch
            break
    assert stopper.best_epoch == 3  # 0.7 at epoch 3 ties epoch 1; the later one wins
    assert stopper.best_state["weight"].item() == 3.0
    assert stopped_at == 5  # the 2nd epoch in a row below the best (general-learning EarlyStopping)


def test_fit_restores_best_epoch_weights():
    X, y = blobs(40, spread=2.5, seed=3)  # overlapping classes: validation accuracy moves around
    fitted = probe.fit_linear_probe(X[::2], y[::2], X[1::2], y[1::2], 4, lr=3e-2, epochs=60, patience=5, seed=0)
    valid_accs = [h["valid_acc"] for h in fitted.history]
    best = max(valid_accs)
    assert fitted.best_epoch == max(i for i, a in enumerate(valid_accs) if a == best)
    assert fitted.accuracy(X[1::2], y[1::2]) == pytest.approx(best)
    if len(valid_accs) < 60:  # stopped early: exactly `patience` epochs after the best
        assert len(valid_accs) == fitted.best_epoch + 5 + 1


def test_probe_is_reproducible_for_a_seed():
    X, y = blobs(30, spread=2.0)
    a = probe.fit_linear_probe(X[::2], y[::2], X[1::2], y[1::2], 4, epochs=20, seed=7)
    b = probe.fit_linear_probe(X[::2], y[::2], X[1::2], y[1::2], 4, epochs=20, seed=7)
    torch.testing.assert_close(a.linear.weight, b.linear.weight)


def test_mean_ci95_t_distribution():
    mean, half = probe.mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, 2) * sd 1 / sqrt(3)
    assert math.isnan(probe.mean_ci95([70.0])[1])


def test_split_accuracy_carves_a_validation_set_with_every_class():
    X, y = blobs(30)
    acc = probe.split_accuracy(X[::2], y[::2], X[1::2], y[1::2], 4, seed=0, lr=1e-2, epochs=50)
    assert acc >= 0.99
    mask = probe.carve_validation(np.repeat(np.arange(4), 10), 0.1, np.random.default_rng(0))
    assert mask.sum() == 4 and len(np.unique(np.repeat(np.arange(4), 10)[mask])) == 4  # ceil(10 %), all classes


def test_knn_accuracy_matches_a_hand_computation():
    """3 training items, k = 2, T = 0.5. Test item a = [1, 0]: cosines 1 (class 0), 0.6 (class 1), 0 (class 1):
    votes class 0: e^2 = 7.39 > class 1: e^1.2 = 3.32 -> 0. Test item b = [0, 1]: cosines 0 (class 0),
    0.8 (class 1), 1 (class 1) -> the two nearest are class 1 -> 1."""
    train_x = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.0, 3.0]])
    train_y = torch.tensor([0, 1, 1])
    test_x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert probe.knn_accuracy(train_x, train_y, test_x, torch.tensor([0, 1]), 2, k=2, temperature=0.5) == 1.0
    assert probe.knn_accuracy(train_x, train_y, test_x, torch.tensor([1, 1]), 2, k=2, temperature=0.5) == 0.5
    # k = 3, class 1 now has two voters for a: e^1.2 + e^0 = 4.32 < e^2 = 7.39, still class 0; a low temperature
    # makes the nearest neighbour decide, a huge one makes it a plain majority vote (class 1 for both)
    assert probe.knn_accuracy(train_x, train_y, test_x, torch.tensor([0, 1]), 2, k=3, temperature=0.5) == 1.0
    assert probe.knn_accuracy(train_x, train_y, test_x, torch.tensor([1, 1]), 2, k=3, temperature=1e6) == 1.0


def test_append_result_upgrades_a_file_written_before_the_newer_columns(tmp_path):
    import csv
    old = probe.RESULT_FIELDS[:-2]  # results.csv as linear_eval.py wrote it before best_epochs / not_converged
    path = tmp_path / "results.csv"
    path.write_text(",".join(old) + "\n" + ",".join(f"v{i}" for i in range(len(old))) + "\n")
    probe.append_result(path, {k: "new" for k in probe.RESULT_FIELDS})
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == probe.RESULT_FIELDS and rows[0]["task"] == "v1" and rows[0]["not_converged"] == ""
    assert rows[1]["not_converged"] == "new" and len(rows) == 2
