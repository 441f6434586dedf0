"""Installing a project's requirements that are only its own pure-Python wheels, without pip.

pip spends most of a second importing itself and resolving before it unpacks a wheel
that needs no resolving. A requirements file that lists only wheel files shipped with
the project, each pure (``py3-none-any``), without dependencies, scripts, data or
symlinks, is installed by extracting each wheel into the sandbox's site-packages and
marking who installed it, as pip would leave it. Anything else exits ``NOT_HANDLED``
and pip installs the requirements as before.

This file is a program run inside the sandbox, not imported by the worker: the
lifecycle sends its source as ``python3 -I -c <source> <requirements file>``, run in
the project's directory as the candidate's uid, under its limits and network policy.
Standard library only; ``-I`` keeps the project's own files off ``sys.path``.
"""

import os
import sys
import sysconfig
import zipfile
from email.parser import Parser

NOT_HANDLED = 3  # not only plain local wheels: let pip do it
INSTALLER = "dream-foundry"
_S_IFMT, _S_IFLNK = 0o170000, 0o120000


def wheel_paths(requirement_files: list[str]) -> list[str] | None:
    """The wheel files the requirements name, or None unless every requirement is a
    plain relative path to a ``.whl`` (no options, markers, extras, URLs or variables)."""
    paths: list[str] = []
    for name in requirement_files:
        try:
            with open(name, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if (not line.endswith(".whl") or line.startswith(("-", "/")) or ":" in line
                    or any(c in line for c in " \t;[]$@#\\") or ".." in line.split("/")):
                return None
            paths.append(line)
    return paths or None


def _pure_tag(tag: str) -> bool:
    parts = tag.strip().split("-")
    if len(parts) != 3 or parts[1:] != ["none", "any"]:
        return False
    mine = {"py3", f"py{sys.version_info.major}{sys.version_info.minor}"}
    return bool(mine & set(parts[0].split(".")))


def plan(path: str, site: str) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo], str] | None:
    """(the open wheel, the files to extract, its .dist-info) when it qualifies."""
    try:
        wheel = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        return None
    files = [i for i in wheel.infolist() if not i.is_dir()]
    tops = {i.filename.split("/", 1)[0] for i in files}
    infos = [t for t in tops if t.endswith(".dist-info")]
    if len(infos) != 1 or any(t.endswith(".data") for t in tops):
        return None
    info = infos[0]
    try:
        meta = Parser().parsestr(wheel.read(f"{info}/WHEEL").decode("utf-8"))
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode("utf-8"))
        entry_points = (wheel.read(f"{info}/entry_points.txt").decode("utf-8")
                        if f"{info}/entry_points.txt" in wheel.namelist() else "")
    except (KeyError, UnicodeDecodeError):
        return None
    tags = meta.get_all("Tag") or []
    if (meta.get("Root-Is-Purelib", "").strip().lower() != "true" or not tags
            or not all(_pure_tag(t) for t in tags) or metadata.get_all("Requires-Dist")
            or metadata.get("Requires-Python") or "_scripts]" in entry_points):
        return None
    for i in files:
        name = i.filename
        if (name.startswith("/") or "\\" in name or ".." in name.split("/")
                or (i.external_attr >> 16) & _S_IFMT == _S_IFLNK
                or os.path.lexists(os.path.join(site, name))):
            return None
    return wheel, files, info


def install(wheel: zipfile.ZipFile, files: list[zipfile.ZipInfo], info: str, site: str) -> None:
    for i in files:
        dest = os.path.join(site, i.filename)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with wheel.open(i) as src, open(dest, "xb") as out:
            while chunk := src.read(1 << 16):
                out.write(chunk)
    with open(os.path.join(site, info, "INSTALLER"), "w", encoding="utf-8") as fh:
        fh.write(INSTALLER + "\n")
    with open(os.path.join(site, info, "RECORD"), "a", encoding="utf-8") as fh:
        fh.write(f"{info}/INSTALLER,,\n")


def main(argv: list[str]) -> int:
    site = sysconfig.get_paths()["purelib"]
    paths = wheel_paths(argv)
    planned = [plan(p, site) for p in paths] if paths else [None]
    if any(p is None for p in planned):
        return NOT_HANDLED
    names = set()
    for _wheel, files, info in planned:
        if info in names or names & {i.filename for i in files}:
            return NOT_HANDLED  # the same wheel twice, or two writing one file
        names |= {info, *(i.filename for i in files)}
    for (wheel, files, info), path in zip(planned, paths, strict=True):
        install(wheel, files, info, site)
        print(f"Installed {info.removesuffix('.dist-info')} from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
