"""Writing candidate manifests for tests."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"

SLEEPER = """import sys, time
time.sleep({seconds})
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write("# Done\\n\\nobjective: " + sys.argv[1] + "\\n")
print("[Sleeper] done after {seconds}s")
"""


def write_manifest(directory: Path, scripts: dict[str, str], header: str = "") -> Path:
    """One candidate per ``id -> script source``; returns the manifest path."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [header] if header else []
    for cid, source in scripts.items():
        (directory / f"{cid}.py").write_text(source, encoding="utf-8")
        lines += ["[[candidate]]", f'id = "{cid}"', f'name = "Candidate {cid}"',
                  f'script = "{cid}.py"', ""]
    path = directory / "candidates.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def sleepers(directory: Path, n: int, seconds: float = 1.0, header: str = "") -> Path:
    return write_manifest(directory, {f"s{i:03d}": SLEEPER.format(seconds=seconds)
                                      for i in range(n)}, header)
