"""SCAn, the Statistical Contamination Analyzer (Tang, Wang, Zhang, Tang, "Demon in the
Variant: Statistical Analysis of DNNs for Robust Backdoor Contamination Detection", USENIX
Security 2021), as implemented by the backdoor-toolbox (github.com/vtu81/backdoor-toolbox,
``cleansers_tool_box/scan.py``) that PSBD's benchmark also runs.

Every penultimate-layer representation is modelled as ``r = mu_class + e``: an identity
vector per class, ``mu ~ N(0, S_u)``, plus a within-class variation ``e ~ N(0, S_e)``.

1. **Global model** (on the trusted clean probes): S_u and S_e by the authors' EM
   iteration (at most 100 rounds, until both covariances move by less than 1e-5).
2. **Local model** (every class of the training set, the probes appended as extra copies
   [code]): the class is split into two subgroups with different identities and the shared
   S_e (the iteration of ``find_split``: assign each example to the subgroup whose
   identity it is closer to in the metric F = S_e^+, until the split stops changing), and
   the test statistic J_k compares the split model with the single-identity one.
3. **Anomaly index**: ``|a_k - median(a)| / (1.4826 MAD(a))`` of ``a = J / max(J)``; a class
   above ``threshold`` (e [code]) is contaminated, and its subgroup holding fewer of the
   probes is the poison.

Score (for AUROC and the report) [open: SCAn gives verdicts]: the class's anomaly index
plus, within the class, a bounded margin of the example's membership in the suspected
subgroup (``llr / (1 + |llr|)`` of the linear discriminant ``find_split`` uses), so
classes rank by contamination and examples within a class by how clearly they sit in the
suspected subgroup. The cut (``cut = "scan"``) removes the suspected subgroups of the
flagged classes; ``cut = "fraction"``, the shared fraction cut.

Simplifications: the split's random initialisation is drawn from the run's seed; the
computations are vectorised (class sums instead of per-example loops; same arithmetic).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from detox.config import hp
from detox.data.base import ImageDataset
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext
from detox.errors import ConfigError
from detox.utils.seed import derive_seed

EPS = 1e-5


@dataclasses.dataclass
class ScanConfig:
    threshold: float = hp(float(np.e), "anomaly index", "[code: e]", range="(0, inf)")
    n_probes: int = hp(
        1000, "trusted clean images", "[open] the clean set of the global model", range="[2, inf)"
    )
    max_iters: int = hp(100, "EM / split rounds", "[code]", range="[1, inf)")
    cut: str = hp(
        "scan",
        "scan | fraction",
        "[code: the suspected subgroups of flagged classes]",
        choices=("scan", "fraction"),
    )
    remove_fraction: float = hp(0.15, "fraction", "[open] (cut = fraction)", range="[0, 1]")
    batch_size: int = hp(512, "images per forward pass", "[impl]", range="[1, inf)")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"n_probes": 200},
        "quick": {},
        "paper": {},
    }


def global_model(x: np.ndarray, labels: np.ndarray, n_classes: int, max_iters: int = 100):
    """(S_u, S_e) of the clean representations ``x`` (N, M) by the authors' EM."""
    x = x - x.mean(0)
    present = [k for k in range(n_classes) if (labels == k).any()]
    cnt = np.array([(labels == k).sum() for k in range(n_classes)], dtype=np.float64)
    sums = np.stack([x[labels == k].sum(0) for k in range(n_classes)])  # (L, M)
    mean_f = sums / np.maximum(cnt, 1)[:, None]
    u = mean_f[labels]
    su, se = np.cov(u.T), np.cov((x - u).T)
    for _ in range(max_iters):
        f = np.linalg.pinv(se)
        suf = su @ f
        u_m = np.zeros_like(mean_f)
        for k in present:  # u_m[k] = -sum_i Se G_k x_i, G_k = -(n_k Su + Se)^+ Su F
            g = -np.linalg.pinv(cnt[k] * su + se) @ suf
            u_m[k] = -(se @ g @ sums[k])
        u = u_m[labels]
        new_su, new_se = np.cov(u.T), np.cov((x - u).T)
        dist = np.linalg.norm(new_su - su) + np.linalg.norm(new_se - se)
        su, se = new_su, new_se
        if dist <= EPS:
            break
    return su, se


def find_split(x: np.ndarray, f: np.ndarray, rng: np.random.Generator, max_iters: int = 100):
    """Two-subgroup split of one class's centred representations: (subgroup 0/1, u1, u2)."""
    n = len(x)
    z = (rng.random(n) >= 0.5).astype(np.float64)
    if n == 1:
        return np.zeros(1), x[0].copy(), x[0].copy()
    if z.sum() == 0:
        z[0] = 1
    if z.sum() == n:
        z[0] = 0
    u1 = u2 = x.mean(0)
    last = -np.ones(n)
    for _ in range(max_iters):
        if np.linalg.norm(z - last) <= EPS or np.linalg.norm((1 - z) - last) <= EPS:
            break
        last = z.copy()
        i1, i2 = z >= 0.5, z < 0.5
        if not i1.any() or not i2.any():
            break
        u1, u2 = x[i1].mean(0), x[i2].mean(0)
        bias = u1 @ f @ u1 - u2 @ f @ u2
        delta = x @ f @ (u1 - u2)
        z = (bias - 2 * delta < 0).astype(np.float64)
    return z, u1, u2


def split_statistic(x, su, se, f, z, u1, u2) -> float:
    """The authors' ``calc_test``: J of one class's split (x centred, (N, M))."""
    n = len(x)
    mu = se @ np.linalg.pinv(n * su + se) @ x.sum(0)
    b1 = mu @ f @ mu - u1 @ f @ u1
    b2 = mu @ f @ mu - u2 @ f @ u2
    n1 = float((z >= 0.5).sum())
    sc = n1 * b1 + (n - n1) * b2
    e2 = np.where((z >= 0.5)[:, None], mu - u1, mu - u2)
    sc -= 2 * np.einsum("ij,jk,ik->", x, f, e2)
    return float(sc / n)


def anomaly_index(a: np.ndarray) -> np.ndarray:
    b = np.abs(a - np.median(a))
    return b / (np.median(b) * 1.4826)


@DETECTORS.register("scan")
class SCAn(Detector):
    """SCAn (Tang et al. 2021): see the module docstring. ``score`` fills
    ``ctx.artifacts["scan"]`` with J and the anomaly index per class, the flagged classes
    and the suspected examples."""

    name = "scan"
    Config = ScanConfig
    config: ScanConfig
    needs_model = True
    needs_probes = True

    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        from detox.defenses.features import penultimate_features

        cfg = self.config
        model = ctx.require_model(self.name)
        trusted = ctx.require_trusted(self.name)
        feats = penultimate_features(model, data.x, ctx.device, cfg.batch_size).double().numpy()
        clean = penultimate_features(model, trusted.x, ctx.device, cfg.batch_size)
        clean = clean.double().numpy()
        y, yc = data.y.numpy(), trusted.y.numpy()
        n_classes = int(max(y.max(initial=0), yc.max(initial=0))) + 1
        su, se = global_model(clean, yc, n_classes, cfg.max_iters)
        f = np.linalg.pinv(se)
        allx = np.concatenate([feats, clean])
        ally = np.concatenate([y, yc])
        allx = allx - allx.mean(0)
        rng = np.random.default_rng(derive_seed(ctx.seed, "scan"))
        j = np.zeros(n_classes)
        splits: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for k in range(n_classes):
            idx = np.flatnonzero(ally == k)
            if len(idx) == 0:
                continue
            z, u1, u2 = find_split(allx[idx], f, rng, cfg.max_iters)
            j[k] = split_statistic(allx[idx], su, se, f, z, u1, u2)
            splits[k] = (idx, z, u1, u2)
        if np.max(j) <= 0:
            raise ConfigError("SCAn: every class's test statistic is <= 0; nothing to rank")
        ai = anomaly_index(j / np.max(j))
        n = len(feats)
        scores = np.zeros(n)
        suspected = np.zeros(n, dtype=bool)
        flagged = []
        for k, (idx, z, u1, u2) in splits.items():
            is_probe = idx >= n
            # the subgroup holding fewer probes is the suspect (the code's rule)
            sus = 0.0 if (z[is_probe] < 0.5).sum() < (z[is_probe] >= 0.5).sum() else 1.0
            us, uc = (u1, u2) if sus == 1.0 else (u2, u1)
            llr = 2 * allx[idx] @ f @ (us - uc) - (us @ f @ us - uc @ f @ uc)
            mine = ~is_probe
            scores[idx[mine]] = ai[k] + llr[mine] / (1 + np.abs(llr[mine]))
            if ai[k] > cfg.threshold:
                flagged.append(k)
                suspected[idx[mine & ((z >= 0.5) == (sus == 1.0))]] = True
        ctx.artifacts["scan"] = {
            "J": j,
            "anomaly_index": ai,
            "flagged_classes": flagged,
            "suspected": suspected,
        }
        return scores

    def own_cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The code's cut: the suspected subgroups of the flagged classes."""
        info = ctx.artifacts.get("scan")
        if info is None:
            raise ConfigError("SCAn: cut() needs the verdicts that score() records")
        return np.asarray(info["suspected"], dtype=bool)
