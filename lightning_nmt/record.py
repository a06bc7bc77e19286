"""The run record: what `metrics.json` in a run directory says. It is written and read only through this module
(`lnmt-train`, its sweeps, `lnmt-compare`).

The file is one flat JSON object, so that people and older tools read it as before: `schema_version`, `status`,
`seed`, `config_hash`, the results (`val`, `test`, `test_<set>`, `steps`, throughput, checkpoints, ...),
`val_history`, `wall_seconds`, `provenance` (code, packages, hardware), `data` (the corpus's fingerprint) and
`scoring` (how BLEU and chrF were computed). A failed job adds `error`, `error_type` and `step`; a duplicate job of
a sweep has `duplicate_of`. A file without `schema_version` (written before it existed) reads as version 1.
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning_nmt.atomic import atomic_write_text

SCHEMA_VERSION = 2
"""2: provenance, data fingerprint, seed and scoring added; 1: the files without `schema_version`."""
FILE = "metrics.json"
FINISHED, FAILED, DUPLICATE = "finished", "failed", "duplicate"


@dataclass
class RunRecord:
    """One job's outcome. `results` holds every key that is not a field (val, test, steps, ...), as written."""

    status: str
    seed: int | None = None
    config_hash: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    val_history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float | None = None
    error: str | None = None
    error_type: str | None = None
    step: int | None = None
    duplicate_of: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    scoring: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The flat object of `metrics.json` (what `lnmt-train` returns too); empty fields are left out."""
        out = {k: v for k, v in asdict(self).items() if k != "results" and v not in (None, {}, [])}
        return {"schema_version": self.schema_version, "status": self.status, **self.results, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record from a `metrics.json` object of any version (see the module docstring)."""
        known = {f.name for f in fields(cls)} - {"results"}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("schema_version", 1)
        if "status" not in values:  # version 1: a duplicate marker, or a finished job's metrics
            values["status"] = DUPLICATE if "duplicate_of" in data else FINISHED if "steps" in data else "unknown"
        elif "duplicate_of" in data:
            values["status"] = DUPLICATE
        return cls(**values, results={k: v for k, v in data.items() if k not in known})

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def best_val(self) -> dict[str, float]:
        """The validation whose checkpoint was tested (best BLEU), else the last one."""
        if self.val_history:
            return max(self.val_history, key=lambda v: v.get("bleu", float("-inf")))
        return self.results.get("val", {})

    def split(self, name: str) -> dict[str, Any]:
        """The scores of a split: `val` (best validation), `test`, `test_<set>`; {} when there are none."""
        return self.best_val() if name == "val" else self.results.get(name) or {}


def path(run_dir: str | Path) -> Path:
    return Path(run_dir) / FILE


def read(run_dir: str | Path) -> RunRecord | None:
    """The record of a run directory; None when it has no `metrics.json` (interrupted, or still running)."""
    file = path(run_dir)
    if not file.is_file():
        return None
    return RunRecord.from_dict(json.loads(file.read_text()))


def write(run_dir: str | Path, record: RunRecord) -> None:
    """Write `metrics.json` atomically (a kill leaves the previous file or the new one, never half of it)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path(run_dir), json.dumps(record.to_dict(), indent=2) + "\n")


# ---- what produced a run -----------------------------------------------------------------------------------------
def provenance(accelerator: str = "cpu") -> dict[str, Any]:
    """The code, packages and hardware of this process: package version, git commit (and whether the tree had
    changes), Python, torch, Lightning and CUDA versions, CPU model, GPU name (for a GPU run)."""
    import lightning
    import torch

    out: dict[str, Any] = {
        "package": _version("lightning-nmt"), **_git_state(Path(__file__).resolve().parents[1]),
        "python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
        "cuda": torch.version.cuda, "cpu": cpu_model(),
    }
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def hardware(record: RunRecord) -> str:
    """What the speed columns of a run depend on: its GPU's name, else its CPU model ('' when unknown)."""
    return record.provenance.get("gpu") or record.provenance.get("cpu") or ""


def cpu_model() -> str:
    """The CPU's model name (`lscpu`'s 'Model name'), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_state(source: Path) -> dict[str, Any]:
    """`git_commit` and `git_dirty` (tracked files changed) of the source tree; {} outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        return {"git_commit": git("rev-parse", "HEAD"),
                "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def same_data(a: RunRecord, b: RunRecord) -> bool:
    """Whether two runs read the same corpus (by content); runs without a fingerprint are not told apart."""
    return not a.data or not b.data or a.data.get("splits") == b.data.get("splits")
