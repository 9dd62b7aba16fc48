"""One device call: train detox's diffusion models on a lent GPU, then time SampDetox there.

Run by ``benchmarks/gpu/device.sh`` on the device machine (see benchmarks/gpu/README.md);
written and tested on the CPU at toy size first (``--toy``). In order, within one wall-clock
budget (``--budget-s``):

1. **CIFAR-10 model** (``gpu`` preset of :mod:`detox.diffusion.presets`): a short
   calibration chunk measures steps per second, the cosine learning-rate schedule is then
   sized to end inside ``--cifar-s``, and training runs in chunks of at most a minute, each
   resuming exactly from ``train_state.pt`` (local disk) and exporting the EMA weights to
   ``$OUT`` as fp16 safetensors shards (files there are limited to 16 MiB) with the
   training record: a run cut off at any point still returns the last minute's weights.
2. **GPU checks** on that model: the UNet's FLOPs per evaluation (``FlopCounterMode``),
   the device's measured bf16 matrix-product rate, the authors' structure (batch 1,
   per-pixel stage-2 loop; ``benchmarks/sampdetox_speed.py``'s ``time_loop``, extrapolated
   as there), and detox's batched purifier (fp32; bf16 autocast; bf16 + channels-last) for
   the ``paper`` and ``code`` presets and the strided chains: images per second and the
   UNet's achieved TFLOP/s inside the purifier.
3. **GTSRB model**, same preset, with the time left before ``--compile-reserve-s``.
4. **torch.compile** of the UNet inside the purifier (best effort, last: a compile that
   runs past the command's limit loses nothing already written).

With ``--eval DIR`` (``pack_eval.py``'s victims and test images), the starting model
(``--init-from``) and the trained one are each measured on the SampDetox table before and
after training: every setting of ``EVAL_SETTINGS`` purifies the clean and triggered test
images (bf16 autocast) and every victim classifies them, giving CA / PA / ASR in
``eval.json``. ``--skip-checks`` leaves out step 2 (measured by an earlier call).

Outputs under ``--out`` (at most 8 files come back): ``cifar10/`` and ``gtsrb/``
(``unet-0000k-of-00002.safetensors`` + ``record.json``), ``checks.json``, ``eval.json``;
stdout is teed to ``log.txt`` by device.sh.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from pack_data import decode  # noqa: E402

from detox.defenses.purifiers import build_purifier  # noqa: E402
from detox.diffusion import make_train_config, train_diffusion  # noqa: E402
from detox.diffusion.backend import DiffusionModel  # noqa: E402

T0 = time.perf_counter()


def now() -> float:
    return time.perf_counter() - T0


def log(msg: str) -> None:
    print(f"[{now():7.1f}s] {msg}", flush=True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def load_images(data: Path, name: str) -> tuple[torch.Tensor, dict]:
    z = np.load(data / f"{name}.npz", allow_pickle=False)
    x = decode(z["blob"], z["offsets"])
    sha = hashlib.sha256(x.tobytes()).hexdigest()
    if sha != str(z["sha256"]):
        raise SystemExit(f"{name}: decoded images do not match their sha256")
    return torch.from_numpy(x), {
        "n": len(x),
        "sha256": sha,
        "index_sha256": hashlib.sha256(z["index"].tobytes()).hexdigest(),
    }


def export(model: DiffusionModel, folder: Path, record: dict) -> None:
    """EMA weights as two fp16 safetensors shards (each < 16 MiB) + record.json."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().to("cpu", torch.float16).contiguous()
        for k, v in model.unet.state_dict().items()
    }
    total = sum(v.numel() * 2 for v in state.values())
    shards: list[dict] = [{}, {}]
    acc = 0
    for k, v in state.items():
        shards[0 if acc < total / 2 else 1][k] = v
        acc += v.numel() * 2
    folder.mkdir(parents=True, exist_ok=True)
    for i, sh in enumerate(shards):
        tmp = folder / f"unet-{i + 1:05d}-of-00002.tmp"
        save_file(sh, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / f"unet-{i + 1:05d}-of-00002.safetensors")
    record = {
        **record,
        "unet_config": json.loads(model.unet.to_json_string()),
        "scheduler_config": json.loads(model.scheduler.to_json_string()),
        "meta": model.meta,
    }
    write_json(folder / "record.json", record)


def train(
    name: str,
    x: torch.Tensor,
    data_info: dict,
    seconds: float,
    out: Path,
    work: Path,
    toy: bool,
    flip: bool,
    init_from: str | None = None,
) -> dict:
    """Train ``name``'s model for about ``seconds`` (wall, including exports)."""
    over = dict(seed=0, progress=False, flip=flip, checkpoint_every=10**9, init_from=init_from)
    if toy:
        over.update(
            block_out_channels=(16, 32),
            norm_num_groups=8,
            batch_size=8,
            warmup_steps=3,
            log_every=2,
            attention_resolutions=(),
        )
    cfg = make_train_config("gpu", **over)
    wd = work / name
    end = now() + seconds
    # calibration chunk: warm-up steps, no decay yet (steps = huge)
    cfg.steps = 10**7
    cfg.max_minutes = min(0.35, seconds / 60 / 4)
    res = train_diffusion(x, cfg, device="auto", out_dir=wd)
    log_ = res.loss_log
    if len(log_) >= 3:  # rate between log points, excluding the first (start-up)
        rate = (log_[-1]["step"] - log_[0]["step"]) / max(
            1e-6, log_[-1]["seconds"] - log_[0]["seconds"]
        )
    else:
        rate = res.steps / max(res.seconds, 1e-6)
    left = end - now()
    chunks = max(1, math.ceil(left / 60))
    total = res.steps + int(0.93 * rate * (left - 4.0 * chunks))  # export/resume overhead
    total = max(total, res.steps + 1)
    log(
        f"{name}: calibration {res.steps} steps, {rate:.2f} steps/s "
        f"({rate * cfg.batch_size:.0f} img/s); schedule sized to {total} steps"
    )
    cfg.steps = total
    record = {
        "dataset": name,
        "data": data_info,
        "config": dataclasses.asdict(cfg),
        "calibration_steps_per_s": rate,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    while res.steps < total and now() < end - 2:
        cfg.max_minutes = min(1.0, (end - now()) / 60)
        res = train_diffusion(x, cfg, device="auto", out_dir=wd)
        record.update(
            steps=res.steps,
            final_loss=res.final_loss,
            loss_log=res.loss_log,
            train_seconds=res.loss_log[-1]["seconds"] if res.loss_log else None,
            stopped_early=res.steps < total,
        )
        export(res.model, out / name, record)
        log(f"{name}: step {res.steps}/{total}, loss {res.final_loss:.4f}")
    if "steps" not in record:  # no chunk after calibration: export what exists
        record.update(
            steps=res.steps, final_loss=res.final_loss, loss_log=res.loss_log, stopped_early=True
        )
        export(res.model, out / name, record)
    return record


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_bf16(toy: bool) -> float:
    if not torch.cuda.is_available():
        return float("nan")
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * n**3 / (time.perf_counter() - t) / 1e12


def unet_flops(model: DiffusionModel) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    s = model.sample_size or 32
    x = torch.randn(1, model.in_channels, s, s, device=model.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.unet(x, torch.zeros(1, device=model.device))
    return float(fc.get_total_flops())


def time_purifier(p, x: torch.Tensor, bs: int) -> float:
    """Seconds to purify ``x`` in batches of ``bs``, after a warm-up of the UNet at that
    batch size (allocations, cuDNN autotuning) and of the whole chain on one image."""
    with torch.inference_mode():
        xb = x[:bs].to(p.device) * 2 - 1
        for _ in range(2):
            p._eps(xb, 1)
    p.purify(x[:1], batch_size=1)
    sync()
    t = time.perf_counter()
    p.purify(x, batch_size=bs)
    sync()
    return time.perf_counter() - t


def checks(model: DiffusionModel, x: torch.Tensor, out: Path, toy: bool) -> dict:
    from sampdetox_speed import time_loop

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    model.to(dev)
    x = x.to(dev)
    res: dict = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "parameters": model.num_parameters(),
    }
    res["unet_gflop_per_eval"] = unet_flops(model) / 1e9
    res["bf16_matmul_tflops"] = peak_bf16(toy)
    log(
        f"UNet {res['unet_gflop_per_eval']:.2f} GFLOP/eval; bf16 matmul "
        f"{res['bf16_matmul_tflops']:.0f} TFLOP/s"
    )
    write_json(out / "checks.json", res)

    def purifier(preset: str, **kw):
        return build_purifier("sampdetox", preset, model=model, **kw).to(dev)

    rows = res.setdefault("rows", [])

    def add(method, preset, p, n, seconds, bs, extra=None):
        evals = p.describe()["network_evaluations_per_image"]
        ips = n / seconds
        tf = ips * evals * res["unet_gflop_per_eval"] / 1e3
        rows.append(
            {
                "method": method,
                "preset": preset,
                "stride": p.config.stride,
                "batch_size": bs,
                "images": n,
                "evals_per_image": evals,
                "img_per_s": ips,
                "unet_tflops": tf,
                "fraction_of_bf16_matmul": tf / res["bf16_matmul_tflops"],
                **(extra or {}),
            }
        )
        log(
            f"{method:<34} {preset:>6} s={p.config.stride:<2} b={bs:<5} {ips:9.2f} img/s "
            f"{tf:7.1f} TFLOP/s"
        )
        write_json(out / "checks.json", res)

    # the authors' structure: batch 1, per-pixel python loops in stage 2, fp32
    base = purifier("paper")
    lp = time_loop(base, x[:1], 2 if toy else 5)
    spi = lp["stage1"] + lp["ssim"] + lp["renoise"] + base.config.T2 * lp["stage2_per_step"]
    add(
        "authors' structure (extrapolated)",
        "paper",
        base,
        1,
        spi,
        1,
        {"parts_s_per_image": lp, "extrapolated": True},
    )
    # detox vectorised, batch 1, fp32
    n1 = 2
    add("detox b=1 fp32", "paper", base, n1, time_purifier(base, x[:n1], 1), 1)
    big = 64 if toy else 1024
    nbig = 64 if toy else 1024
    # fp32 (TF32 off: PyTorch's default for convolutions is on; recorded)
    p = purifier("paper")
    add(
        "detox fp32",
        "paper",
        p,
        nbig // 4,
        time_purifier(p, x[: nbig // 4], big // 4),
        big // 4,
        {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32},
    )
    for preset, kw in (
        ("paper", {}),
        ("paper", {"stride": 5}),
        ("paper", {"stride": 10}),
        ("code", {}),
        ("code", {"stride": 10}),
    ):
        p = purifier(preset, amp=True, **kw)
        add("detox bf16", preset, p, nbig, time_purifier(p, x[:nbig], big), big)
    # channels-last
    model.unet.to(memory_format=torch.channels_last)
    for preset, kw in (("paper", {}), ("code", {})):
        p = purifier(preset, amp=True, **kw)
        add("detox bf16 channels-last", preset, p, nbig, time_purifier(p, x[:nbig], big), big)
    model.unet.to(memory_format=torch.contiguous_format)
    # batch size effect on the paper preset
    for bs in (16,) if toy else (256, 2048):
        p = purifier("paper", amp=True)
        n = max(bs, nbig)
        xx = x[:n] if len(x) >= n else x.repeat(math.ceil(n / len(x)), 1, 1, 1)[:n]
        add("detox bf16", "paper", p, n, time_purifier(p, xx, bs), bs)
    return res


def compile_check(model: DiffusionModel, x: torch.Tensor, res: dict, out: Path, toy: bool):
    dev = model.device
    eager = model.unet
    t = time.perf_counter()
    model.unet = torch.compile(eager)
    big = 64 if toy else 1024
    p = build_purifier("sampdetox", "paper", model=model, amp=True, stride=10).to(dev)
    p.purify(x[:big], batch_size=big)  # compiles
    sync()
    res["compile_seconds"] = time.perf_counter() - t
    log(f"torch.compile: {res['compile_seconds']:.0f} s")
    for preset in ("paper", "code"):
        p = build_purifier("sampdetox", preset, model=model, amp=True).to(dev)
        s = time_purifier(p, x[:big], big)
        evals = p.describe()["network_evaluations_per_image"]
        ips = big / s
        tf = ips * evals * res["unet_gflop_per_eval"] / 1e3
        res["rows"].append(
            {
                "method": "detox bf16 torch.compile",
                "preset": preset,
                "stride": 1,
                "batch_size": big,
                "images": big,
                "evals_per_image": evals,
                "img_per_s": ips,
                "unet_tflops": tf,
                "fraction_of_bf16_matmul": tf / res["bf16_matmul_tflops"],
            }
        )
        log(f"compiled {preset}: {ips:.1f} img/s, {tf:.1f} TFLOP/s")
        write_json(out / "checks.json", res)
    model.unet = eager


# (name, purifier preset, overrides): the two presets of the table, strided as on the CPU
# and faithful (every level)
EVAL_SETTINGS = (
    ("paper s=5", "paper", {"stride": 5}),
    ("code s=10", "code", {"stride": 10}),
    ("paper s=1", "paper", {}),
    ("code s=1", "code", {}),
)


def load_eval(folder: Path, device: str) -> tuple[dict, dict]:
    """``pack_eval.py``'s images (float [0, 1] on ``device``) and victims."""
    from detox.models import load_checkpoint

    z = np.load(folder / "eval.npz", allow_pickle=False)
    attacks = sorted(k[: -len("_y_true")] for k in z.files if k.endswith("_y_true"))
    data = {"clean": (torch.from_numpy(z["clean_x"]), torch.from_numpy(z["clean_y"]))}
    for a in attacks:
        data[a] = (
            torch.from_numpy(z[f"{a}_x"]),
            torch.from_numpy(z[f"{a}_y_true"]),
            torch.from_numpy(z[f"{a}_y_target"]),
        )
    victims = {a: load_checkpoint(folder / "victims" / a, device).eval() for a in attacks}
    return data, victims


def evaluate(model: DiffusionModel, data: dict, victims: dict, label: str, toy: bool) -> list[dict]:
    """CA / PA / ASR of every victim on images purified by each of ``EVAL_SETTINGS``: the
    clean images once per setting (as ``detox bench`` does), each attack's triggered images
    for its victim; each set's noise is drawn from (seed 0, its own row index)."""
    from detox.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy
    from detox.training import predict

    dev = model.device
    rows = []
    settings = EVAL_SETTINGS[:2] if toy else EVAL_SETTINGS
    for name, preset, kw in settings:
        p = build_purifier("sampdetox", preset, model=model, amp=True, **kw).to(dev)
        sync()
        t = time.perf_counter()
        n = 0
        pure = {}
        for key, val in data.items():
            x = val[0][: 8 if toy else None].to(dev).float() / 255.0
            pure[key] = p.purify(x, seed=0, batch_size=64 if toy else 1024)
            n += len(x)
        sync()
        seconds = time.perf_counter() - t
        for a, v in victims.items():
            nc = len(pure["clean"])
            ca = clean_accuracy(predict(v, pure["clean"], 1024).cpu(), data["clean"][1][:nc])
            x, y_true, y_target = data[a]
            m = len(pure[a])
            pred = predict(v, pure[a], 1024).cpu()
            rows.append(
                {
                    "model": label,
                    "setting": name,
                    "attack": a,
                    "ca": ca,
                    "pa": poisoned_accuracy(pred, y_true[:m], y_target[:m]),
                    "asr": attack_success_rate(pred, y_target[:m], y_true[:m]),
                    "n_clean": nc,
                    "n_triggered": m,
                    "img_per_s": n / seconds,
                    "evals_per_image": p.describe()["network_evaluations_per_image"],
                }
            )
        log(
            f"eval {label} {name}: {n / seconds:.0f} img/s; "
            + ", ".join(
                f"{r['attack']} {100 * r['ca']:.1f}/{100 * r['asr']:.1f}"
                for r in rows[-len(victims) :]
            )
        )
    # the undefended victims, for the record
    for a, v in victims.items():
        x, y_true, y_target = data[a]
        pc = predict(v, data["clean"][0].to(dev).float() / 255.0, 1024).cpu()
        pt = predict(v, x.to(dev).float() / 255.0, 1024).cpu()
        rows.append(
            {
                "model": label,
                "setting": "none",
                "attack": a,
                "ca": clean_accuracy(pc, data["clean"][1]),
                "pa": poisoned_accuracy(pt, y_true, y_target),
                "asr": attack_success_rate(pt, y_target, y_true),
                "n_clean": len(pc),
                "n_triggered": len(pt),
            }
        )
    return rows


def run_eval(args, model_dir, label: str, out: Path, rows: list) -> None:
    from detox.diffusion import load_diffusion

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        data, victims = load_eval(Path(args.eval), dev)
        m = load_diffusion(model_dir, device=dev)
        rows += evaluate(m, data, victims, label, args.toy)
    except Exception as e:  # the model matters more than its evaluation: go on
        log(f"eval of {label} failed: {type(e).__name__}: {e}")
        rows.append({"model": label, "error": f"{type(e).__name__}: {e}"})
    write_json(
        out / "eval.json", {"device": _device_name(), "torch": torch.__version__, "rows": rows}
    )


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".gpudata")
    ap.add_argument("--out", default=os.environ.get("OUT", "out-gpu"))
    ap.add_argument("--work", default="/tmp/detox-gpu-work")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--cifar-s", type=float, default=240)
    ap.add_argument("--compile-reserve-s", type=float, default=110)
    ap.add_argument("--toy", action="store_true", help="CPU test at toy size")
    ap.add_argument("--init-from", default=None, help="continue from this CIFAR-10 model")
    ap.add_argument("--no-gtsrb", action="store_true", help="train the CIFAR-10 model only")
    ap.add_argument("--skip-checks", action="store_true", help="no GPU speed checks")
    ap.add_argument("--eval", default=None, help="pack_eval.py's folder: measure the models")
    ap.add_argument(
        "--no-start-eval", action="store_true", help="with --init-from: skip measuring it"
    )
    args = ap.parse_args()
    out, work, data = Path(args.out), Path(args.work), Path(args.data)
    log(
        f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
    )
    x_c, info_c = load_images(data, "cifar10-train")
    if args.toy:
        x_c = x_c[:256]
    log(f"data: cifar10 {tuple(x_c.shape)}")
    eval_rows: list = []
    if args.eval and args.init_from and not args.no_start_eval:
        run_eval(args, args.init_from, "start", out, eval_rows)

    rec_c = train("cifar10", x_c, info_c, args.cifar_s, out, work, args.toy, True, args.init_from)
    from detox.diffusion import load_diffusion

    model = load_diffusion(work / "cifar10", device="cuda" if torch.cuda.is_available() else "cpu")
    if args.eval:
        run_eval(args, work / "cifar10", "trained", out, eval_rows)
    res: dict = {}
    if not args.skip_checks:
        x_test, _ = load_images(data, "cifar10-test")
        x_test = x_test.float() / 255.0
        try:
            res = checks(model, x_test, out, args.toy)
        except Exception as e:  # the models matter more than the checks: go on
            log(f"checks failed: {type(e).__name__}: {e}")
            res["error"] = f"{type(e).__name__}: {e}"
            write_json(out / "checks.json", res)

    left = args.budget_s - now() - args.compile_reserve_s
    if left > 45 and not args.no_gtsrb:
        x_g, info_g = load_images(data, "gtsrb-train")
        if args.toy:
            x_g = x_g[:256]
        train("gtsrb", x_g, info_g, left, out, work, args.toy, flip=False)
    else:
        log(f"no time left for GTSRB ({left:.0f} s)")
    if "rows" in res:
        try:
            compile_check(model, x_test, res, out, args.toy)
        except Exception as e:
            log(f"compile failed: {type(e).__name__}: {e}")
            res["compile_error"] = f"{type(e).__name__}: {e}"
            write_json(out / "checks.json", res)
    log(f"done (cifar10 {rec_c.get('steps')} steps)")


if __name__ == "__main__":
    main()
