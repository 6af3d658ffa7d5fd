"""A screenshot of a run's report.html in headless Chromium (Debian's chromium, driven by
playwright), for the README: the top of the page as a reader first sees it.

    python scripts/screenshot_report.py runs/demo-CartPole-v1-s0 docs/report-demo.png
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--height", type=int, default=1600, help="pixels of the page kept")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    page_file = (args.run_dir / "report.html").resolve()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": args.height})
            page.goto(page_file.as_uri(), wait_until="load")
            shot = page.screenshot(full_page=False)
        finally:
            browser.close()
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=128).save(args.png, optimize=True)
    print(f"wrote {args.png} ({args.png.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
