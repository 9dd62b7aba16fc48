"""``detox bench``: config validation, the grid, tables, resume after a kill, Ray, report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detox.bench.config import load_bench_config
from detox.bench.tables import bench_tables, grid_rows
from detox.errors import ConfigError

# a tiny grid: 300 training images, 1 epoch of the small CNN; two victims
TINY = """
name = "tiny"
preset = "smoke"
datasets = ["cifar10"]
attacks = ["badnets", "blended"]
defenses = ["ultraclean"]
[set]
train_subset = 300
test_subset = 100
epochs = 1
"""


def write(tmp_path: Path, text: str, name: str = "bench.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------------------
# config


def test_grid_cells_and_groups(tmp_path):
    cfg = load_bench_config(
        write(
            tmp_path,
            """
            preset = "smoke"
            seeds = [0, 1]
            datasets = ["cifar10"]
            attacks = ["badnets", "badloss-cifar10"]
            defenses = ["ultraclean", "badloss"]
            [[grid]]
            [[grid]]
            datasets = ["gtsrb"]
            attacks = ["badloss-gtsrb"]
            defenses = ["ultraclean"]
            seeds = [0]
            """,
        )
    )
    cells = cfg.cells()
    # cifar10: 2 attacks x 2 seeds x (none + 2) ; gtsrb: 1 x 1 x (none + 1)
    assert len(cells) == 2 * 2 * 3 + 2
    assert len({c.id for c in cells}) == len(cells)
    assert len(cfg.groups()) == 2 * 2 + 1
    assert cfg.defenses() == ["none", "ultraclean", "badloss"]
    assert all(c.group.id in c.id for c in cells)


def test_yaml_and_json_configs(tmp_path):
    y = write(
        tmp_path,
        "datasets: [cifar10]\nattacks: [badnets]\ndefenses: [ultraclean]\n",
        "b.yaml",
    )
    j = write(tmp_path, json.dumps({"datasets": ["cifar10"], "attacks": ["badnets"]}), "b.json")
    assert len(load_bench_config(y).cells()) == 2
    assert len(load_bench_config(j).cells()) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('datasets = ["cifar10"]\nattacks = ["badnets"]\nepochs = 3', "unknown key(s) epochs"),
        ('datasets = ["cifar10"]\nattacks = ["nope"]', "unknown attack"),
        ('datasets = ["cifar10"]\nattacks = ["badnets"]\ndefenses = ["x"]', "unknown defense"),
        ('datasets = ["mnist9"]\nattacks = ["badnets"]', "dataset 'mnist9'"),
        ('datasets = ["cifar10"]\nattacks = ["badnets"]\nseeds = [-1]', "seeds"),
        ('datasets = ["cifar10"]\nattacks = ["badnets"]\npreset = "huge"', "preset 'huge'"),
        ('datasets = ["cifar10"]\nattacks = []', "'attacks' must be a non-empty list"),
        ('attacks = ["badnets"]', "'datasets' is required"),
        ('datasets = ["cifar10"]\nattacks = ["badnets"]\n[set]\nepochz = 2', "epochz"),
        (
            'datasets = ["cifar10"]\nattacks = ["badnets"]\ndefenses = ["ultraclean"]\n'
            "[defense_set.ultraclean]\nremove_fraction = 2.0",
            "remove_fraction",
        ),
        (
            'datasets = ["cifar10"]\nattacks = ["badnets"]\ndefenses = ["badloss", "sampdetox"]'
            '\ndefense_preset = "code"',
            "defense 'badloss': preset 'code'",
        ),
        ('datasets = ["cifar10"\n', "cannot parse"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_bench_config(write(tmp_path, text))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_bench_config(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="expected a .toml"):
        load_bench_config(write(tmp_path, "x", "bench.ini"))


# ---------------------------------------------------------------------------------------
# tables


def _result(attack, defense, seed, ca, asr, names=None, auroc=None):
    names = names or [attack]
    ev = {"ca": ca, "attacks": {n: {"asr": asr, "pa": 1 - asr} for n in names}}
    r = {
        "dataset": "cifar10",
        "attack": attack,
        "attack_names": names,
        "defense": defense,
        "seed": seed,
        "evaluation": ev,
    }
    if auroc is not None:
        r["detection"] = {
            "per_attack": {n: {"auroc": auroc, "tpr": 0.9, "fpr": 0.3} for n in names}
        }
    return r


def test_tables_mean_std_and_bold():
    results = [
        _result("badnets", "none", 0, 0.86, 1.0),
        _result("badnets", "none", 1, 0.88, 1.0),
        _result("badnets", "ultraclean", 0, 0.85, 0.02, auroc=0.99),
        _result("badnets", "ultraclean", 1, 0.85, 0.04, auroc=0.97),
        _result("a,b", "none", 0, 0.80, 0.9, names=["a", "b"]),
    ]
    t = bench_tables(results, ["none", "ultraclean"])["cifar10"]
    assert t["rows"] == ["badnets", "a,b: a", "a,b: b"]
    s = t["cells"]["badnets"]["no defense"]["ca"]
    assert (
        s["n"] == 2 and s["mean"] == pytest.approx(87.0) and s["std"] == pytest.approx(1.414, 1e-3)
    )
    rows = grid_rows(t, {"ca": ("CA", True), "asr": ("ASR", False)})
    assert rows[0]["no defense"] == "**87.00±1.41** / 100.00±0.00"
    assert rows[0]["ultraclean"] == "85.00±0.00 / **3.00±1.41**"
    det = grid_rows(t, {"auroc": ("AUROC", True)})
    assert list(det[0]) == ["attack", "ultraclean"] and det[0]["ultraclean"] == "98.00±1.41"


def test_defense_variants_get_their_own_columns():
    """Two settings of one defense on one victim are two columns, never averaged."""
    plain = _result("badnets", "ultraclean", 0, 0.84, 0.03, auroc=0.90)
    known = _result("badnets", "ultraclean", 0, 0.86, 0.01, auroc=0.90)
    other = _result("badnets", "ultraclean", 0, 0.80, 0.02, auroc=0.90)
    for r in (plain, known, other):
        r["preset"] = r["defense_preset"] = "quick"
        r["defense_overrides"] = []
    known["defense_overrides"] = [["known_target", 0]]  # as read back from JSON
    other["defense_preset"] = "paper"
    t = bench_tables([plain, known, other], ["ultraclean"])["cifar10"]
    assert t["columns"] == ["ultraclean", "ultraclean (known_target=0)", "ultraclean [paper]"]
    assert t["cells"]["badnets"]["ultraclean (known_target=0)"]["ca"]["mean"] == pytest.approx(86)
    assert t["cells"]["badnets"]["ultraclean"]["ca"]["n"] == 1
    # training overrides: those every cell shares name no row; the others do
    for r in (plain, known, other):
        r["overrides"] = [["epochs", 6]]
    other["overrides"] = [["epochs", 6], ["lr", 0.1]]
    t = bench_tables([plain, known, other], ["ultraclean"])["cifar10"]
    assert t["rows"] == ["badnets", "badnets (lr=0.1)"]


# ---------------------------------------------------------------------------------------
# running: resume after a kill, Ray, the report in a browser


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DETOX_CACHE"] = str(cache)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _bench(args, env, **kw):
    # one torch thread per cell: results are then bit-identical across processes
    return subprocess.run(
        [sys.executable, "-m", "detox", "bench", *args, "--threads", "1"],
        env=env,
        text=True,
        capture_output=True,
        **kw,
    )


def _seed_cache(src_cache: Path, dst_cache: Path) -> None:
    """Share extracted datasets between test caches (victims and purified images stay
    separate)."""
    dst_cache.mkdir(parents=True, exist_ok=True)
    for sub in Path(src_cache).iterdir() if Path(src_cache).is_dir() else []:
        if sub.name not in ("victims", "purified") and not (dst_cache / sub.name).exists():
            (dst_cache / sub.name).symlink_to(sub.resolve())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cifar_train):
    """The tiny grid run once, uninterrupted, in its own victim cache."""
    root = tmp_path_factory.mktemp("bench-ref")
    cache = root / "cache"
    _seed_cache(Path(os.environ["DETOX_CACHE"]), cache)
    cfg = write(root, TINY)
    out = root / "out"
    p = _bench([str(cfg), "--out", str(out), "--quiet"], _env(cache))
    assert p.returncode == 0, p.stderr
    return cfg, out, cache


def test_resume_after_kill(tmp_path, reference_run):
    cfg, ref_out, _ = reference_run
    cache = tmp_path / "cache"
    _seed_cache(Path(os.environ["DETOX_CACHE"]), cache)
    out = tmp_path / "out"
    env = _env(cache)
    proc = subprocess.Popen(
        [sys.executable, "-m", "detox", "bench", str(cfg), "--out", str(out), "--quiet"]
        + ["--threads", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    cells = out / "cells"
    while time.time() < deadline and len(list(cells.glob("*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    assert 2 <= len(finished) < 4, "the kill should land mid-grid"
    assert not (out / "tables.md").exists()

    again = _bench([str(cfg), "--out", str(out), "--quiet"], env)
    assert again.returncode == 2 and "--resume" in again.stderr

    p = _bench([str(cfg), "--out", str(out), "--quiet", "--resume"], env)
    assert p.returncode == 0, p.stderr
    assert "already finished" in p.stdout
    # finished cells untouched, the table identical to the uninterrupted run's
    for name, mtime in finished.items():
        assert (cells / name).stat().st_mtime_ns == mtime
    assert (out / "tables.md").read_text() == (ref_out / "tables.md").read_text()
    # the victims trained before the kill were not trained again
    results = [json.loads(p.read_text()) for p in cells.glob("*.json")]
    victims_before = {json.loads((cells / n).read_text())["victim"]["key"] for n in finished}
    for r in results:
        if r["cell"] + ".json" not in finished and r["victim"]["key"] in victims_before:
            assert r["victim"]["cached"] is True
    # every trained model (2 victims, 2 retrained after the cut) is in the cache once
    trained = {r["victim"]["key"] for r in results} | {
        r["defense_info"]["retrain"]["key"] for r in results if r["kind"] == "detector"
    }
    cached = {d.name for d in (cache / "victims").iterdir() if not d.name.startswith(".")}
    assert len(trained) == 4 and cached == trained


def test_ray_executor_matches_local(tmp_path, reference_run):
    pytest.importorskip("ray")
    cfg, ref_out, _ = reference_run
    cache = tmp_path / "cache"
    _seed_cache(Path(os.environ["DETOX_CACHE"]), cache)
    out = tmp_path / "out"
    p = _bench(
        [str(cfg), "--out", str(out), "--quiet", "--executor", "ray", "--workers", "2"],
        _env(cache),
        timeout=900,
    )
    assert p.returncode == 0, p.stderr
    ref = {r.name: json.loads(r.read_text()) for r in (ref_out / "cells").glob("*.json")}
    got = {r.name: json.loads(r.read_text()) for r in (out / "cells").glob("*.json")}
    assert set(got) == set(ref)
    for name, r in ref.items():
        g = got[name]
        # same seeds, one thread each: the same numbers up to float rounding
        assert g["evaluation"]["ca"] == pytest.approx(r["evaluation"]["ca"], abs=1e-6)
        for a, m in r["evaluation"]["attacks"].items():
            assert g["evaluation"]["attacks"][a]["asr"] == pytest.approx(m["asr"], abs=1e-6)
        if "detection" in r:
            ga = g["detection"]["overall"]["auroc"]
            assert ga == pytest.approx(r["detection"]["overall"]["auroc"], abs=1e-6)
    assert (out / "tables.md").read_text() == (ref_out / "tables.md").read_text()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_report_in_headless_chromium(tmp_path, reference_run):
    """The report opens from the file system with no console errors, and shows the
    tables and the figures (screenshot kept in the test's temp dir)."""
    chromium = _chromium()
    required = os.environ.get("DETOX_REQUIRE_BROWSER") == "1"
    try:
        import playwright  # noqa: F401
    except ImportError:
        chromium = None
    if chromium is None:
        if required:
            pytest.fail("DETOX_REQUIRE_BROWSER=1 but Chromium or playwright is missing")
        pytest.skip("no Chromium (or no playwright) on this machine")
    from playwright.sync_api import sync_playwright

    _, out, _ = reference_run
    report = out / "report.html"
    assert report.is_file()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        n_tables = page.locator("table").count()
        imgs = page.locator("img")
        loaded = [
            imgs.nth(i).evaluate("e => e.complete && e.naturalWidth > 0")
            for i in range(imgs.count())
        ]
        text = page.inner_text("body")
        browser.close()
    assert errors == [] and failed == []
    assert n_tables >= 3  # CA/PA/ASR, detection, cells
    assert len(loaded) >= 4 and all(loaded)  # samples, histograms, ROC curves
    assert "no defense" in text and "ultraclean" in text and "Glossary" in text
    assert shot.stat().st_size > 50_000


def test_demo_smoke(tmp_path):
    """`detox demo --smoke`: the demo's grid end to end at toy scale, SampDetox included."""
    env = _env(Path(os.environ["DETOX_CACHE"]))
    diff = tmp_path / "diffusion"
    p = subprocess.run(
        [sys.executable, "-m", "detox", "diffusion", "train", "--preset", "smoke"]
        + ["--out", str(diff), "--quiet"],
        env=env,
        text=True,
        capture_output=True,
    )
    assert p.returncode == 0, p.stderr
    out = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "detox", "demo", "--smoke", "--diffusion", str(diff)]
        + ["--out", str(out), "--quiet", "--threads", "1"],
        env=env,
        text=True,
        capture_output=True,
    )
    assert p.returncode == 0, p.stderr
    header = next(line for line in p.stdout.splitlines() if line.startswith("| attack"))
    for col in ("no defense", "ultraclean", "sampdetox", "badloss"):
        assert col in header
    assert "badloss-cifar10: single-pixel" in p.stdout
    assert (out / "report.html").is_file() and f"report: {out}/report.html" in p.stdout
    assert len(list((out / "cells").glob("*.json"))) == 8
    assert len(list((out / "cells").glob("*/sampdetox_samples.png"))) == 2
    # the scale is printed first, the effects last, one line per (attack, defense)
    assert p.stdout.startswith("detox demo on cpu: cifar10, preset smoke, 8 cells")
    glance = p.stdout.split("At a glance")[1].strip().splitlines()[1:]
    assert len(glance) == 4 + 7  # 2 attacks x (ultraclean, sampdetox) + the suite's 7 x badloss
    assert all(" took ASR from " in line for line in glance)
    assert "At a glance" in (out / "report.html").read_text()


def test_demo_without_diffusion_leaves_sampdetox_out():
    from detox.cli.bench_cmd import demo_config

    cfg, _ = demo_config(None)
    assert "sampdetox" not in cfg.defenses()
    assert {"ultraclean", "badloss"} <= set(cfg.defenses())
    with_model, _ = demo_config("some/folder")
    assert "sampdetox" in with_model.defenses()
    shipped, _ = demo_config(None, packaged=True)  # the shipped model: no setting needed
    assert "sampdetox" in shipped.defenses()
    assert all(
        "diffusion" not in dict(c.defense_overrides)
        for c in shipped.cells()
        if c.defense == "sampdetox"
    )


def test_demo_scale_on_cpu_and_gpu():
    """The CPU demo trains the reduced victims of demo.toml; on a GPU the same command runs
    the full `quick` scale with SampDetox's faithful chain compiled in bf16."""
    from detox.cli.bench_cmd import demo_config, describe_demo

    cpu, data = demo_config(None, packaged=True)
    over = {dict(c.overrides).get("train_subset") for c in cpu.cells()}
    assert over == {30000} and len(cpu.cells()) == 8
    assert "train_subset=30000" in describe_demo(data, 8, "cpu")
    gpu, gdata = demo_config(None, packaged=True, gpu=True)
    assert all(not c.overrides for c in gpu.cells())
    sd = [dict(c.defense_overrides) for c in gpu.cells() if c.defense == "sampdetox"]
    assert sd and all(d == {"stride": 1, "amp": True, "compile": True} for d in sd)
    bl = [dict(c.defense_overrides) for c in gpu.cells() if c.defense == "badloss"]
    # BaDLoss's `quick` pre-training, not the CPU demo's 4 epochs, in log-loss space
    assert bl == [{"trajectory_space": "log-loss"}]
    assert "the full `quick` scale" in describe_demo(gdata, len(gpu.cells()), "cuda")


def test_only_and_threads_are_checked(tmp_path):
    from detox.bench.runner import run_bench

    cfg = load_bench_config(write(tmp_path, TINY))
    with pytest.raises(ConfigError, match="matches no cell"):
        run_bench(cfg, tmp_path / "o", only="*nothing*", progress=False)
    with pytest.raises(ConfigError, match="threads=0"):
        run_bench(cfg, tmp_path / "o", threads=0, progress=False)
    with pytest.raises(ConfigError, match="unknown executor|executor"):
        run_bench(cfg, tmp_path / "o", executor="slurm", progress=False)
    res = run_bench(cfg, tmp_path / "t", tabulate_only=True, progress=False)
    assert (res["computed"], res["skipped"], res["left"]) == (0, 0, 4)
    assert (tmp_path / "t" / "report.html").is_file()


def test_smallest_class_removal():
    from detox.bench.report import smallest_class_removal

    det = {"per_class_count": [5, 3, 9, 1, 3], "per_class_removal": [0.1, 0.2, 0.3, 0.4, 0.5]}
    rows = smallest_class_removal(det, 3)
    assert [r["class"] for r in rows] == [3, 1, 4]
    assert rows[0] == {"class": 3, "examples": 1, "removed %": 40.0}
    assert smallest_class_removal({}) == []


def test_no_defense_cell_is_shared_across_defense_presets(tmp_path):
    """Grids that differ only in the defenses' preset share one undefended cell."""
    text = (
        'datasets = ["cifar10"]\nattacks = ["badnets"]\n'
        '[[grid]]\ndefenses = ["sampdetox"]\ndefense_preset = "code"\n'
        '[[grid]]\ndefenses = ["sampdetox"]\ndefense_preset = "paper"\n'
    )
    cells = load_bench_config(write(tmp_path, text)).cells()
    assert [c.defense for c in cells].count("none") == 1
    assert sorted(c.defense_preset for c in cells if c.defense == "sampdetox") == [
        "code",
        "paper",
    ]


# every kind of defense on one tiny grid: detectors (UltraClean, BaDLoss) and purifiers
# (SampDetox with the shipped model, ShrinkPad, median)
EVERY_DEFENSE = """
name = "every-defense"
preset = "smoke"
datasets = ["cifar10"]
attacks = ["badnets"]
defenses = ["ultraclean", "badloss", "sampdetox", "shrinkpad", "median"]
defense_preset = "smoke"
[set]
train_subset = 300
test_subset = 40
epochs = 1
"""

#: Fields of a cell JSON that record when and how fast, or whether a cache answered:
#: everything else is a figure and must not depend on the state of the caches.
_NOT_FIGURES = {
    "seconds",
    "finished",
    "environment",
    "cached",
    "train_seconds",
    "images_per_second",
    "timing",
    "purified",
    "from_cache",
    "wall_seconds",
    "images_purified",
    "images_from_cache",
    "purify_seconds",
}


def _figures(obj):
    if isinstance(obj, dict):
        return {
            k: _figures(v)
            for k, v in obj.items()
            if k not in _NOT_FIGURES and not k.endswith(("seconds", "per_second"))
        }
    if isinstance(obj, list):
        return [_figures(v) for v in obj]
    return obj


def test_cold_and_warm_caches_give_identical_figures(tmp_path):
    """The same bench twice: first with empty victim and purified-image caches, then with
    both warm (victims loaded, clean test images from the purified cache); and BaDLoss's
    pre-training seeded whatever ran before it. Every figure is byte-identical."""
    cache = tmp_path / "cache"
    _seed_cache(Path(os.environ["DETOX_CACHE"]), cache)
    cfg = write(tmp_path, EVERY_DEFENSE)
    runs = []
    for name in ("cold", "warm"):
        out = tmp_path / name
        p = _bench([str(cfg), "--out", str(out), "--quiet"], _env(cache), timeout=1200)
        assert p.returncode == 0, p.stderr
        runs.append({c.name: json.loads(c.read_text()) for c in (out / "cells").glob("*.json")})
    cold, warm = runs
    assert len(cold) == 6 and set(cold) == set(warm)
    # the second run really was warm: its victims and purified images came from the caches
    assert all(c["victim"]["cached"] for c in warm.values())
    assert not any(c["victim"]["cached"] for c in cold.values())
    pur = [n for n, c in cold.items() if c["kind"] == "purifier"]
    assert len(pur) == 3
    assert all(warm[n]["defense_info"]["images_from_cache"] > 0 for n in pur)
    assert all(cold[n]["defense_info"]["images_from_cache"] == 0 for n in pur)
    for name in cold:
        a = json.dumps(_figures(cold[name]), sort_keys=True)
        b = json.dumps(_figures(warm[name]), sort_keys=True)
        assert a == b, name
    # every detector's per-example scores, byte for byte
    csvs = sorted((tmp_path / "cold" / "cells").glob("*/*_scores.csv"))
    assert {p.name for p in csvs} == {"badloss_scores.csv", "ultraclean_scores.csv"}
    for p in csvs:
        twin = tmp_path / "warm" / "cells" / p.parent.name / p.name
        assert p.read_bytes() == twin.read_bytes(), p.name
    # and the figures are real ones: BaDLoss and UltraClean scored and cut 300 examples
    det = [c for c in cold.values() if c["kind"] == "detector"]
    assert len(det) == 2 and all(c["detection"]["overall"]["n"] >= 250 for c in det)


def test_effect_lines_word_the_ca_change():
    """One sentence per (attack, defense): a CA drop is a cost, a rise a gain, and a change
    that rounds to 0.0 points is neither (it once printed "gain -0.0 points")."""
    from detox.bench.tables import NONE_LABEL, effect_lines

    def cell(asr, ca):
        return {"asr": {"mean": asr}, "ca": {"mean": ca}}

    tables = {
        "cifar10": {
            "rows": ["badnets"],
            "columns": [NONE_LABEL, "a", "b", "c"],
            "cells": {
                "badnets": {
                    NONE_LABEL: cell(100.0, 83.0),
                    "a": cell(2.2, 79.0),
                    "b": cell(1.1, 84.0),
                    "c": cell(0.0, 83.0),
                }
            },
        }
    }
    assert effect_lines(tables) == [
        "cifar10 badnets: a took ASR from 100.0% to 2.2%, CA 83.0% -> 79.0% (cost 4.0 points)",
        "cifar10 badnets: b took ASR from 100.0% to 1.1%, CA 83.0% -> 84.0% (gain 1.0 points)",
        "cifar10 badnets: c took ASR from 100.0% to 0.0%, CA 83.0% -> 83.0% (no CA cost)",
    ]


def test_effects_compare_a_purifier_on_a_subset_with_the_same_images():
    """A purifier evaluated on a subset (``purify_limit``) carries the undefended victim's
    figures on the same images (``ca_ref`` / ``asr_ref``): its line compares with those,
    not with the undefended column measured on every test image, and says so."""
    from detox.bench.tables import NONE_LABEL, bench_markdown, bench_tables, effect_lines, effects

    ev = {"ca": 0.86, "n_test": 1000, "attacks": {"badnets": {"asr": 1.0, "pa": 0.0, "n": 900}}}
    sub = {"ca": 0.71, "n_test": 100, "attacks": {"badnets": {"asr": 0.0, "pa": 0.64, "n": 90}}}
    ref = {"ca": 0.88, "n_test": 100, "attacks": {"badnets": {"asr": 0.99, "pa": 0.0, "n": 90}}}
    base = {"dataset": "cifar10", "attack": "badnets", "attack_names": ["badnets"], "seed": 0}
    results = [
        {**base, "defense": "none", "evaluation": ev},
        {**base, "defense": "sampdetox", "evaluation": sub, "reference": ref},
    ]
    tables = bench_tables(results, ["none", "sampdetox"])
    cell = tables["cifar10"]["cells"]["badnets"]["sampdetox"]
    assert cell["ca_ref"]["mean"] == pytest.approx(88.0)
    assert cell["asr_ref"]["mean"] == pytest.approx(99.0)
    assert "ca_ref" not in tables["cifar10"]["cells"]["badnets"][NONE_LABEL]
    (e,) = effects(tables)
    assert e["same_images"] and e["ca_before"] == pytest.approx(88.0)
    assert effect_lines(tables) == [
        "cifar10 badnets: sampdetox took ASR from 99.0% to 0.0%, CA 88.0% -> 71.0% on its "
        "test subset (cost 17.0 points)"
    ]
    assert "sampdetox: on a seeded subset of the test images (purify_limit), where the " \
        "undefended victim's CA is 88.00" in bench_markdown(tables)  # fmt: skip


def test_detect_only_reports_detection_without_retraining(tmp_path):
    """``detect_only``: a detector's cell scores and cuts, keeps its detection figures and
    retrains nothing (no evaluation, no retraining record); the tables give it AUROC /
    TPR / FPR and no CA / PA / ASR, and the report still renders."""
    from detox.bench.runner import run_bench

    text = TINY.replace('defenses = ["ultraclean"]', 'defenses = ["spectral"]').replace(
        'attacks = ["badnets", "blended"]', 'attacks = ["badnets:ratio=0.2"]'
    )
    cfg = load_bench_config(write(tmp_path, text + "detect_only = true\n"))
    res = run_bench(cfg, tmp_path / "o", progress=False)
    cells = {r["defense"]: r for r in res["results"]}
    det = cells["spectral"]
    assert det["evaluation"] is None and det["defense_info"]["retrain"] is None
    rep = det["detection"]["per_attack"]["badnets"]
    assert rep["n_poison"] == 60 and rep["removed"] == round(0.15 * 300)
    table = res["tables"]["cifar10"]["cells"]["badnets:ratio=0.2"]
    assert set(table["spectral"]) == {"auroc", "tpr", "fpr"}
    assert table["spectral"]["auroc"]["mean"] == pytest.approx(100 * rep["auroc"])
    assert "ca" in table["no defense"]
    assert (tmp_path / "o" / "report.html").is_file()
    assert "spectral" in (tmp_path / "o" / "tables.md").read_text()
