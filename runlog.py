"""What a run records about itself: its CSV log (resumable), the code version (git commit) and the installed
environment (environment.txt in the run folder)."""
from __future__ import annotations

import csv
import io
import os
import subprocess
from pathlib import Path

import torch

from files import append_text, atomic_write_text


def git_commit() -> str:
    """The package's git commit (with '+dirty' for uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment_installed() -> str:
    """What ran the run, as text: Python, platform, torch's CUDA/cuDNN, then every installed distribution as
    `name==version` (pip freeze's form, so `pip install --no-deps -r` of the lines re-creates it)."""
    import importlib.metadata
    import platform

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines = [f"# python {platform.python_version()} on {platform.platform()}",
             f"# torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}"]
    dists = {(d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()}
    return "\n".join(lines + [f"{name}=={version}" for name, version in sorted(dists.items()) if name]) + "\n"


def record_environment(out_dir: Path, step: int) -> None:
    """environment.txt in the run folder; a resume under other versions adds environment_step<N>.txt."""
    text, path = environment_installed(), out_dir / "environment.txt"
    if path.is_file() and path.read_text() != text:
        path = out_dir / f"environment_step{step}.txt"
    if not path.is_file():
        atomic_write_text(text, path)


class CSVLog:
    """Append rows to a CSV file; on resume, rows at or after `resume_step` are dropped first (atomically), and
    the columns are the file's followed by any new ones (a resumed run may log more, e.g. a monitor)."""

    def __init__(self, path: str | os.PathLike, fields: list[str], resume_step: int | None = None):
        self.path, self.fields = Path(path), fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            with open(self.path) as f:
                reader = csv.DictReader(f)
                kept = [r for r in reader if int(r["step"]) < resume_step]
                self.fields = list(reader.fieldnames or []) + [k for k in fields if k not in (reader.fieldnames or [])]
            text = io.StringIO()
            writer = csv.DictWriter(text, self.fields, restval="")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(text.getvalue(), self.path)
        else:
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fields).writeheader()

    def write(self, row: dict) -> None:
        text = io.StringIO()
        csv.DictWriter(text, self.fields, restval="").writerow(
            {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        append_text(text.getvalue(), self.path)
