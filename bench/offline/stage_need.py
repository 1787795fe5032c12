"""Helpers of stage_serve.sh.

    python3 stage_need.py REPORT.json DEVICE_PACKAGES.txt   # print name==version the device lacks
    python3 stage_need.py --repack SRC DST                  # rewrite SRC/*.whl uncompressed into DST
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path


def need(report: Path, device: Path) -> list[str]:
    from packaging.utils import canonicalize_name

    have = {canonicalize_name(n) for n in device.read_text().split()}
    items = json.loads(report.read_text())["install"]
    out = []
    for item in sorted(items, key=lambda i: canonicalize_name(i["metadata"]["name"])):
        name = canonicalize_name(item["metadata"]["name"])
        if name not in have:
            out.append(f"{name}=={item['metadata']['version']}")
    return out


def repack(src: Path, dst: Path) -> None:
    """Same members and RECORD, stored instead of deflated: xz then sees the raw bytes."""
    dst.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(src.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zi, zipfile.ZipFile(dst / wheel.name, "w", zipfile.ZIP_STORED) as zo:
            for info in zi.infolist():
                out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                out.external_attr, out.create_system = info.external_attr, info.create_system
                with zi.open(info) as f, zo.open(out, "w", force_zip64=True) as g:
                    shutil.copyfileobj(f, g, 1 << 20)


if __name__ == "__main__":
    if sys.argv[1] == "--repack":
        repack(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        print("\n".join(need(Path(sys.argv[1]), Path(sys.argv[2]))))
