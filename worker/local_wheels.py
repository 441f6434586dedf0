"""Installing a project's requirements that are only its own pure-Python wheels, without pip.

pip spends most of a second importing itself and resolving before it unpacks a wheel
that needs no resolving. A requirements file that lists only wheel files shipped with
the project, each pure (``py3-none-any``), without dependencies, scripts, data or
symlinks, is installed by extracting each wheel into the sandbox's site-packages and
marking who installed it, as pip would leave it. Anything else exits ``NOT_HANDLED``
and pip installs the requirements as before.

Where the worker cannot write a sandbox's files (Daytona), this file is the program the
lifecycle runs there: its source as ``python3 -I -c <source> <requirements file>``, in
the project's directory as the candidate's uid, under its limits and network policy
(standard library only; ``-I`` keeps the project's own files off ``sys.path``). A local
sandbox applies the same rules from the host (worker/sandbox/local/wheels.py).
"""

import os
import sys
import sysconfig
import zipfile
from email.parser import Parser

NOT_HANDLED = 3  # not only plain local wheels: let pip do it
INSTALLER = "dream-foundry"
_S_IFMT, _S_IFLNK = 0o170000, 0o120000


def parse(text: str) -> list[str] | None:
    """The wheel files a requirements file names, or None unless every requirement is a
    plain relative path to a ``.whl`` (no options, markers, extras, URLs or variables)."""
    paths: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if (not line.endswith(".whl") or line.startswith(("-", "/")) or ":" in line
                or any(c in line for c in " \t;[]$@#\\") or ".." in line.split("/")):
            return None
        paths.append(line)
    return paths or None


def wheel_paths(requirement_files: list[str]) -> list[str] | None:
    """``parse`` of every file (relative to the working directory, as pip reads them)."""
    paths: list[str] = []
    for name in requirement_files:
        try:
            with open(name, encoding="utf-8") as fh:
                found = parse(fh.read())
        except (OSError, UnicodeDecodeError):
            return None
        if found is None:
            return None
        paths += found
    return paths or None


def _pure_tag(tag: str) -> bool:
    parts = tag.strip().split("-")
    if len(parts) != 3 or parts[1:] != ["none", "any"]:
        return False
    mine = {"py3", f"py{sys.version_info.major}{sys.version_info.minor}"}
    return bool(mine & set(parts[0].split(".")))


def plan(source, site: str, max_bytes: int | None = None
         ) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo], str] | None:
    """(the open wheel, the files to extract, its .dist-info) when it qualifies.
    ``source``: a path or a binary file; ``max_bytes``: a cap on its files' total size."""
    try:
        wheel = zipfile.ZipFile(source)
    except (OSError, zipfile.BadZipFile):
        return None
    files = [i for i in wheel.infolist() if not i.is_dir()]
    if max_bytes is not None and sum(i.file_size for i in files) > max_bytes:
        return None
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
        if (not name or "\x00" in name or name.startswith("/") or "\\" in name
                or any(p in ("", ".", "..") for p in name.split("/"))
                or (i.external_attr >> 16) & _S_IFMT == _S_IFLNK
                or os.path.lexists(os.path.join(site, name))):
            return None
    return wheel, files, info


def _directory(site: str, rel: str, uid: int | None) -> None:
    """``site/rel``, made one level at a time (each new level owned by ``uid``)."""
    path = site
    for part in filter(None, rel.split("/")):
        path = os.path.join(path, part)
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
            if uid is not None:
                os.chown(path, uid, uid)


def install(wheel: zipfile.ZipFile, files: list[zipfile.ZipInfo], info: str, site: str,
            uid: int | None = None) -> None:
    """Extract ``files`` into ``site`` (new files only, each no larger than the wheel says,
    owned by ``uid``), then record who installed them."""
    for i in files:
        _directory(site, os.path.dirname(i.filename), uid)
        fd = os.open(os.path.join(site, i.filename),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with wheel.open(i) as src, os.fdopen(fd, "wb") as out:
            if uid is not None:
                os.fchown(fd, uid, uid)
            left = i.file_size
            while chunk := src.read(1 << 16):
                left -= len(chunk)
                if left < 0:
                    raise OSError(f"{i.filename}: larger than the wheel says")
                out.write(chunk)
    for name, line in (("INSTALLER", INSTALLER + "\n"), ("RECORD", f"{info}/INSTALLER,,\n")):
        path = os.path.join(site, info, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            if uid is not None:
                os.fchown(fd, uid, uid)
            fh.write(line)


def install_listed(paths: list[str], open_wheel, site: str, uid: int | None = None,
                   max_bytes: int | None = None, max_files: int | None = None
                   ) -> list[str] | None:
    """Install the wheels at ``paths`` (each opened by ``open_wheel(path)``: a binary
    file, or None) into ``site``; a line per wheel, or None, with nothing written, when
    any does not qualify, two would write one file, or together they pass ``max_bytes``
    or ``max_files``."""
    planned, opened, names = [], [], set()
    try:
        for path in paths:
            opened.append(open_wheel(path))
            wheel = plan(opened[-1], site, max_bytes) if opened[-1] is not None else None
            if wheel is None:
                return None
            files, info = wheel[1], wheel[2]
            if info in names or names & {i.filename for i in files}:
                return None  # the same wheel twice, or two writing one file
            names |= {info, *(i.filename for i in files)}
            if max_bytes is not None:
                max_bytes -= sum(i.file_size for i in files)
            if max_files is not None:
                max_files -= len(files)
                if max_files < 0:
                    return None
            planned.append(wheel)
        lines = []
        for (wheel, files, info), path in zip(planned, paths, strict=True):
            install(wheel, files, info, site, uid)
            lines.append(f"Installed {info.removesuffix('.dist-info')} from {path}")
        return lines
    finally:
        for fh in opened:  # a ZipFile leaves a file it was handed open
            if fh is not None:
                fh.close()


def _open(path: str):
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by install_listed
    except OSError:
        return None


def main(argv: list[str]) -> int:
    paths = wheel_paths(argv)
    lines = install_listed(paths, _open, sysconfig.get_paths()["purelib"]) if paths else None
    if lines is None:
        return NOT_HANDLED
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
