"""Trim the bitsandbytes wheel to one CUDA library, so the device run's wheels fit in 60 MiB.

    python scripts/trim_wheel.py wheels/bitsandbytes-0.50.2-*.whl --keep-cuda 130

The wheel ships one libbitsandbytes_cuda<NNN>.so per CUDA version (about 43 MB in all); the
machine's torch uses one (torch.version.cuda "13.0" -> 130). The others are dropped from the
archive and from its RECORD, as are the ROCm and XPU ones; the CPU library stays. The wheel is rewritten in place.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import zipfile
from pathlib import Path


def trim(wheel: Path, keep_cuda: str) -> tuple[int, int]:
    """Rewrite `wheel` without the CUDA libraries other than cuda<keep_cuda>; returns (bytes before, after)."""
    before = wheel.stat().st_size

    def dropped(name: str) -> bool:
        if re.search(r"libbitsandbytes_(rocm|xpu)\d+\.(so|dll)$", name):  # AMD and Intel GPUs: not this machine
            return True
        m = re.search(r"libbitsandbytes_cuda(\d+)\.(so|dll|dylib)$", name)
        return m is not None and m.group(1) != keep_cuda

    with tempfile.TemporaryDirectory() as tmp:
        trimmed = Path(tmp) / wheel.name
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if dropped(item.filename):
                    continue
                data = src.read(item.filename)
                if item.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(ln for ln in lines if not dropped(ln.split(",")[0])).encode()
                dst.writestr(item, data)
        shutil.move(trimmed, wheel)
    return before, wheel.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--keep-cuda", required=True, help="CUDA version digits to keep, e.g. 130 for CUDA 13.0")
    args = parser.parse_args()
    before, after = trim(args.wheel, args.keep_cuda)
    print(f"{args.wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
