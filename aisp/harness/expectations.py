"""Expected speed-ups per hardware, and the verdict of a run against them.

`<chapter>/expectations_<hardware_key>.json`:

    {"schema_version": 1, "hardware_key": "h200",
     "pairs": {"flash_sdp[b4_s4096]": {
         "speedup": 27.1,             baseline median / optimized median, measured in one run
         "tolerance": 0.1,            relative band accepted as 'ok' (hand-editable)
         "speedup_rel_noise": 0.01,   the recording run's own noise on that ratio
         "metrics": {...},            medians, rates, roofline fractions, peak memory
         "workload": {...},           sizes and dtype: a different workload is not comparable
         "provenance": {...}}}}       date, git sha, device, driver, versions, command

The run's noise on the speed-up is ±2 x `speedup_rel_noise` (half the p10–p90 widths of both
sides, combined). When that is wider than the entry's tolerance the run cannot tell a change of
the size the tolerance guards, so the verdict is 'inconclusive' — never 'ok' or 'improved' —
unless the speed-up lies below even the noise band, which is a regression whatever the noise.
(Widening the band by the run's noise instead once reached ±466% on a loaded machine, and a row
that went from 0.34x to 19.67x was called 'improved'.) Otherwise the verdict is 'regressed' or
'improved' when the measured speed-up leaves a band as wide as the larger of the tolerance and
twice the recorded noise, and 'ok' inside it.
Updating writes only rows that verified; a failed row keeps its old entry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
DEFAULT_TOLERANCE = 0.10


class ExpectationsError(ValueError):
    """The expectations file is unreadable or malformed; the message names file and problem."""


@dataclass(frozen=True)
class Verdict:
    # ok | improved | regressed | inconclusive | new | workload-changed | failed
    status: str
    expected_speedup: float | None = None
    ratio: float | None = None  # measured / expected
    band: float | None = None
    message: str = ""
    noise: float | None = None  # this run's noise band on the speed-up (2 x rel. noise)

    @property
    def label(self) -> str:
        """The status as the table shows it; 'inconclusive' carries the noise that made it so."""
        if self.status == "inconclusive" and self.noise is not None:
            return f"inconclusive (noise ±{self.noise:.0%})"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        return dict(status=self.status, label=self.label, expected_speedup=self.expected_speedup,
                    ratio=self.ratio, band=self.band, noise=self.noise, message=self.message)


def expectations_path(chapter_dir: Path, hardware_key: str) -> Path:
    return chapter_dir / f"expectations_{hardware_key}.json"


def _validate_entry(path: Path, key: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise ExpectationsError(f"{path}: entry '{key}' must be an object, got {type(entry).__name__}")
    for field_name in ("speedup", "tolerance"):
        value = entry.get(field_name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or value <= 0:
            raise ExpectationsError(f"{path}: entry '{key}' field '{field_name}' must be a "
                                    f"positive number, got {value!r}")
    if not isinstance(entry.get("workload", {}), dict):
        raise ExpectationsError(f"{path}: entry '{key}' field 'workload' must be an object")


def load(path: Path, hardware_key: str | None = None) -> dict[str, Any]:
    """Read and validate a file; a missing file is an empty set of expectations."""
    if not path.exists():
        return {"schema_version": SCHEMA_VERSION, "hardware_key": hardware_key, "pairs": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExpectationsError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: "
                                f"{e.msg}); fix it or delete the file and rerun with "
                                f"--update-expectations") from e
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), dict):
        raise ExpectationsError(f"{path}: expected an object with a 'pairs' object at top level")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ExpectationsError(f"{path}: schema_version {data.get('schema_version')!r} is not "
                                f"the supported {SCHEMA_VERSION}")
    if hardware_key and data.get("hardware_key") not in (None, hardware_key):
        raise ExpectationsError(f"{path}: written for hardware '{data.get('hardware_key')}', "
                                f"but this run is on '{hardware_key}'")
    for key, entry in data["pairs"].items():
        _validate_entry(path, key, entry)
    return data


def judge(entry: dict[str, Any] | None, *, verified: bool, speedup: float | None,
          speedup_rel_noise: float, workload: dict[str, Any]) -> Verdict:
    """Compare one measured row with its expectation entry."""
    if not verified or speedup is None:
        return Verdict("failed", message="not verified: no comparison with expectations")
    if entry is None:
        return Verdict("new", message="no expectation recorded for this hardware")
    expected = float(entry["speedup"])
    if entry.get("workload", {}) != workload:
        return Verdict("workload-changed", expected_speedup=expected,
                       message="workload sizes differ from the recorded ones; rerun with "
                               "--update-expectations to record the new workload")
    tolerance = float(entry["tolerance"])
    recorded = 2 * float(entry.get("speedup_rel_noise", 0.0))
    noise = 2 * speedup_rel_noise
    ratio = speedup / expected
    measured = f"{speedup:.2f}x vs expected {expected:.2f}x"
    if noise > tolerance:
        band = max(noise, recorded)
        if ratio < 1 - band:
            return Verdict("regressed", expected_speedup=expected, ratio=ratio, band=band,
                           noise=noise, message=f"{measured}: below even this run's noise band "
                                                f"(±{band:.0%})")
        return Verdict("inconclusive", expected_speedup=expected, ratio=ratio, band=band,
                       noise=noise,
                       message=f"{measured}, but this run's noise (±{noise:.0%}) exceeds the "
                               f"tolerance (±{tolerance:.0%}), so it cannot tell; rerun on a "
                               f"quieter machine or with more --iterations")
    band = max(tolerance, recorded)
    if ratio < 1 - band:
        status = "regressed"
    elif ratio > 1 + band:
        status = "improved"
    else:
        status = "ok"
    return Verdict(status, expected_speedup=expected, ratio=ratio, band=band, noise=noise,
                   message=f"{measured} (band ±{band:.0%}, noise ±{noise:.0%})")


def update(path: Path, hardware_key: str, rows: list[dict[str, Any]],
           provenance: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Rewrite entries for verified rows; return (updated keys, refused keys).

    Each row needs: key, verified (bool), error (str|None), speedup, speedup_rel_noise,
    workload, metrics. An existing entry's hand-set tolerance is kept.
    """
    data = load(path, hardware_key)
    data["hardware_key"] = hardware_key
    updated, refused = [], []
    for row in rows:
        if not row.get("verified") or row.get("error") or row.get("speedup") is None:
            refused.append(row["key"])
            continue
        old = data["pairs"].get(row["key"], {})
        data["pairs"][row["key"]] = {
            "speedup": round(float(row["speedup"]), 4),
            "tolerance": float(old.get("tolerance", DEFAULT_TOLERANCE)),
            "speedup_rel_noise": round(float(row["speedup_rel_noise"]), 4),
            "metrics": row.get("metrics", {}),
            "workload": row.get("workload", {}),
            "provenance": provenance,
        }
        updated.append(row["key"])
    if updated:
        data["pairs"] = dict(sorted(data["pairs"].items()))
        path.write_text(json.dumps(data, indent=2) + "\n")
    return updated, refused
