"""``--rows``: which of a benchmark's rows to run."""

from __future__ import annotations

from muomni.errors import ConfigError


def wanted_rows(names: str | None, known: list[str]) -> list[str]:
    """The rows named in ``names`` (comma-separated), all of ``known`` when None; an unknown name is an error."""
    if not names:
        return list(known)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"unknown bench row {unknown[0]!r}; rows here: {', '.join(known)}")
    return wanted
