"""``--rows``: which of a benchmark's rows to run."""

from __future__ import annotations

from muomni.errors import ConfigError


def named_rows(names: str | None) -> list[str] | None:
    """The names in ``names`` (comma-separated); None when not given, which means every row.

    Given but naming none (``--rows ""``) is an error: it once ran every row, an hour on a GPU, where
    the user meant a few.
    """
    if names is None:
        return None
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise ConfigError(f"--rows {names!r} names no row: give comma-separated row names, or leave --rows out for all")
    twice = sorted({n for n in wanted if wanted.count(n) > 1})
    if twice:  # two rows of one name would be two lines of the table that the ratios cannot tell apart
        raise ConfigError(f"--rows names {twice[0]!r} twice; name each row once")
    return wanted


def wanted_rows(names: str | None, known: list[str]) -> list[str]:
    """The rows named in ``names`` (comma-separated), all of ``known`` when None; an unknown name is an error."""
    wanted = named_rows(names)
    if wanted is None:
        return list(known)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"unknown bench row {unknown[0]!r}; rows here: {', '.join(known)}")
    return wanted
