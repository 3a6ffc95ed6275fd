"""The manifest of an annotation folder, protected by checksums of its own content.

``manifest.json`` says where every exported patch came from (source file, z, y, x), how its
pixels were normalised and the content hash of its image. Editing any of this by hand would
silently change the pixels or the provenance of the patches read back, so the manifest
carries two checks of its own:

* ``entry["check"]``: one short digest per protected field of a patch entry, in the fixed
  order of :data:`PROTECTED`, so an edit names the patch and the field that changed;
* ``manifest["checksum"]``: a sha256 of the canonical JSON of the whole manifest minus this
  field, so added, removed or reordered entries and top-level edits are caught too.

These detect accidental and hand edits; they are not a signature (anyone can recompute them).
A manifest written before checksums existed still reads, with a warning that it cannot be
verified.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from .._io import atomic_write_text

FORMAT = "biodatacentric-annotations"
VERSION = 2
PROTECTED = ("id", "image", "mask", "source", "z", "y", "x", "height", "width", "raw_dtype", "sha256",
             "normalization", "start_mask", "start_mask_sha256")

_warned_unverified: set[str] = set()


class ManifestEditedError(ValueError):
    """``manifest.json`` differs from what export wrote (it was edited by hand or by a tool)."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _field_digest(name: str, value: Any) -> str:
    return hashlib.sha256(name.encode() + b"=" + _canonical(value)).hexdigest()[:8]


def entry_check(entry: dict) -> str:
    """The per-field digests of a patch entry, joined with dots (missing fields hash as null)."""
    return ".".join(_field_digest(k, entry.get(k)) for k in PROTECTED)


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the canonical JSON of ``manifest`` without its ``checksum`` field."""
    return hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k != "checksum"})).hexdigest()


def write_manifest(path: Path, manifest: dict) -> None:
    """Add the checks to ``manifest`` (in place) and write it atomically to ``path``."""
    for e in manifest["patches"]:
        e["check"] = entry_check(e)
    manifest["version"] = VERSION
    manifest.pop("checksum", None)
    manifest["checksum"] = manifest_checksum(manifest)
    atomic_write_text(path, json.dumps(manifest, indent=1))


def _edited_fields(entry: dict) -> list[str] | None:
    """Fields of ``entry`` whose digest differs from its ``check`` (None if no check is usable)."""
    check = entry.get("check")
    if not isinstance(check, str) or len(check.split(".")) != len(PROTECTED):
        return None
    return [k for k, d in zip(PROTECTED, check.split(".")) if _field_digest(k, entry.get(k)) != d]


def verify(manifest: dict, path: Path) -> None:
    """Raise :class:`ManifestEditedError` when ``manifest`` (read from ``path``) was edited."""
    entries = manifest.get("patches")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ManifestEditedError(f"{path}: 'patches' is not a list of patch entries; the manifest was "
                                  "edited or damaged -- restore it from a backup or re-export")
    if "checksum" not in manifest:
        key = str(Path(path).resolve())
        if key not in _warned_unverified:
            _warned_unverified.add(key)
            warnings.warn(f"{path} was written by an older biodatacentric without a checksum, so hand edits "
                          "to it (source, z/y/x, normalisation, hashes) cannot be detected; export again to "
                          "a new folder to get a protected manifest", UserWarning, stacklevel=4)
        return
    problems = []
    for e in entries:
        fields = _edited_fields(e)
        if fields is None:
            problems.append(f"patch {e.get('id')!r}: its 'check' field is missing or was edited")
        elif fields:
            problems.append(f"patch {e.get('id')!r}: {', '.join(fields)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ManifestEditedError(
            f"{path} was edited after export (the image files were not checked yet): fields changed in "
            f"{shown}. Edited provenance or normalisation would change the pixels or the origin of the "
            "patches read back; undo the edit (restore the manifest from a backup) or re-export")
    if manifest.get("checksum") != manifest_checksum(manifest):
        top = sorted(k for k in manifest if k not in ("patches", "checksum"))
        raise ManifestEditedError(
            f"{path} was edited after export: its checksum does not match its content (every patch entry "
            f"is intact, so a top-level field ({', '.join(top)}) or the 'checksum' itself was changed, "
            "or entries were added, removed or reordered). Undo the edit or re-export")
