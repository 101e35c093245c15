"""Make docs/screenshot.jpg, the extension's catalog picture, from a real analysis.

The picture is the case's preview.png from ``chestctmtl analyze`` of the public sample CT
(PyRadiomics ``lung1``, BSD-3, fetched by the set-up) with the bundled model, saved as JPEG so
that it stays small (the Extensions Index downloads it; a PNG of the grey-level slices is
about 430 KB). Top-level CMakeLists.txt (EXTENSION_SCREENSHOTURLS) and README.md show it.

    .venv/bin/python scripts/make_screenshot.py [--output docs/screenshot.jpg]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ChestCTMTL"), str(REPO)]

JPEG_QUALITY = 88


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "screenshot.jpg")
    args = parser.parse_args(argv)

    from PIL import Image

    from ChestCTMTLLib.sample_data import sample_path
    from ChestCTMTLMRML import batch, files

    with tempfile.TemporaryDirectory() as scratch:
        outcomes = batch.analyze_inputs([sample_path("lung1_image.nrrd")], scratch, device="cpu",
                                        progress_bar=False)
        if not outcomes[0].ok:
            print("analysis failed: {}".format(outcomes[0].error), file=sys.stderr)
            return 1
        image = Image.open(str(outcomes[0].case_dir / files.PREVIEW_FILE)).convert("RGB")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        partial = args.output.with_name("." + args.output.name + ".partial")
        image.save(str(partial), format="JPEG", quality=JPEG_QUALITY, optimize=True,
                   progressive=True)
        os.replace(str(partial), str(args.output))
    print("{} ({} KB)".format(args.output, args.output.stat().st_size // 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
