"""Files that travel with the package: the shipped configs and ablation grids, found from a checkout or a wheel."""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent  # mmrope/configs holds the repository's configs/


def find_config(path: str | Path) -> Path:
    """``path`` when it exists; otherwise, for a path under ``configs/``, the copy installed with the package, so that
    ``--config configs/debug.yaml`` also works from an installed wheel in any folder. Unchanged when neither exists
    (the caller then says the file is missing)."""
    path = Path(path)
    if path.exists() or path.is_absolute() or not path.parts or path.parts[0] != "configs":
        return path
    shipped = SHIPPED / path
    return shipped if shipped.exists() else path
