"""Pseudonymisation: patient, exam and image ids replaced by keyed hashes (HMAC-SHA256).

A key file (hex, mode 600) is made once and kept private, beside the manifest that still holds
the paths; the same key gives the same ids on every run. Stores, failure lists, results and
predictions then hold only `P-...`, `E-...` and `I-...` names (the manifest's `view_ref`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

PSEUDONYM_PREFIXES = {"patient": "P-", "exam": "E-", "image": "I-"}
KEY_BYTES = 32


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """A keyed hash naming a patient, exam or image: "P-", "E-" or "I-" + 16 hex digits.

    HMAC-SHA256 of "kind:value" under `key` (kind: "patient", "exam", "image"): stable for one
    key, so re-running a pseudonymisation gives the same ids, and not reversible without it.
    """
    digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIXES[kind] + digest[:16]


def read_or_create_key(path: str | os.PathLike) -> tuple[bytes, bool]:
    """The pseudonymisation key in `path` (hex text); created (32 random bytes, mode 0o600)
    when the file does not exist. Returns (key, created)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (key.hex() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return key, True
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(
            f"{path}: not a pseudonymisation key (expected {2 * KEY_BYTES} hex digits); give "
            "the key file made by the first pseudonymised run, or a new path to create one"
        )
    if path.stat().st_mode & 0o077:
        log.warning("%s: the key file is readable by other users; chmod 600 it", path)
    return key, False


def pseudonymise_images(images: list[dict[str, str]], key: bytes, out_dir: Path) -> None:
    """Replace patient and exam ids by keyed hashes and add `view_ref` per image, in place."""
    fields = (("patient_id", "patient_id"), ("exam_key", "exam_key"), ("file", "view_ref"))
    distinct = {raw: len({im[raw] for im in images}) for raw, _ in fields}
    for im in images:
        rel = Path(os.path.relpath(im["file"], out_dir)).as_posix()
        im["patient_id"] = pseudonym(key, "patient", im["patient_id"])
        im["exam_key"] = pseudonym(key, "exam", im["exam_key"])
        im["view_ref"] = pseudonym(key, "image", rel)
    for raw, field in fields:
        # 64-bit hashes: a collision would merge two patients; say so rather than hide it.
        if len({im[field] for im in images}) != distinct[raw]:
            raise ValueError(f"pseudonymisation: two {field} values hash alike; use another key")

