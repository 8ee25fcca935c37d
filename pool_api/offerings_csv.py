"""Offerings as CSV: the one format the console's Import/Export and `dc-pool-api offering import/export` share.

The header (snake_case, as the marketplace's own offerings CSV; columns in any order, each at most once):

    offering_id,name,product_type,datacenter_country,provisioner_type,agent_pool_id,price,cpu_cores,memory_mb,storage_gb,status,provisioner_config

`name` and `datacenter_country` are required columns; the others may be left out. An empty cell is "not
set" (product_type compute, status active, no explicit pool: routed by region and type). price is a
number, cpu_cores/memory_mb/storage_gb whole numbers, status active or inactive, provisioner_config a JSON
object. A row whose offering_id is one of the provider's offerings replaces that offering (all fields, as
the API's PUT does); a new or empty offering_id creates one. Export writes every offering with all columns,
so an exported file imports back unchanged.

An import is all or nothing: every row is checked (fields, known pool, offering ids unique in the file and
not another provider's) and every problem is reported with its line number (the header is line 1); only
when there is none are the rows written, in the caller's one transaction.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pydantic
import sqlalchemy as sa

from pool_api import offerings
from pool_api.schemas import OfferingCreate
from pool_api.tables import agent_pools as p
from pool_api.tables import offerings as o

COLUMNS = ("offering_id", "name", "product_type", "datacenter_country", "provisioner_type", "agent_pool_id",
           "price", "cpu_cores", "memory_mb", "storage_gb", "status", "provisioner_config")
REQUIRED = ("name", "datacenter_country")
HEADER = ",".join(COLUMNS)
INTEGERS = ("cpu_cores", "memory_mb", "storage_gb")
MAX_ROWS = 10_000
MAX_ERRORS = 50  # reported at most; the count says how many more
CAMEL_NAMES = {name: "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_"))) for name in COLUMNS}
_SNAKE = {camel: name for name, camel in CAMEL_NAMES.items()}


class CsvError(Exception):
    """The file cannot be imported; `errors` are "line N: column: what is wrong" lines."""

    def __init__(self, errors: list[str]) -> None:
        shown = errors[:MAX_ERRORS]
        if len(errors) > MAX_ERRORS:
            shown.append(f"… and {len(errors) - MAX_ERRORS} more")
        super().__init__("; ".join(shown))
        self.errors = shown


def parse_fields(raw: dict[str, str], names: dict[str, str] | None = None) -> OfferingCreate:
    """One offering from its text cells (snake_case keys; empty = not set). ValueError names each bad field,
    by `names[column]` when given (the form's camelCase names), else by its CSV column."""
    label = (lambda column: (names or {}).get(column, column))
    problems: list[str] = []
    body: dict[str, Any] = {}
    for column in COLUMNS:
        text = (raw.get(column) or "").strip()
        if not text:
            continue
        try:
            body[CAMEL_NAMES[column]] = _convert(column, text)
        except ValueError as exc:
            problems.append(f"{label(column)}: {exc}")
    for column in REQUIRED:
        if CAMEL_NAMES[column] not in body and not any(x.startswith(f"{label(column)}:") for x in problems):
            problems.append(f"{label(column)}: required")
    if not problems:
        try:
            return OfferingCreate.model_validate(body)
        except pydantic.ValidationError as exc:
            for e in exc.errors():
                column = _SNAKE.get(str(e["loc"][0]), str(e["loc"][0])) if e.get("loc") else "row"
                problems.append(f"{label(column)}: {e.get('msg', 'invalid')}")
    raise ValueError("; ".join(problems))


def _convert(column: str, text: str) -> Any:
    if column in INTEGERS:
        if not text.isdigit():
            raise ValueError(f"must be a whole number, not {text[:40]!r}")
        return int(text)
    if column == "price":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"must be a number, not {text[:40]!r}") from None
    if column == "provisioner_config":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        return value
    return text


def read(text: str) -> list[tuple[int, OfferingCreate]]:
    """The rows of a CSV text, each with its line number; CsvError lists every problem found."""
    rows, errors = _parse(text)
    if errors:
        raise CsvError([message for _line, message in errors])
    return rows


def _parse(text: str) -> tuple[list[tuple[int, OfferingCreate]], list[tuple[int, str]]]:
    """(the good rows, the problems) of a CSV text, each with its line number (the header is line 1)."""
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark, as spreadsheets write
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [(1, "line 1: the file is empty; the first line must be the header: " + HEADER)]
    except csv.Error as exc:
        return [], [(1, f"line 1: not CSV ({exc})")]
    errors = [(1, message) for message in _header_errors(header)]
    if errors:
        return [], errors
    rows: list[tuple[int, OfferingCreate]] = []
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append((line, f"line {line}: not CSV ({exc})"))
            break
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(rows) + len(errors) >= MAX_ROWS:
            errors.append((start, f"line {start}: more than {MAX_ROWS} rows; split the file"))
            break
        if len(cells) != len(header):
            errors.append((start, f"line {start}: {len(cells)} cells, the header has {len(header)}"))
            continue
        try:
            rows.append((start, parse_fields(dict(zip(header, cells)))))
        except ValueError as exc:
            errors.append((start, f"line {start}: {exc}"))
    return rows, errors


def _header_errors(header: list[str]) -> list[str]:
    unknown = [h for h in header if h not in COLUMNS]
    twice = sorted({h for h in header if header.count(h) > 1})
    missing = [h for h in REQUIRED if h not in header]
    errors = []
    if unknown:
        errors.append(f"line 1: unknown column(s) {', '.join(repr(h) for h in unknown)}; the columns are: {HEADER}")
    if twice:
        errors.append(f"line 1: column(s) {', '.join(twice)} given more than once")
    if missing:
        errors.append(f"line 1: required column(s) {', '.join(missing)} missing")
    return errors


def import_csv(conn: sa.Connection, provider_pubkey: str, text: str) -> dict[str, int]:
    """Check every row, then create or replace the offerings: {created, updated}; CsvError writes nothing."""
    rows, errors = _parse(text)
    if errors and errors[0][0] == 1:
        raise CsvError([message for _line, message in errors])  # the header is wrong: no row can be read
    pools = set(conn.execute(sa.select(p.c.pool_id).where(p.c.provider_pubkey == provider_pubkey)).scalars())
    ids = [body.offering_id for _, body in rows if body.offering_id]
    owners: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        owners.update(conn.execute(sa.select(o.c.offering_id, o.c.provider_pubkey)
                                   .where(o.c.offering_id.in_(chunk))).all())
    seen: dict[str, int] = {}
    for line, body in rows:
        if body.agent_pool_id and body.agent_pool_id not in pools:
            errors.append((line, f"line {line}: agent_pool_id: unknown pool {body.agent_pool_id!r} of this provider"))
        oid = body.offering_id
        if oid and oid in seen:
            errors.append((line, f"line {line}: offering_id: {oid!r} is already on line {seen[oid]}"))
        elif oid and owners.get(oid, provider_pubkey) != provider_pubkey:
            errors.append((line, f"line {line}: offering_id: {oid!r} is taken; choose another id"))
        if oid:
            seen.setdefault(oid, line)
    if errors:
        raise CsvError([message for _line, message in sorted(errors, key=lambda e: e[0])])
    created = updated = 0
    for _line, body in rows:
        fields = body.model_dump(exclude={"offering_id"})
        if body.offering_id and body.offering_id in owners:
            offerings.update_offering(conn, provider_pubkey, body.offering_id, fields)
            updated += 1
        else:
            offerings.create_offering(conn, provider_pubkey, fields, body.offering_id)
            created += 1
    return {"created": created, "updated": updated}


def export_csv(conn: sa.Connection, provider_pubkey: str) -> str:
    """Every offering of the provider, oldest first, with the header."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    rows = conn.execute(sa.select(o).where(o.c.provider_pubkey == provider_pubkey)
                        .order_by(o.c.created_at_ns, o.c.offering_id))
    for r in rows:
        writer.writerow([_cell(r._mapping[column]) for column in COLUMNS])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, float):
        return repr(value)
    return str(value)
