import numpy as np
import pytest
import torch

from detox import metrics


def test_ca_asr_pa():
    pred = torch.tensor([0, 0, 1, 2, 0])
    y_true = torch.tensor([1, 2, 1, 0, 0])
    y_target = torch.zeros(5, dtype=torch.long)
    # images 3 and 4 are of the target class: excluded from ASR and PA
    assert metrics.attack_success_rate(pred, y_target, y_true) == pytest.approx(2 / 3)
    assert metrics.poisoned_accuracy(pred, y_true, y_target) == pytest.approx(1 / 3)
    assert metrics.clean_accuracy(pred, y_true) == pytest.approx(0.4)


def test_detection_metrics_exact():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])
    poison = np.array([1, 1, 0, 0, 0, 1], bool)
    removed = scores >= 0.7
    d = metrics.detection_metrics(scores, poison, removed)
    assert d["tpr"] == pytest.approx(2 / 3)
    assert d["fpr"] == pytest.approx(1 / 3)
    assert d["precision"] == pytest.approx(2 / 3)
    # AUROC: pairs (poison, clean) ranked correctly: 0.9,0.8 beat all 3; 0.3 beats 0.1,0.2
    assert d["auroc"] == pytest.approx(8 / 9)
    assert 0 < d["auprc"] <= 1


def test_per_class_removal():
    r = metrics.per_class_removal([1, 0, 1, 1], [0, 0, 1, 2], 4)
    assert r[:3] == [0.5, 1.0, 1.0] and np.isnan(r[3])
