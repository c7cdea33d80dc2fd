"""Atomic file writes: a temporary file in the same folder, flushed, then renamed over the target.

A process killed mid-save leaves its temporary behind (``.{name}.XXXXXXXX.tmp`` here, a folder
``.{name}.XXXXXXXX`` from ``export_onnx``), up to a gigabyte of weights each. Every save removes the
ones in its folder that match those patterns exactly and are older than ``STALE_AFTER_S``: a temporary
that young may belong to a save still running in another process.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

EXTERNAL_DATA_BYTES = 1 << 30  # ONNX weights above this go to a side file (protobuf caps a file at 2 GiB)
STALE_AFTER_S = 600.0  # no save takes 10 minutes between two writes to its temporary
# tempfile.mkstemp / mkdtemp put 8 characters of this alphabet between our prefix and suffix
_RANDOM = r"[a-z0-9_]{8}"
_TEMP_FILE = re.compile(rf"^\.(?P<name>.+)\.{_RANDOM}\.tmp$")
_TEMP_DIR = re.compile(rf"^\.(?P<name>.+)\.{_RANDOM}$")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write_bytes`` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_onnx(model, path: str | os.PathLike, *, external_data: bool, check=None,
                     keep_model: bool = True) -> Path:
    """Write the ONNX ``model`` to ``path`` atomically: into a temporary folder beside it, then ``check(tmp_path)``
    (if given: it may raise to abandon the save), then renamed over ``path``, with ``<name>.data`` when
    ``external_data``. Inline models are serialised deterministically (byte-reproducible). onnx's external-data
    save moves the tensors out of the proto it is given: ``keep_model=False`` lets it use ``model`` itself
    (no copy of the weights) when the caller has no further use for it."""
    import onnx

    from attngraph.errors import AttnGraphError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)  # what killed saves left here (a temp folder may hold 1 GB of weights)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise AttnGraphError(f"cannot write the ONNX file {str(path)!r}: {e.strerror or e}; "
                             "choose a writable folder") from None
    try:
        tmp = tmpdir / path.name
        if external_data:
            if keep_model:
                model, original = onnx.ModelProto(), model
                model.CopyFrom(original)
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data", size_threshold=1024)
        else:
            tmp.write_bytes(model.SerializeToString(deterministic=True))
        if check is not None:
            check(str(tmp))
        if external_data:
            os.replace(tmpdir / f"{path.name}.data", path.parent / f"{path.name}.data")
        os.replace(tmp, path)
    except OSError as e:
        raise AttnGraphError(f"cannot write the ONNX file {str(path)!r}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def remove_stale_temps(folder: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what killed saves left in ``folder``: our temporary files, and ``export_onnx``'s temporary
    folders holding nothing but ``{name}`` and ``{name}.data``, untouched for ``older_than_s``. Best
    effort (a save never fails because of it); returns what was removed."""
    removed = []
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if (_is_our_temp_file(entry) or _is_our_temp_dir(entry)) and _newest_mtime(entry) < cutoff:
                shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
    return removed


def _is_our_temp_file(entry: os.DirEntry) -> bool:
    return bool(_TEMP_FILE.match(entry.name)) and entry.is_file(follow_symlinks=False)


def _is_our_temp_dir(entry: os.DirEntry) -> bool:
    """Only a folder in our layout: removing another program's folder would lose its data."""
    match = _TEMP_DIR.match(entry.name)
    if not match or not entry.is_dir(follow_symlinks=False):
        return False
    ours = {match["name"], f"{match['name']}.data"}
    return all(e.name in ours and e.is_file(follow_symlinks=False) for e in os.scandir(entry.path))


def _newest_mtime(entry: os.DirEntry) -> float:
    """A folder counts as in use while any file in it is still being written."""
    times = [entry.stat(follow_symlinks=False).st_mtime]
    if entry.is_dir(follow_symlinks=False):
        times += [e.stat(follow_symlinks=False).st_mtime for e in os.scandir(entry.path)]
    return max(times)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
