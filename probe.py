"""The linear probe: EVAR's (nttcslab/eval-audio-repr lineareval.py + general-learning TorchMLPClassifier2;
EVAR code), the one probe of the package. linear_eval.py runs it per task and fold, pretrain_clar.py at the end
of a run, synthetic.py --check on hand-crafted features.

    probe = fit_linear_probe(X_train, y_train, X_valid, y_valid, n_classes)   # early-stopped on X_valid
    acc = probe.accuracy(X_test, y_test)
    acc = split_accuracy(X_train, y_train, X_test, y_test, n_classes)        # validation carved out of train
    append_result("results/results.csv", row)                                # one row per evaluation
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats

from files import append_text, atomic_write_text, remove_stale_temps

# The results CSV: one row per evaluation (linear_eval.py, synthetic.py --check), read by results/make_tables.py.
RESULT_FIELDS = ["date", "task", "model", "ckpt_sha256", "config", "long", "pool", "label_fraction", "shots",
                 "seeds", "folds", "fold_acc", "mean", "ci95", "n", "unit_seconds", "lr", "n_train", "commit",
                 "best_epochs", "not_converged"]


@dataclass
class StandardScaler:
    """Per-feature (x - mean) / std with the population std; constant features keep scale 1 (sklearn)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> StandardScaler:
        X = np.asarray(X, dtype=np.float64)
        std = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(std < 10 * np.finfo(np.float64).eps, 1.0, std))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)


class EarlyStopping:
    """general-learning EarlyStopping (EVAR code): keep the weights of the best validation accuracy, ties to the
    later epoch (`>=`); stop once `patience` epochs in a row have not reached the best (never if patience <= 0).
    """

    def __init__(self, patience: int):
        self.patience, self.best_acc, self.best_epoch, self.best_state, self.wait = patience, 0.0, -1, None, 0

    def update(self, epoch: int, acc: float, model: nn.Module) -> bool:
        """Record epoch's validation accuracy; True when training should stop."""
        if acc >= self.best_acc:
            self.best_acc, self.best_epoch, self.wait = acc, epoch, 1
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        stop = self.patience > 0 and self.wait >= self.patience
        self.wait += 1
        return stop


@dataclass
class LinearProbe:
    """A fitted probe: scaler + linear layer (best epoch restored) and its per-epoch history."""

    scaler: StandardScaler | None
    linear: nn.Linear
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    @torch.no_grad()
    def predict(self, X: np.ndarray) -> np.ndarray:
        X = self.scaler.transform(X) if self.scaler is not None else np.asarray(X, dtype=np.float32)
        device = self.linear.weight.device
        return self.linear(torch.from_numpy(X).to(device)).argmax(-1).cpu().numpy()

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())


def fit_linear_probe(X_train: np.ndarray, y_train: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray,
                     n_classes: int, *, lr: float = 3e-4, weight_decay: float = 1e-8, epochs: int = 200,
                     patience: int = 20, batch_size: int = 200, seed: int = 0, standard_scaler: bool = True,
                     scaler_data: np.ndarray | None = None, device: str | torch.device = "cpu") -> LinearProbe:
    """Train EVAR's linear probe on embeddings X [N, D] with labels y [N] in 0..n_classes-1.

    StandardScaler fitted on `scaler_data` (default X_train); nn.Linear(D, C) with torch's default init;
    Adam(lr, betas (0.9, 0.999), eps 1e-8, weight_decay); loss -mean(onehot * log_softmax) = CE / C;
    shuffled batches of min(batch_size, N), last one kept; validation accuracy every epoch; EarlyStopping.
    """
    scaler = StandardScaler.fit(X_train if scaler_data is None else scaler_data) if standard_scaler else None
    prep = scaler.transform if scaler else (lambda X: np.asarray(X, dtype=np.float32))
    x_tr = torch.from_numpy(prep(X_train)).to(device)
    y_tr = torch.as_tensor(np.asarray(y_train), dtype=torch.long, device=device)
    x_va = torch.from_numpy(prep(X_valid)).to(device)
    y_va = torch.as_tensor(np.asarray(y_valid), dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(x_tr.shape[1], n_classes).to(device)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=weight_decay)
    n, bs = len(x_tr), min(batch_size, len(x_tr))
    stopper, history = EarlyStopping(patience), []
    for epoch in range(epochs):
        linear.train()
        order, total = torch.randperm(n, generator=generator).to(device), 0.0
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            loss = F.cross_entropy(linear(x_tr[idx]), y_tr[idx]) / n_classes
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        linear.eval()
        with torch.no_grad():
            valid_acc = (linear(x_va).argmax(-1) == y_va).float().mean().item()
        history.append({"epoch": epoch, "loss": total / n, "valid_acc": valid_acc})
        if stopper.update(epoch, valid_acc, linear):
            break
    linear.load_state_dict(stopper.best_state)
    linear.eval()
    return LinearProbe(scaler, linear, stopper.best_epoch, history)


def mean_ci95(values) -> tuple[float, float]:
    """Mean and the half-width of the t-distribution 95 % confidence interval (nan for one value)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def carve_validation(y: np.ndarray, fraction: float, rng: np.random.Generator, attempts: int = 100) -> np.ndarray:
    """Boolean mask of a random `fraction` (rounded up) of the items, redrawn until it holds every class
    (general-learning train_test_sure_split); a stratified draw if 100 random ones fail."""
    n, classes = len(y), np.unique(y)
    n_valid = min(max(math.ceil(fraction * n), len(classes)), n - 1)
    for _ in range(attempts):
        chosen = rng.permutation(n)[:n_valid]
        if len(np.unique(y[chosen])) == len(classes):
            mask = np.zeros(n, dtype=bool)
            mask[chosen] = True
            return mask
    mask = np.zeros(n, dtype=bool)
    first = [rng.choice(np.flatnonzero(y == c)) for c in classes]
    mask[first] = True
    rest = rng.permutation(np.flatnonzero(~mask))[:max(n_valid - len(first), 0)]
    mask[rest] = True
    return mask


def split_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                   n_classes: int, seed: int = 0, valid_fraction: float = 0.1, **probe_args) -> float:
    """Test accuracy (0-1) of the EVAR probe when there is no validation split: a random `valid_fraction` of
    the training items holding every class is held out for early stopping (carve_validation), the scaler
    is fitted on the whole training set, as linear_eval.py does for cross-validation tasks."""
    y_train = np.asarray(y_train)
    valid = carve_validation(y_train, valid_fraction, np.random.default_rng(seed))
    probe = fit_linear_probe(X_train[~valid], y_train[~valid], X_train[valid], y_train[valid], n_classes,
                             seed=seed, scaler_data=X_train, **probe_args)
    return probe.accuracy(X_test, y_test)


def append_result(path: str | os.PathLike, row: dict) -> None:
    """Append `row` to the results CSV (created with a header). A file written before newer columns existed (its
    header a prefix of RESULT_FIELDS) gets them, empty, first; any other header is an error."""
    path = Path(path)
    text = io.StringIO()
    writer = csv.DictWriter(text, RESULT_FIELDS)
    if path.parent.is_dir():
        remove_stale_temps(path.parent)  # of a killed earlier run
    if not path.is_file() or path.stat().st_size == 0:
        writer.writeheader()
        writer.writerow(row)
        atomic_write_text(text.getvalue(), path)
        return
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if header != RESULT_FIELDS:
        if header != RESULT_FIELDS[:len(header)]:
            raise ValueError(f"{path}: header {header} differs from {RESULT_FIELDS}; move the old file aside")
        with open(path, newline="") as f:
            old_rows = list(csv.DictReader(f))
        upgraded = io.StringIO()
        csv.DictWriter(upgraded, RESULT_FIELDS, restval="").writeheader()
        csv.DictWriter(upgraded, RESULT_FIELDS, restval="").writerows(old_rows)
        atomic_write_text(upgraded.getvalue(), path)
    writer.writerow(row)
    append_text(text.getvalue(), path)  # one small O_APPEND write; a full disk leaves no half row


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 n_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    """DINO's weighted k-NN classifier (Caron et al. 2021, eval_knn.py): cosine similarity of L2-normalised
    embeddings, the k most similar training items vote for their class with weight exp(similarity / T); the
    accuracy (0-1) of the arg-max class on the test items. Cheap enough to run during pretraining."""
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    similarity, neighbours = (test_x @ train_x.T).topk(min(k, len(train_x)), dim=1)
    votes = torch.zeros(len(test_x), n_classes, dtype=torch.float32)
    votes.scatter_add_(1, train_y[neighbours].long(), (similarity / temperature).exp())
    return (votes.argmax(1) == test_y.long()).float().mean().item()
