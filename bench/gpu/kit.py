"""The wheels the device machine lacks for bench/gpu/run.sh, into .whl/ (ignored by git): for
CPython 3.12 on x86-64 Linux, at the versions constraints.txt pins, without their dependencies
(bench/gpu/wheels.txt names each one needed).

    python3 bench/gpu/kit.py            # then: device run, carry [".whl"], command bench/gpu/run.sh

The `device` tool sends the working tree and the carried paths, 64 MiB in all: the kit must leave
room for the tree (about 4 MB), so it stops with an error past KIT_LIMIT_BYTES.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / ".whl"
KIT_LIMIT_BYTES = 58 * 1024 * 1024
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)] + ["manylinux2014_x86_64"]


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            found[normalised(name)] = f"{name}=={version}"
    return found


def wanted() -> list[str]:
    lines = (ROOT / "bench" / "gpu" / "wheels.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def main() -> int:
    pinned = pins()
    missing = [name for name in wanted() if normalised(name) not in pinned]
    if missing:
        print(f"not pinned in constraints.txt: {', '.join(missing)}", file=sys.stderr)
        return 1
    KIT.mkdir(exist_ok=True)
    for old in KIT.glob("*.whl"):
        old.unlink()
    requirements = [pinned[normalised(name)] for name in wanted()]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(KIT)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *requirements], check=True)
    total = sum(path.stat().st_size for path in KIT.glob("*.whl"))
    print(f"{len(requirements)} wheels, {total / 1e6:.1f} MB in {KIT}")
    if total > KIT_LIMIT_BYTES:
        print(f"over {KIT_LIMIT_BYTES / 1e6:.0f} MB: the device tool would refuse the tree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
