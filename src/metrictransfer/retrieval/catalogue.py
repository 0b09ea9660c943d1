"""The items of an index and their metadata, in an SQLite file beside the vectors (``catalogue.sqlite``).

Every item has a stable id, never reused: adding items gives them new ids, removing one retires its id.
Changes are versioned by *generation* rather than applied in place: each row records the generation that
added it and the one that removed it, and ``index.json`` names the generation its other files hold. An
update writes the next generation's rows (committed by SQLite, durable) and files, then replaces
``index.json``; a crash before that leaves readers on the previous generation, whose view of the rows is
unchanged, and the next update first discards what the crashed one left (:meth:`Catalogue.discard_after`).

A search's ``where`` is a small filter language (``column = value``, ``!=``, ``<``, ``<=``, ``>``, ``>=``,
joined by ``and``), turned into parameterised SQL: no text from a request is ever part of the SQL itself.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from metrictransfer.errors import ConfigError, SearchIndexError
from metrictransfer.io import staged_path

CATALOGUE_FILE = "catalogue.sqlite"
BUILT_IN = ("id", "path", "label", "added", "removed")  # columns every catalogue has; metadata columns come after
_OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)\s*(\"[^\"]*\"|'[^']*'|[^\s'\"]+)\s*$")
_SAFE_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


_MAX_PARAMETERS = 900  # per statement: SQLite's limit is 999 in older builds


class ItemRecord(NamedTuple):
    """What the catalogue knows of one item."""

    path: str
    label: str | None
    metadata: dict[str, str]


def _quoted(column: str) -> str:
    """A column name as SQL reads it; names are checked against :data:`_SAFE_COLUMN` before they get here."""
    return f'"{column}"'


class Catalogue:
    """One index's catalogue file, opened for reading or for an update."""

    def __init__(self, path: Path, create_columns: Sequence[str] | None = None) -> None:
        self.path = path
        if create_columns is None and not path.is_file():
            raise SearchIndexError(f"{path} is missing: the index's item catalogue")
        self.db = sqlite3.connect(path, check_same_thread=False)  # the service reads it from its worker threads
        try:
            self.db.execute("PRAGMA synchronous = FULL")  # a committed update survives a power cut
        except sqlite3.DatabaseError as err:
            raise SearchIndexError(f"{path} is not a readable SQLite catalogue ({err})") from None
        if create_columns is not None:
            bad = [c for c in create_columns if not _SAFE_COLUMN.match(c) or c in BUILT_IN]
            if bad:
                raise ConfigError(
                    f"metadata column name(s) {', '.join(map(repr, bad))}: use letters, digits and _ (not starting with a digit), "
                    f"and none of {', '.join(BUILT_IN)}"
                )
            extra = "".join(f", {_quoted(c)} TEXT" for c in create_columns)
            with self.db:
                self.db.execute(
                    "CREATE TABLE items (id INTEGER PRIMARY KEY, path TEXT NOT NULL, label TEXT, "
                    f"added INTEGER NOT NULL, removed INTEGER{extra})"
                )
                self.db.execute("CREATE INDEX items_by_path ON items (path)")  # updates look items up by path
        try:
            self.columns = [row[1] for row in self.db.execute("PRAGMA table_info(items)")][len(BUILT_IN) :]
        except sqlite3.DatabaseError as err:
            raise SearchIndexError(f"{path} is not a readable SQLite catalogue ({err})") from None

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _live(generation: int) -> str:
        return f"added <= {int(generation)} AND (removed IS NULL OR removed > {int(generation)})"

    def items(self, generation: int) -> tuple[np.ndarray, str]:
        """The ids of the items of a generation, ascending (the order of its vectors' rows), and a SHA-256 of
        their ids, paths and class names, which index.json records: a catalogue of another build differs there."""
        digest, ids = hashlib.sha256(), []
        for item_id, path, label in self.db.execute(f"SELECT id, path, label FROM items WHERE {self._live(generation)} ORDER BY id"):
            ids.append(item_id)
            digest.update(f"{item_id}\0{path}\0{'' if label is None else label}\n".encode())
        return np.asarray(ids, dtype=np.int64), digest.hexdigest()

    def next_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM items").fetchone()[0])

    def describe(self, ids: Iterable[int]) -> dict[int, ItemRecord]:
        """Each id's path, class name and metadata columns (those with a value)."""
        wanted = [int(i) for i in ids]
        names = ", ".join(["id", "path", "label", *map(_quoted, self.columns)])
        found: dict[int, ItemRecord] = {}
        for start in range(0, len(wanted), _MAX_PARAMETERS):
            part = wanted[start : start + _MAX_PARAMETERS]
            marks = ",".join("?" * len(part))
            for row in self.db.execute(f"SELECT {names} FROM items WHERE id IN ({marks})", part):
                found[row[0]] = ItemRecord(row[1], row[2], {c: v for c, v in zip(self.columns, row[3:]) if v is not None})
        return found

    def ids_of_paths(self, paths: Sequence[str], generation: int) -> dict[str, int]:
        """The ids of a generation's items at ``paths`` (absent paths are left out)."""
        found: dict[str, int] = {}
        for start in range(0, len(paths), _MAX_PARAMETERS):
            part = [str(p) for p in paths[start : start + _MAX_PARAMETERS]]
            marks = ",".join("?" * len(part))
            sql = f"SELECT path, id FROM items WHERE {self._live(generation)} AND path IN ({marks})"
            found.update((path, int(i)) for path, i in self.db.execute(sql, part))
        return found

    def matching(self, where: str, generation: int) -> np.ndarray:
        """The ids of a generation's items that pass ``where``, ascending."""
        sql, values = self.where_sql(where)
        rows = self.db.execute(f"SELECT id FROM items WHERE {self._live(generation)} AND ({sql}) ORDER BY id", values).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def where_sql(self, where: str) -> tuple[str, list[str | float]]:
        """``where`` as parameterised SQL, or a :class:`ConfigError` naming what is wrong."""
        known = ["path", "label", *self.columns]
        sql, values = [], []
        for part in re.split(r"\s+and\s+", where.strip(), flags=re.IGNORECASE):
            match = _CONDITION.match(part)
            if not match:
                raise ConfigError(
                    f"--where {where!r}: expected conditions like \"column = value\" joined by 'and' "
                    f"(operators {' '.join(_OPERATORS)}; quote a value with spaces)"
                )
            column, operator, value = match.groups()
            if column not in known:
                raise ConfigError(f"--where: no column {column!r} in this index; its columns: {', '.join(known)}")
            text = value[1:-1] if value[:1] in "'\"" else value
            if operator in ("=", "!=") or not _is_number(text):
                sql.append(f"{_quoted(column)} {operator} ?")
                values.append(text)
            else:  # a number compares as one: "10" > "9"
                sql.append(f"CAST({_quoted(column)} AS REAL) {operator} ?")
                values.append(float(text))
        return " AND ".join(sql), values

    def add(
        self, generation: int, paths: Sequence[str], labels: Sequence[str | None], metadata: Sequence[dict[str, str]] | None
    ) -> np.ndarray:
        """Insert items (their class names, None where unlabelled) as added by ``generation``; returns their
        new ids (consecutive, after every earlier id)."""
        unknown = sorted({c for row in metadata or [] for c in row} - set(self.columns))
        if unknown:
            raise ConfigError(
                f"metadata column(s) {', '.join(unknown)} are not in this index (its columns: {', '.join(self.columns) or 'none'}); "
                "rebuild the index to add columns"
            )
        first = self.next_id()
        names = ", ".join(["id", "path", "label", "added", *map(_quoted, self.columns)])
        marks = ",".join("?" * (4 + len(self.columns)))
        rows = (
            (first + i, str(p), label, generation, *[(metadata[i] if metadata else {}).get(c) for c in self.columns])
            for i, (p, label) in enumerate(zip(paths, labels))
        )
        self.db.executemany(f"INSERT INTO items ({names}) VALUES ({marks})", rows)
        return np.arange(first, first + len(paths), dtype=np.int64)

    def remove(self, generation: int, ids: Sequence[int]) -> None:
        self.db.executemany("UPDATE items SET removed = ? WHERE id = ?", ((generation, int(i)) for i in ids))

    def discard_after(self, generation: int) -> None:
        """Undo what an update to a later generation wrote before it crashed (its index.json was never written)."""
        self.db.execute("DELETE FROM items WHERE added > ?", (generation,))
        self.db.execute("UPDATE items SET removed = NULL WHERE removed > ?", (generation,))

    def forget_removed(self, before: int) -> None:
        """Drop the rows of items removed before ``before``: no generation still read lists them."""
        self.db.execute("DELETE FROM items WHERE removed IS NOT NULL AND removed < ?", (before,))


def write_catalogue(
    path: Path, columns: Sequence[str], batches: Iterable[tuple[Sequence[str], Sequence[str | None], Sequence[dict[str, str]] | None]]
) -> str:
    """A new catalogue at ``path`` (staged: a crash leaves none) of generation 0's items, given as batches
    of paths, class names and metadata rows; returns the digest of its items that index.json records."""
    with staged_path(path) as staged:
        catalogue = Catalogue(staged, create_columns=columns)
        with catalogue.db:
            for paths, labels, metadata in batches:
                catalogue.add(0, paths, labels, metadata)
        digest = catalogue.items(0)[1]
        catalogue.close()
    return digest


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
