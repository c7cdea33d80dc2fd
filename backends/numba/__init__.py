"""The Numba backend. Importing this package points numba's on-disk kernel cache at a writable
folder before numba itself is imported (it reads ``NUMBA_CACHE_DIR`` once)."""

import os
from pathlib import Path


def _cache_dir() -> None:
    """Kernels are cached beside their module; when the package folder is read-only the cache goes to
    ``~/.cache/attngraph/numba`` (or ``$NUMBA_CACHE_DIR``)."""
    if "NUMBA_CACHE_DIR" in os.environ or os.access(Path(__file__).parent, os.W_OK):
        return
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attngraph" / "numba"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(path)


_cache_dir()
