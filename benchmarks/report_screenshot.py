"""Screenshot of a bench report in headless Chromium (the README's picture).

    python benchmarks/report_screenshot.py /tmp/demo-out/report.html docs/img/demo-report.png

Opens the report from the file system with playwright and the system Chromium
(``apt-get install chromium``), fails on any console error, and saves the top
``--height`` pixels at ``--width`` (a full page with ``--full``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1400)
    ap.add_argument("--full", action="store_true", help="the whole page")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        ap.error(f"{args.report}: no such report")
    chromium = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    if chromium is None:
        ap.error("no Chromium on PATH (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(args.report.resolve().as_uri())
        page.wait_for_load_state("load")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=args.full)
        browser.close()
    if errors:
        print("console errors:", *errors, sep="\n  ", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
