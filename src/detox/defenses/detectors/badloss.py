"""BaDLoss: backdoor detection via loss dynamics, for simultaneous attacks.

Alex, Siddiqui, Sanyal, Krueger, "Protecting against simultaneous data poisoning attacks",
ICLR 2025 (arXiv 2408.13221). Authors' code: github.com/shoaibahmed/badloss
(``defenses/badloss.py``). Tags below: **[paper]** stated in the paper, **[code]** taken
from the authors' code, **[open]** left open by both (our choice, or an option beyond the
paper; every such option is off by default and measured against the fixed 40% cut).

Procedure (METHODS.md section 3):

1. The defender holds ``n_probes`` = 250 bona fide clean examples of the training set
   (:func:`select_probes`); they are **added as extra copies**, so the model pre-trains on
   all N examples + the P probe copies [paper].
2. A fresh model (architecture, optimiser and LR schedule of the final run; the schedule
   spans the final run's full epoch count, so it decays only a little in pre-training) is
   trained for ``pretrain_epochs`` = 30 epochs **without augmentation** [code].
3. After each epoch every example's cross-entropy loss is recorded in eval mode without
   augmentation (:class:`LossRecorder`): an (N + P) x E float32 trajectory matrix [code].
4. Epoch filter (:func:`filter_epochs`): epochs 0-2 are kept; epoch i >= 3 is kept only if
   its mean loss is below 2 x the mean of the last three *kept* epoch means [code].
5. Each example's score is its mean Euclidean distance d to the k = 50 nearest probe
   trajectories (:func:`knn_mean_distance`, chunked on the device, never N x N);
   score = log(0.01 + d), min-max normalised to [0, 1] [code].
6. The cut removes the 40% highest-scoring examples; probes are always kept
   (:meth:`BaDLoss.cut`) [paper]. The caller retrains from scratch on the rest.

Decisions where paper and code are silent or differ:

* **Probe self-distance** [code]: the authors fit the k-NN on the probe copies and query
  every row, so a probe's own copy (an identical trajectory) is one of its neighbours at
  distance 0. We do the same by default; ``exclude_self=True`` drops the own copy (a
  leave-one-out score). Probes are never removed, so this only moves the probes' own
  scores: by about 1/k (their mean over k includes one zero). It matters for the adaptive
  ``cut="probe-quantile"``, whose threshold is a quantile of the probes' scores; with
  ``exclude_self=False`` that threshold is slightly low (the cut removes slightly more).
* **Epoch filter** [code]: the reference is the mean of the last ``filter_window`` kept
  epoch means, the first ``filter_keep_first`` epochs are always kept, the comparison is
  strict (<), and means are over all N + P recorded rows, as in the authors' code. One
  deviation: an epoch whose mean loss is not finite (a diverged run) is never kept, even
  among the first three (the authors' code would produce NaN scores there).
* **Normalisation**: min-max over the N original examples (the probe copies repeat the
  probes' trajectories, so including them changes nothing).
* **Cut size**: exactly round(0.4 N) non-probe examples (:func:`~detox.defenses.cut.cut_fraction`
  with ``protected`` = probes). The authors threshold ranks over N + P rows and then
  force-keep the probes, which removes about the same number.
* **Training recipe** [code]: ``optimizer_preset`` names the pre-training recipe.
  ``"sgd"`` (the default and the ``paper`` preset) is the ICLR-era script: SGD lr 0.1,
  momentum 0.9, weight decay 1e-4, batch 128, no label smoothing, a cosine schedule over
  the final run's epochs (``schedule_epochs`` None), so that 30 of 100 epochs end at 79%
  of the peak LR. ``"adamw"`` is the later code: AdamW lr 1e-3, weight decay 1e-4, batch
  128 (the later code uses 256 on GTSRB and Imagenette: set ``batch_size=256``), cosine.
  ``"final"`` pre-trains with the final run's :class:`~detox.training.TrainConfig` as
  given (detox's one-cycle ``quick`` recipe with label smoothing: it changes the very
  trajectories the method reads; kept to compare). The architecture always comes from
  the final run (the authors' ResNet-50 is the ``paper`` victim's choice).
* **The ``quick`` preset** keeps the authors' SGD recipe and changes two things for a
  2-core CPU: 10 pre-training epochs instead of 30, and the cosine spans 33 epochs
  (``schedule_epochs``) instead of the final run's, so the LR at the last recorded epoch
  is 79% of the peak as in the paper's 30 of 100 epochs (the quick final run has only 9
  epochs: spanning those would anneal the LR to zero inside the recording window and
  flatten every trajectory). The model is the quick victim's ResNet-18 (width 16).
* Eval-mode losses come from :func:`detox.training.per_example_loss` (bf16 autocast on
  CUDA, float32 on CPUs without bf16 units).

Options beyond the paper (default off): ``cut="probe-quantile"`` (reject what scores above
the probes' own ``probe_quantile``; reviewers asked for an adaptive threshold),
``class_balanced_probes`` (protect minority classes; the authors' suggestion in the
rebuttal), :func:`auroc_by_epochs` (AUROC when only the first e epochs are used), and
``trajectory_space="log-loss"``: the k-NN distances are measured between
``log(loss_floor + loss)`` trajectories instead of the losses themselves. The authors'
distance in loss units cannot see a poison that the pre-training model fits *faster*
than clean data: a trajectory of losses near 0 from the first epoch lies in the densest
region of the probes (the easy clean examples), so it scores below the clean data. That
is what AirNet (the ``quick`` victim, whose whitened first layer fits global
high-frequency triggers within one epoch) does to Blend-Random and Frequency; the
paper's ResNet-50 and detox's former ResNet-18 fit dirty-label poisons *slower* than
clean data, which the loss space does see. In log space a loss of 1e-3 is as far from
1e-1 as 1e-1 is from 10. Measured on the demo's suite (AirNet at half width, 4
pre-training epochs; docs/results.md, "BaDLoss in log-loss space"): overall AUROC
0.361 -> 0.806, Blend-Random 0.053 -> 0.832, Frequency 0.088 -> 0.711, Patch 0.298 ->
0.914. Off by default (the authors' loss space is the reference); ``detox demo`` turns
it on.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from typing import Any

import numpy as np
import torch

from detox.config import hp, make_config
from detox.defenses.cut import cut_fraction, cut_threshold
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext, dataset_name
from detox.defenses.probes import select_probes
from detox.errors import ConfigError
from detox.training import TrainConfig, per_example_loss, train
from detox.utils.device import resolve_device
from detox.utils.seed import derive_seed

CUT_MODES = ("fraction", "probe-quantile")
TRAJECTORY_SPACES = ("loss", "log-loss")

# Optimiser presets of the authors' scripts (batch size and model stay the final run's).
#: The authors' scripts are plain loops: none of the final run's own training tricks
#: (airbench's Lookahead, BatchNorm-bias learning rate, alternating flips, dropped last
#: batch) carry over into their recipes.
PLAIN_LOOP: dict[str, Any] = {
    "norm_bias_lr_scale": 1.0,
    "lookahead": False,
    "alternate_flip": False,
    "drop_last": False,
}

OPTIMIZER_PRESETS: dict[str, dict[str, Any]] = {
    "final": {},  # the final run's optimiser and schedule as given
    "sgd": {  # ICLR-era script [code]
        "optimizer": "sgd",
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "schedule": "cosine",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.0,
        **PLAIN_LOOP,
    },
    "adamw": {  # later code [code] (batch 128 on CIFAR-10, 256 on the other datasets)
        "optimizer": "adamw",
        "batch_size": 128,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "schedule": "cosine",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.0,
        **PLAIN_LOOP,
    },
}


@dataclasses.dataclass
class BaDLossConfig:
    """BaDLoss hyper-parameters (unit, source). See the module docstring."""

    n_probes: int = hp(
        250,
        "examples",
        "[paper]",
        "bona fide clean probes, added as extra copies",
        range="[1, inf)",
    )
    class_balanced_probes: bool = hp(False, "", "[open, rebuttal]", "draw probes evenly per class")
    pretrain_epochs: int = hp(
        30, "epochs", "[paper]", "pre-training epochs recorded", range="[1, inf)"
    )
    pretrain_augment: bool = hp(False, "", "[code: off]", "crop/flip during pre-training")
    optimizer_preset: str = hp(
        "sgd",
        "sgd | adamw | final",
        "[code: sgd]",
        "pre-training recipe",
        choices=tuple(OPTIMIZER_PRESETS),
    )
    schedule_epochs: int | None = hp(
        None,
        "epochs",
        "[code]",
        "epochs the pre-training LR schedule spans; None = the final run's",
        range="[1, inf)",
    )
    batch_size: int | None = hp(
        None,
        "images",
        help="pre-training batch; None = the recipe's (final: the run's)",
        range="[1, inf)",
    )
    k: int = hp(
        50, "neighbours", "[paper]", "nearest probe trajectories averaged", range="[1, inf)"
    )
    eps: float = hp(
        0.01, "loss units", "[code]", "offset of the score log(eps + d)", range="(0, inf)"
    )
    trajectory_space: str = hp(
        "loss",
        "loss | log-loss",
        "[code: loss]",
        "space of the k-NN distances: the losses, or log(loss_floor + loss)",
        choices=TRAJECTORY_SPACES,
    )
    loss_floor: float = hp(
        1e-4,
        "loss units",
        "[open]",
        "offset of log(loss_floor + loss) in the log-loss space",
        range="(0, inf)",
    )
    log_scores: bool = hp(True, "", "[code]", "log(eps + d) before min-max (False: d)")
    epoch_filter: bool = hp(True, "", "[code]", "drop loss-spike epochs")
    filter_keep_first: int = hp(
        3, "epochs", "[code]", "epochs always kept by the filter", range="[1, inf)"
    )
    filter_factor: float = hp(
        2.0, "ratio", "[code]", "keep an epoch if mean < factor x reference", range="(0, inf)"
    )
    filter_window: int = hp(
        3, "epochs", "[code]", "reference = mean of the last this many kept means", range="[1, inf)"
    )
    exclude_self: bool = hp(
        False, "", "[open; code: no]", "drop a probe's own copy from its neighbours"
    )
    remove_fraction: float = hp(
        0.4, "fraction", "[paper]", "removed fraction of the whole set, probes kept", range="[0, 1]"
    )
    cut: str = hp(
        "fraction",
        "fraction | probe-quantile",
        "[open]",
        "probe-quantile: adaptive",
        choices=CUT_MODES,
    )
    probe_quantile: float = hp(
        0.95,
        "quantile",
        "[open]",
        "probe-quantile cut: remove scores above it",
        range="[0, 1]",
    )
    knn_chunk: int = hp(
        16384, "rows", "[impl]", "query rows per k-NN chunk on the device", range="[1, inf)"
    )

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"n_probes": 50, "pretrain_epochs": 3, "k": 10},
        # the authors' SGD recipe, 10 epochs; the cosine spans 33 so the LR ends where the
        # paper's 30-of-100 does (module docstring)
        "quick": {"pretrain_epochs": 10, "schedule_epochs": 33},
        "paper": {"optimizer_preset": "sgd"},
    }

    def validate(self) -> None:
        """Checks across fields (each field's range and choices: ``hp``)."""
        if self.k > self.n_probes - int(self.exclude_self):
            raise ConfigError(
                f"k={self.k}: expected 1 <= k <= n_probes{' - 1' if self.exclude_self else ''}"
                f" = {self.n_probes - int(self.exclude_self)}"
            )
        if self.schedule_epochs is not None and self.schedule_epochs < self.pretrain_epochs:
            raise ConfigError(
                f"schedule_epochs={self.schedule_epochs}: expected >= pretrain_epochs "
                f"({self.pretrain_epochs})"
            )


# ---------------------------------------------------------------------------------------
# probes


def probe_mask(n: int, probes: Any) -> np.ndarray:
    """Boolean mask of length ``n``, true at the probe indices (checked: unique, in range)."""
    p = _probe_indices(probes, n)
    m = np.zeros(n, bool)
    m[p] = True
    return m


def _probe_indices(probes: Any, n: int) -> np.ndarray:
    if isinstance(probes, DetectorContext):
        probes = probes.probes
    if probes is None:
        raise ConfigError(
            "BaDLoss needs trusted clean probes: set DetectorContext.probes "
            "(see detox.defenses.detectors.badloss.select_probes)"
        )
    p = probes.cpu().numpy() if isinstance(probes, torch.Tensor) else np.asarray(probes)
    if p.dtype == bool:
        if len(p) != n:
            raise ConfigError(f"probe mask has {len(p)} entries, the data {n}")
        return np.flatnonzero(p)
    p = p.astype(np.int64).ravel()
    if len(p) == 0:
        raise ConfigError("BaDLoss needs at least one probe")
    if p.min() < 0 or p.max() >= n:
        raise ConfigError(f"probe indices must lie in [0, {n})")
    if len(np.unique(p)) != len(p):
        raise ConfigError("probe indices must be unique")
    return p


# ---------------------------------------------------------------------------------------
# loss trajectories


class LossRecorder:
    """Training callback: eval-mode cross-entropy of every example after each epoch.

    ``traj`` is an (N, epochs) float32 CPU tensor (NaN until an epoch is recorded);
    ``seconds`` the time spent recording.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int = 1024):
        self.x, self.y = x, y.cpu()
        self.batch_size = batch_size
        self.traj = torch.full((len(x), epochs), float("nan"), dtype=torch.float32)
        self.seconds = 0.0

    def on_epoch_end(self, epoch: int, model: torch.nn.Module) -> None:
        t0 = time.perf_counter()
        self.traj[:, epoch] = per_example_loss(model, self.x, self.y, self.batch_size)
        self.seconds += time.perf_counter() - t0


def filter_epochs(
    traj: Any, keep_first: int = 3, factor: float = 2.0, window: int = 3
) -> list[int]:
    """Epochs kept by the authors' loss-spike filter [code].

    Epochs ``0 .. keep_first-1`` are kept; a later epoch is kept only if its mean loss
    (over all rows of ``traj``, shape (rows, epochs)) is strictly below ``factor`` x the
    mean of the last ``window`` kept epoch means. Epochs with a non-finite mean are never
    kept. The filter is causal: the decision for epoch i uses epochs < i only.
    """
    t = traj.detach().cpu().numpy() if isinstance(traj, torch.Tensor) else np.asarray(traj)
    means = t.mean(axis=0, dtype=np.float64)
    kept: list[int] = []
    ref: list[float] = []
    for i, m in enumerate(means):
        if not np.isfinite(m):
            continue
        if i < keep_first or not ref or m < factor * float(np.mean(ref[-window:])):
            kept.append(i)
            ref.append(float(m))
    return kept


def knn_mean_distance(
    queries: Any,
    refs: Any,
    k: int,
    *,
    chunk_size: int = 16384,
    device: str | torch.device | None = None,
    exclude: Any | None = None,
) -> np.ndarray:
    """Mean Euclidean distance from each query row to its ``k`` nearest ``refs`` rows.

    Computed in chunks of ``chunk_size`` query rows on ``device`` (``torch.cdist`` of the
    chunk against all refs, then ``topk``): memory is chunk x refs, never queries x
    queries. ``exclude`` (one ref index per query, -1 = none) drops that reference from
    the query's candidates (a probe's own copy). float64 on CPU, float32 elsewhere;
    returns float64 (queries,).
    """
    q = torch.as_tensor(np.asarray(queries) if not isinstance(queries, torch.Tensor) else queries)
    r = torch.as_tensor(np.asarray(refs) if not isinstance(refs, torch.Tensor) else refs)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ConfigError(
            f"k-NN: expected (M, D) and (P, D), got {tuple(q.shape)} and {tuple(r.shape)}"
        )
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    ex = None
    if exclude is not None:
        ex = torch.as_tensor(np.asarray(exclude), dtype=torch.int64).ravel()
        if len(ex) != len(q):
            raise ConfigError(f"k-NN: exclude has {len(ex)} entries, queries {len(q)}")
    available = len(r) - (1 if ex is not None and bool((ex >= 0).any()) else 0)
    if not 1 <= k <= available:
        raise ConfigError(f"k-NN: k={k} but only {available} reference rows are available")
    if chunk_size < 1:
        raise ConfigError(f"k-NN: chunk_size={chunk_size}: expected >= 1")
    r_dev = r.to(dev, dtype)
    out = np.empty(len(q), dtype=np.float64)
    for s in range(0, len(q), chunk_size):
        e = min(s + chunk_size, len(q))
        d = torch.cdist(q[s:e].to(dev, dtype), r_dev, compute_mode="donot_use_mm_for_euclid_dist")
        if ex is not None:
            exc = ex[s:e].to(dev)
            rows = torch.nonzero(exc >= 0).flatten()
            d[rows, exc[rows]] = float("inf")
        top = torch.topk(d, k, dim=1, largest=False, sorted=False).values
        out[s:e] = top.mean(dim=1).double().cpu().numpy()
    return out


def scores_from_distances(d: Any, eps: float = 0.01, log_scores: bool = True) -> np.ndarray:
    """``log(eps + d)`` (or ``d``), min-max normalised to [0, 1] (all zero if constant)."""
    s = np.asarray(d, dtype=np.float64)
    s = np.log(eps + s) if log_scores else s.copy()
    s -= s.min() if len(s) else 0.0
    top = s.max() if len(s) else 0.0
    if top > 0:
        s /= top
    return s


def log_losses(traj: torch.Tensor, floor: float) -> torch.Tensor:
    """``log(floor + max(loss, 0))`` in float64 (eval-mode cross-entropy can round to -0)."""
    return torch.log(traj.double().clamp_min(0.0) + floor)


def trajectory_scores(
    traj: Any,
    probe_traj: Any,
    config: BaDLossConfig | None = None,
    *,
    kept_epochs: list[int] | None = None,
    exclude: Any | None = None,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and mean k-NN distances of trajectories ``traj`` (N, E) against the probe
    trajectories ``probe_traj`` (P, E), using epochs ``kept_epochs`` (all when None)."""
    cfg = config or BaDLossConfig()
    t = torch.as_tensor(np.asarray(traj) if not isinstance(traj, torch.Tensor) else traj)
    p = torch.as_tensor(
        np.asarray(probe_traj) if not isinstance(probe_traj, torch.Tensor) else probe_traj
    )
    if kept_epochs is not None:
        cols = torch.as_tensor(list(kept_epochs), dtype=torch.int64)
        t, p = t[:, cols], p[:, cols]
    if cfg.trajectory_space == "log-loss":
        t, p = log_losses(t, cfg.loss_floor), log_losses(p, cfg.loss_floor)
    d = knn_mean_distance(t, p, cfg.k, chunk_size=cfg.knn_chunk, device=device, exclude=exclude)
    return scores_from_distances(d, cfg.eps, cfg.log_scores), d


def auroc_by_epochs(
    traj: Any,
    probes: Any,
    is_poison: Any,
    config: BaDLossConfig | None = None,
    *,
    kept_epochs: list[int] | None = None,
    include_probes: bool = False,
    device: str | torch.device | None = None,
    groups: dict[str, Any] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """AUROC of the BaDLoss score when only the first e epochs are used, e = 1..E.

    ``traj`` (N, E) are the trajectories of the N examples, ``probes`` their probe indices
    or mask (the probes' own rows are the reference set; a probe's row equals its copy's),
    ``is_poison`` the ground truth (N,). The epoch filter (``config``) is applied to each
    prefix; pass ``kept_epochs`` (the detector's ``artifacts["kept_epochs"]``) to reuse
    the detector's decisions (the filter is causal, so prefix e keeps those < e).
    The AUROC is over non-probe examples unless ``include_probes``. Returns float64 (E,),
    NaN where a prefix keeps no epoch or the ground truth has a single class.

    ``groups`` (name -> boolean mask of N poisons, e.g. one per attack) returns one curve
    per group instead: the AUROC of that group's poisons against the clean examples
    (``~is_poison``), every curve from the same scores.
    """
    from sklearn.metrics import roc_auc_score

    cfg = config or BaDLossConfig()
    t = traj.detach().cpu().numpy() if isinstance(traj, torch.Tensor) else np.asarray(traj)
    n, n_epochs = t.shape
    pm = probe_mask(n, probes)
    pidx = np.flatnonzero(pm)
    y = np.asarray(is_poison.cpu() if isinstance(is_poison, torch.Tensor) else is_poison, bool)
    exclude = None
    if cfg.exclude_self:
        exclude = np.full(n, -1, np.int64)
        exclude[pidx] = np.arange(len(pidx))
    if kept_epochs is None:
        kept_epochs = (
            filter_epochs(t, cfg.filter_keep_first, cfg.filter_factor, cfg.filter_window)
            if cfg.epoch_filter
            else list(range(n_epochs))
        )
    base = np.ones(n, bool) if include_probes else ~pm
    sets = {"all": (base, y)} if groups is None else {}
    for name, mask in (groups or {}).items():
        m = np.asarray(mask, bool)
        rows = base & (m | ~y)
        sets[name] = (rows, m)
    out = {name: np.full(n_epochs, np.nan) for name in sets}
    for e in range(1, n_epochs + 1):
        cols = [i for i in kept_epochs if i < e]
        if not cols:
            continue
        s, _ = trajectory_scores(t, t[pidx], cfg, kept_epochs=cols, exclude=exclude, device=device)
        for name, (rows, truth) in sets.items():
            if 0 < truth[rows].sum() < rows.sum():
                out[name][e - 1] = roc_auc_score(truth[rows], s[rows])
    return out["all"] if groups is None else out


def mean_trajectories(traj: Any, attack_id: Any, attack_names: list[str], probes: Any) -> dict:
    """Per-epoch mean loss of the clean non-probe examples, the probes and each attack's
    poisons (``attack_id`` -1 = clean): name -> list of E floats."""
    t = traj.detach().cpu().numpy() if isinstance(traj, torch.Tensor) else np.asarray(traj)
    ids = np.asarray(attack_id.cpu() if isinstance(attack_id, torch.Tensor) else attack_id)
    pm = probe_mask(len(t), probes)
    rows = {"clean": (ids < 0) & ~pm, "probes": pm}
    rows.update({str(nm): ids == i for i, nm in enumerate(attack_names)})
    return {k: t[m].mean(axis=0, dtype=np.float64).tolist() for k, m in rows.items() if m.any()}


# ---------------------------------------------------------------------------------------
# the detector


def pretrain_config(
    final: TrainConfig | None,
    config: BaDLossConfig,
    seed: int | None = None,
    progress: bool | None = None,
) -> TrainConfig:
    """The pre-training :class:`TrainConfig`: the final run's (``final``; the project default
    when None) with ``epochs = pretrain_epochs``, no augmentation, the recipe
    (``optimizer_preset``) applied, and the LR schedule spanning ``schedule_epochs`` (None:
    the final run's full epoch count). The model is initialised and the data shuffled from
    a seed derived from ``seed`` (never the final run's own stream)."""
    base = final if final is not None else make_config(TrainConfig)
    span = config.schedule_epochs or max(
        config.pretrain_epochs, base.schedule_epochs or base.epochs
    )
    over: dict[str, Any] = {
        "epochs": config.pretrain_epochs,
        "schedule_epochs": span,
        "augment": config.pretrain_augment,
        **OPTIMIZER_PRESETS[config.optimizer_preset],
    }
    if config.batch_size is not None:
        over["batch_size"] = config.batch_size
    if seed is not None:
        over["seed"] = derive_seed(int(seed), "badloss-pretrain")
    if progress is not None:
        over["progress"] = bool(progress)
    cfg = dataclasses.replace(base, **over)
    cfg.validate()
    return cfg


@DETECTORS.register("badloss")
class BaDLoss(Detector):
    """BaDLoss (Alex et al., ICLR 2025): k-NN distance of each example's loss trajectory
    to the trajectories of trusted clean probes. See the module docstring.

    ``score`` fills ``ctx.artifacts`` with ``trajectories`` (N, E float32 numpy),
    ``probe_trajectories`` (P, E), ``probes``, ``kept_epochs``, ``epoch_means``,
    ``distances``, ``pretrain_config``, ``pretrain_history``, ``pretrained_model`` and
    ``timing`` (seconds: pretrain incl. recording, record, knn, total).
    Use :meth:`cut` for the removal mask (it protects the probes and knows the adaptive cut).
    """

    name = "badloss"
    Config = BaDLossConfig
    needs_probes = True

    def select_probes(
        self,
        data: Any,
        seed: int = 0,
        clean_mask: Any | None = None,
        trusted: Any | None = None,
    ) -> np.ndarray:
        """:func:`select_probes` with this config's ``n_probes`` and ``class_balanced_probes``."""
        c = self.config
        return select_probes(data, c.n_probes, seed, clean_mask, c.class_balanced_probes, trusted)

    def record(self, data: Any, ctx: DetectorContext) -> tuple[torch.Tensor, Any]:
        """Pre-train on all N examples + the probe copies; returns the (N + P, E) trajectory
        matrix (rows N.. are the probe copies, in ``ctx.probes`` order) and the TrainResult."""
        from detox.models import build_model

        probes = _probe_indices(ctx.probes, len(data))
        tcfg = pretrain_config(ctx.train_config, self.config, ctx.seed, ctx.progress)
        x = torch.cat([data.x, data.x[torch.as_tensor(probes)]])
        y = torch.cat([data.y, data.y[torch.as_tensor(probes)]])
        model = build_model(
            tcfg.model,
            len(data.classes),
            width=tcfg.width,
            in_channels=int(data.x.shape[1]),
            dataset=dataset_name(data),
            seed=tcfg.seed,
        )
        rec = LossRecorder(x, y, math.ceil(tcfg.epochs), tcfg.eval_batch_size)
        res = train(model, x, y, tcfg, device=ctx.device, callbacks=[rec], desc="badloss pre-train")
        ctx.artifacts["pretrain_config"] = dataclasses.asdict(tcfg)
        ctx.artifacts["pretrain_history"] = res.history
        ctx.artifacts["pretrained_model"] = res.model
        ctx.artifacts.setdefault("timing", {})["record"] = rec.seconds
        return rec.traj, res

    def score(self, data: Any, ctx: DetectorContext) -> np.ndarray:
        cfg = self.config
        t0 = time.perf_counter()
        n = len(data)
        probes = _probe_indices(ctx.probes, n)
        need = cfg.k + int(cfg.exclude_self)
        if len(probes) < need:
            raise ConfigError(f"k={cfg.k} needs at least {need} probes, got {len(probes)}")
        traj, _ = self.record(data, ctx)
        t1 = time.perf_counter()
        n_epochs = traj.shape[1]
        kept = (
            filter_epochs(traj, cfg.filter_keep_first, cfg.filter_factor, cfg.filter_window)
            if cfg.epoch_filter
            else [i for i in range(n_epochs) if bool(torch.isfinite(traj[:, i]).all())]
        )
        if not kept:
            raise ConfigError("BaDLoss: every pre-training epoch has non-finite losses")
        exclude = None
        if cfg.exclude_self:
            exclude = np.full(n, -1, np.int64)
            exclude[probes] = np.arange(len(probes))
        scores, dist = trajectory_scores(
            traj[:n], traj[n:], cfg, kept_epochs=kept, exclude=exclude, device=ctx.device
        )
        t2 = time.perf_counter()
        a = ctx.artifacts
        a["trajectories"] = traj[:n].numpy()
        a["probe_trajectories"] = traj[n:].numpy()
        a["probes"] = probes
        a["kept_epochs"] = kept
        a["epoch_means"] = traj.mean(dim=0, dtype=torch.float64).tolist()
        a["distances"] = dist
        timing = a.setdefault("timing", {})
        timing.update({"pretrain": t1 - t0, "knn": t2 - t1, "total": t2 - t0})
        return scores

    def plot_artifacts(self, artifacts: dict[str, Any], pset: Any, out_dir: Any) -> dict[str, Any]:
        """Loss-trajectory figure and the AUROC-by-epoch-count curve (ground truth from
        ``pset``) into ``out_dir``; returns the curve and ``figures`` (caption -> path)."""
        from pathlib import Path

        from detox.plots.trajectories import plot_trajectories
        from detox.utils.io import atomic_write_json

        traj = artifacts.get("trajectories")
        if traj is None:
            return {}
        out = Path(out_dir)
        figures = {}
        for center, png in (
            ("median", "badloss_trajectories"),
            ("mean", "badloss_mean_trajectories"),
        ):
            figures[f"loss trajectories ({center} per attack)"] = out / f"{png}.png"
            plot_trajectories(
                traj,
                pset.attack_id,
                pset.attack_names,
                out / f"{png}.png",
                probe_traj=artifacts.get("probe_trajectories"),
                kept_epochs=artifacts.get("kept_epochs"),
                center=center,
            )
        is_poison = (pset.attack_id >= 0).numpy()
        kept = artifacts.get("kept_epochs")
        curve = auroc_by_epochs(traj, artifacts["probes"], is_poison, self.config, kept_epochs=kept)
        ids = pset.attack_id.numpy()
        per_attack = auroc_by_epochs(
            traj,
            artifacts["probes"],
            is_poison,
            self.config,
            kept_epochs=kept,
            groups={str(nm): ids == i for i, nm in enumerate(pset.attack_names)},
        )
        result = {
            "auroc_by_epochs": [float(a) for a in curve],
            "per_attack_auroc_by_epochs": {k: [float(a) for a in v] for k, v in per_attack.items()},
            "mean_trajectories": mean_trajectories(
                traj, ids, list(pset.attack_names), artifacts["probes"]
            ),
            "kept_epochs": [int(e) for e in kept] if kept is not None else None,
        }
        atomic_write_json(out / "badloss_auroc_by_epochs.json", result)
        return {**result, "figures": figures}

    def cut(self, scores: Any, probes: Any) -> np.ndarray:
        """Removal mask: ``remove_fraction`` of the whole set (``cut="fraction"``) or every
        example scoring above the probes' ``probe_quantile`` (``cut="probe-quantile"``);
        probes (indices, mask or a :class:`DetectorContext`) are never removed."""
        s = np.asarray(scores, dtype=np.float64)
        prot = probe_mask(len(s), probes)
        if self.config.cut == "fraction":
            return cut_fraction(s, self.config.remove_fraction, protected=prot)
        thr = float(np.quantile(s[prot], self.config.probe_quantile))
        return cut_threshold(s, thr, protected=prot)
