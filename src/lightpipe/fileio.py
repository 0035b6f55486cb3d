"""Batch inference over files: text lines, JSON lines, CSV/TSV and Parquet, read and written in
windows so memory stays flat however large the file, with `resume` after an interruption.

    run_file(pipe, "reviews.parquet", "scored.parquet", columns=Columns(text="review"))

Each input row becomes one pipeline input (a column's text, a text pair, a question/context
pair: the pipeline's `row_input`); each result is flattened into columns (the pipeline's `columns`)
and appended to the row, and the output is written in its extension's format, rows in input order: output row N answers input row N,
always. Every line of a text or JSON lines file is a row, a blank one too; a row that can't be run
(a blank line, a null or blank text, a line that isn't JSON) or whose run fails either stops the
run with an error naming its line or row (`on_error="raise"`) or gets its error in an `error`
column (`on_error="record"`). UTF-8 with or without a BOM; lines end in \n, \r\n or \r.

Crash safety, so `resume=True` computes nothing twice and loses nothing:
- text / JSON lines / CSV: each window is written in one write, flushed and fsynced; on resume
  the complete rows are counted and a torn trailing row is cut off.
- Parquet: a Parquet file is unreadable until its footer is written, so each window goes to
  `OUTPUT.parts/part-NNNNNN.parquet` (written to a temporary name, then renamed: a part is
  either whole or absent); when the input is exhausted the parts are merged into OUTPUT and
  the folder removed. On resume the complete parts are counted.

pyarrow is only needed for Parquet (`pip install 'lightpipe[files]'`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import json_out
from .rows import ERROR, Columns, RowProblem, check_on_error, record_columns, run_batch

WINDOW = 512  # rows per window read from a file (run_file takes the pipeline's `file_window`)
FORMATS = ("text", "jsonl", "csv", "tsv", "parquet")
EXTENSIONS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
              ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
MERGE_ROWS = 8192  # rows per row group when the Parquet parts are merged


def need_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("Parquet files need pyarrow: pip install 'lightpipe[files]'") from None
    return pa, pq


# -- formats ------------------------------------------------------------------------------

def detect_format(path, fmt: str | None = None) -> str:
    """`fmt` if given, else the extension's format; an unknown extension (or stdin, "-") is
    JSON lines when its first line is a JSON object or string, else text lines."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    known = EXTENSIONS.get(Path(str(path)).suffix.lower())
    if known:
        return known
    if str(path) == "-":
        return "jsonl?"  # sniffed line by line: stdin can't be read twice
    with _open(path, "text") as f:
        for line in f:
            if line.strip():
                return "jsonl" if _is_json_line(line) else "text"
    return "text"


def _is_json_line(line: str) -> bool:
    if not line.lstrip().startswith(("{", '"')):
        return False
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def output_format(path, input_fmt: str) -> str:
    """The output file's format: its extension's; the input's when it has no extension."""
    suffix = Path(str(path)).suffix.lower()
    if not suffix:
        return input_fmt.rstrip("?")
    if suffix not in EXTENSIONS:
        raise ValueError(f"output {str(path)!r}: unknown extension {suffix!r}; --output takes "
                         f"{', '.join(EXTENSIONS)} (or no extension: the input's format)")
    return EXTENSIONS[suffix]


def check_run(input, output=None, fmt: str | None = None, window: int = WINDOW, on_error: str = "raise"):
    """What `run_file` checks before any work (the CLI calls it before loading the model too):
    → (the input's format, the output's format or None for stdout)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window (--window) must be a positive number of rows, got {window!r}")
    check_on_error(on_error)
    if str(input) != "-" and not Path(input).is_file():
        raise FileNotFoundError(f"input file not found: {input}")
    in_fmt = detect_format(input, fmt)
    out_fmt = output_format(output, in_fmt) if output not in (None, "-") else None
    if out_fmt == "parquet" or in_fmt == "parquet":
        need_pyarrow()
    if output not in (None, "-") and str(input) != "-" and Path(output).resolve() == Path(input).resolve():
        raise ValueError("--output must differ from --input: the input is read while the output is written")
    return in_fmt, out_fmt


# -- reading ------------------------------------------------------------------------------

@dataclass
class Window:
    rows: list  # one dict per row
    first: int  # 0-based index of the first row in the input
    batch: object = None  # the pyarrow.RecordBatch the rows came from (Parquet input), kept for its types


BLANK = "blank line"
BLANK_HINT = "every line is a row: remove it, or run with --on-error record to give it an error row"


class _open:
    """The input as text, read the same way for its rows and for counting them (so --resume skips
    exactly the rows it has): UTF-8 with or without a BOM; for text and JSON lines \n, \r\n and \r
    all end a line; CSV gets its line ends untranslated, as its reader wants them."""

    def __init__(self, path, fmt: str):
        newline = "" if fmt in ("csv", "tsv") else None
        self.stdin = str(path) == "-"
        if not self.stdin:
            self.f = open(path, encoding="utf-8-sig", newline=newline)
        elif hasattr(sys.stdin, "buffer"):
            self.f = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline=newline)
        else:  # stdin replaced by a text stream (tests, notebooks)
            self.f = sys.stdin

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        if not self.stdin:
            self.f.close()
        elif self.f is not sys.stdin:
            self.f.detach()  # leave sys.stdin's buffer open


def count_rows(path, fmt: str) -> int | None:
    """Rows in the input (for the progress bar and the --resume check); None for stdin."""
    if str(path) == "-":
        return None
    if fmt == "parquet":
        return need_pyarrow()[1].read_metadata(path).num_rows
    with _open(path, fmt) as f:
        if fmt in ("csv", "tsv"):
            return max(0, sum(1 for _ in csv.reader(f, delimiter=_delimiter(fmt))) - 1)
        return sum(1 for _ in f)


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def read_windows(path, fmt: str, window: int = WINDOW, skip: int = 0, column: str = "text") -> Iterator[Window]:
    """The input's rows as dicts, `window` at a time, starting after the first `skip` rows.
    Text lines become {column: line}. Every line is a row: a blank line, or a JSON lines line that
    isn't a JSON object, is a `RowProblem`."""
    if fmt == "parquet":
        yield from _parquet_windows(path, window, skip)
        return
    rows = _iter_rows(path, fmt, column)
    index = 0
    for _ in range(skip):
        if next(rows, None) is None:
            return
        index += 1
    while True:
        chunk = [row for _, row in zip(range(window), rows)]
        if not chunk:
            return
        yield Window(chunk, index)
        index += len(chunk)


def _iter_rows(path, fmt: str, column: str) -> Iterator[dict]:
    with _open(path, fmt) as f:
        if fmt in ("csv", "tsv"):
            yield from _csv_rows(f, fmt)
            return
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                yield RowProblem({column: line} if fmt == "text" else {}, BLANK, BLANK_HINT)
            elif fmt == "text" or (fmt == "jsonl?" and not _is_json_line(line)):
                yield {column: line}
            else:
                yield _json_row(line, column)


def _json_row(line: str, column: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return RowProblem({}, f"not JSON ({e.msg}); for plain text lines use a .txt file or --format text")
    if isinstance(value, str):
        return {column: value}
    if not isinstance(value, dict):
        return RowProblem({}, f"expected a JSON object or string, got {type(value).__name__}")
    return value


def _csv_rows(f, fmt: str) -> Iterator[dict]:
    """csv.DictReader's rows, but a blank line is a row too (of empty cells: DictReader skips it,
    which would shift every later row) and a row with more cells than the header is a problem."""
    reader = csv.reader(f, delimiter=_delimiter(fmt))
    header = next(reader, None)
    if header is None:
        return
    for record in reader:
        if len(record) > len(header):
            yield RowProblem(dict(zip(header, record)), f"{len(record)} cells, but the header has {len(header)}")
        else:  # missing cells are null, as in csv.DictReader
            yield {**dict.fromkeys(header, "" if not record else None), **dict(zip(header, record))}


def _parquet_windows(path, window: int, skip: int) -> Iterator[Window]:
    pa, pq = need_pyarrow()
    pf = pq.ParquetFile(path)
    # skip whole row groups without decoding them, then slice the first one we read
    groups, start = [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if start + n > skip:
            groups.append(g)
        else:
            start += n
    if not groups:
        return
    drop = skip - start
    index = skip
    for batch in pf.iter_batches(batch_size=window, row_groups=groups):
        if drop:
            cut = min(drop, batch.num_rows)
            batch, drop = batch.slice(cut), drop - cut
        if batch.num_rows:
            yield Window(batch.to_pylist(), index, batch)
            index += batch.num_rows


# -- writing ------------------------------------------------------------------------------

def _jsonable(value):
    """Arrow/numpy values from Parquet input → plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _merge(row: dict, flat: dict) -> dict:
    """The input row with the result columns added (a result column replaces a same-named input column)."""
    return {**row, **flat}


class _LinesOut:
    """JSON lines: the row with result columns, or (`raw`) the pipeline's result as it returns it."""

    def __init__(self, path, raw: bool, resume: bool):
        self.path, self.raw = Path(path), raw
        self.done = _truncate_to_last_newline(self.path) if resume and self.path.exists() else 0
        self.f = open(self.path, "ab" if resume else "wb")

    def write(self, window: Window, results: list, flat: list[dict]) -> None:
        if self.raw:
            lines = [json_out.dumps(r, default=_jsonable) for r in results]
        else:
            lines = [json_out.dumps(_merge(row, f), default=_jsonable) for row, f in zip(window.rows, flat)]
        _write_durably(self.f, ("\n".join(lines) + "\n").encode("utf-8"))

    def close(self) -> None:
        self.f.close()

    abort = close


def _write_durably(f, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _truncate_to_last_newline(path: Path) -> int:
    """Cut a torn trailing line off; return the number of complete lines."""
    lines, end = 0, 0
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            offset += len(line)
            if line.endswith(b"\n"):
                lines, end = lines + 1, offset
    if end != path.stat().st_size:
        os.truncate(path, end)
    return lines


def _column_order(rows: list[dict], flat: list[dict]) -> list:
    """A window's columns: the input's, then the results', then the error column."""
    added = dict.fromkeys(k for f in flat for k in f)
    return _widen([k for k in dict.fromkeys(k for r in rows for k in r) if k not in added], list(added))


def _widen(names: list, extra: list) -> list:
    """`names` with `extra` added, the error column kept last."""
    names = list(dict.fromkeys([*names, *extra]))
    return [n for n in names if n != ERROR] + ([ERROR] if ERROR in names else [])


class _CsvOut:
    def __init__(self, path, fmt: str, resume: bool):
        self.path, self.delimiter = Path(path), _delimiter(fmt)
        self.header, self.done = None, 0
        if resume and self.path.exists():
            self.header, self.done = _csv_complete_rows(self.path, self.delimiter)
        self.f = open(self.path, "a" if self.header else "w", encoding="utf-8", newline="")

    def write(self, window: Window, results: list, flat: list[dict]) -> None:
        rows = [_merge(row, f) for row, f in zip(window.rows, flat)]
        header_line = ""
        if self.header is None:
            self.header = _column_order(window.rows, flat)
            header_line = self._line(self.header)
        extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in self.header]
        if extra:
            added = {k for f in flat for k in f}
            if not set(extra) <= added:
                raise ValueError(f"rows from {window.first + 1} have columns {sorted(set(extra) - added)} that the CSV "
                                 f"header {self.header} lacks; write JSON lines (.jsonl) for rows whose columns vary")
            self._rewrite_header(_widen(self.header, extra))
        body = "".join(self._line([self._cell(r.get(k)) for k in self.header]) for r in rows)
        _write_durably(self.f, header_line + body)

    def _rewrite_header(self, header: list) -> None:
        """Result (or error) columns the rows so far lacked — every earlier row failed, or a run
        without on_error="record" is resumed with it: rewrite the file with the wider header, the
        earlier rows getting empty cells (atomically: a kill leaves the old file or the new)."""
        self.f.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(self.path, encoding="utf-8", newline="") as src, open(tmp, "w", encoding="utf-8", newline="") as dst:
            reader = csv.reader(src, delimiter=self.delimiter)
            old = next(reader)
            writer = csv.writer(dst, delimiter=self.delimiter, lineterminator="\n")
            writer.writerow(header)
            for record in reader:
                cells = dict(zip(old, record))
                writer.writerow([cells.get(k, "") for k in header])
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)
        self.header = header
        self.f = open(self.path, "a", encoding="utf-8", newline="")

    def _line(self, cells: list) -> str:
        buf = io.StringIO()
        csv.writer(buf, delimiter=self.delimiter, lineterminator="\n").writerow(cells)
        return buf.getvalue()

    @staticmethod
    def _cell(value):
        value = _jsonable(value)
        if value is None:
            return ""
        if isinstance(value, (list, dict, bool)):
            return json_out.dumps(value)
        return value

    def close(self) -> None:
        self.f.close()

    abort = close


def _csv_complete_rows(path: Path, delimiter: str) -> tuple[list | None, int]:
    """(header, complete data rows) of a CSV this module wrote, cutting off a torn last row.
    A row is complete when its last line ends in a newline outside any quotes."""
    ends = [0]  # byte offset after the latest line handed to the csv reader

    def lines():
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    return  # torn: the writer never ends a row without a newline
                ends[0] += len(raw)
                yield raw.decode("utf-8")

    header, rows, good = None, 0, 0
    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    try:
        for record in reader:
            if header is None:
                header = record
            elif len(record) == len(header):
                rows += 1
            else:
                break
            good = ends[0]
    except csv.Error:
        pass  # ended inside a quoted field
    if good != path.stat().st_size:
        os.truncate(path, good)
    return header, rows


class _ParquetOut:
    """Windows as atomic part files under OUTPUT.parts/, merged into OUTPUT at the end."""

    def __init__(self, path, resume: bool, pipe, options: dict):
        self.pa, self.pq = need_pyarrow()
        self.path = Path(path)
        self.result_types = pipe.arrow_types(self.pa, options)  # for result columns of nulls / empty lists
        self.vector_columns = pipe.vector_columns
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.schema, self.count, self.done = None, 0, 0
        if not resume:
            shutil.rmtree(self.parts, ignore_errors=True)
            return
        if not self.parts.exists() and self.path.exists():
            # a finished output: carry on after its rows (the input may have grown)
            try:
                self.pq.read_metadata(self.path)
            except Exception:  # noqa: BLE001
                raise ValueError(f"{self.path} exists but is not a readable Parquet file; "
                                 "drop --resume to overwrite it") from None
            self.parts.mkdir(parents=True)
            os.replace(self.path, self.parts / "part-000000.parquet")
        if self.parts.exists():
            for tmp in self.parts.glob("*.tmp"):
                tmp.unlink()
            for part in self._part_files():
                try:
                    meta = self.pq.read_metadata(part)
                except Exception:  # noqa: BLE001 — not ours or damaged: recompute from here
                    for later in self._part_files()[self.count:]:
                        later.unlink()
                    break
                self.schema = self._union(meta.schema.to_arrow_schema())
                self.done += meta.num_rows
                self.count += 1

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def _union(self, schema):
        """The file's schema widened by a part's columns it lacks (added result or error columns)."""
        if self.schema is None:
            return schema
        fields = {f.name: f for f in [*schema, *self.schema]}  # a column's first type wins
        return self.pa.schema([fields[n] for n in _widen(self.schema.names, schema.names)])

    def write(self, window: Window, results: list, flat: list[dict]) -> None:
        pa = self.pa
        columns = {name: [f.get(name) for f in flat] for name in _widen([], list(dict.fromkeys(k for f in flat for k in f)))}
        if window.batch is not None:
            table = pa.Table.from_batches([window.batch])
            table = table.drop_columns([c for c in columns if c in table.column_names])
        else:
            names = list(dict.fromkeys(k for r in window.rows for k in r if k not in columns))
            table = pa.table({n: self._array([_jsonable(r.get(n)) for r in window.rows], n, False) for n in names})
        for name, values in columns.items():
            table = table.append_column(name, self._array(values, name, True))
        if self.schema is None:
            self.schema = table.schema
        table = self._conform(table, window, set(columns))
        self.parts.mkdir(parents=True, exist_ok=True)
        final = self.parts / f"part-{self.count:06d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        self.pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self.count += 1

    def _array(self, values: list, name: str, is_result: bool):
        pa = self.pa
        if self.schema is not None and name in self.schema.names:
            try:
                return pa.array(values, type=self.schema.field(name).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
                raise ValueError(f"column {name!r}: values don't fit the Parquet type {self.schema.field(name).type} "
                                 f"set by the first window ({e}); write JSON lines (.jsonl) for values whose "
                                 f"shape varies by row") from None
        array = pa.array(values)
        if _has_null(pa, array.type):  # the first window held only nulls / empty lists: the task's type
            array = pa.array(values, type=self.result_types.get(name, pa.string()) if is_result else pa.string())
        if is_result and name in self.vector_columns:
            array = array.cast(_float32_like(pa, array.type))  # the model computes in float32
        return array

    def _conform(self, table, window: Window, added: set):
        """Cast a window to the file's schema (fixed by the first window; result and error columns
        may still be added: the parts before get them as nulls when merged)."""
        if table.schema.equals(self.schema):
            return table
        extra = set(table.column_names) - set(self.schema.names)
        if extra - added:
            raise ValueError(f"rows from {window.first + 1} have columns {sorted(extra - added)} that the first window "
                             f"lacked; write JSON lines (.jsonl) for rows whose columns vary")
        if extra:
            self.schema = self._union(table.schema)
        pa = self.pa
        arrays = []
        for field in self.schema:
            if field.name in table.column_names:
                col = table.column(field.name)
                try:
                    arrays.append(col if col.type.equals(field.type) else col.cast(field.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                    raise ValueError(f"rows from {window.first + 1}: column {field.name!r} is {col.type}, the file's "
                                     f"is {field.type} ({e})") from None
            else:
                arrays.append(pa.nulls(table.num_rows, field.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def close(self) -> None:
        """Merge the parts into OUTPUT (atomically), in order, a few parts per row group."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        parts = self._part_files()
        if not parts:
            self.pq.write_table(self.pa.table({}), tmp)
        else:
            writer = self.pq.ParquetWriter(tmp, self.schema)
            try:
                pending, rows = [], 0
                for part in parts:
                    t = self.pq.read_table(part, schema=self.schema)
                    pending.append(t)
                    rows += t.num_rows
                    if rows >= MERGE_ROWS:
                        writer.write_table(self.pa.concat_tables(pending))
                        pending, rows = [], 0
                if pending:
                    writer.write_table(self.pa.concat_tables(pending))
            finally:
                writer.close()
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)

    def abort(self) -> None:
        pass  # the parts stay for --resume


def _has_null(pa, t) -> bool:
    if pa.types.is_null(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_null(pa, t.value_type)
    if pa.types.is_struct(t):
        return any(_has_null(pa, t.field(i).type) for i in range(t.num_fields))
    return False


def _float32_like(pa, t):
    if pa.types.is_floating(t):
        return pa.float32()
    if pa.types.is_list(t):
        return pa.list_(_float32_like(pa, t.value_type))
    return t


class _StdoutOut:
    """No output file: one JSON result per line on stdout."""

    done = 0

    def write(self, window: Window, results: list, flat: list[dict]) -> None:
        sys.stdout.write("".join(json_out.dumps(r, default=_jsonable) + "\n" for r in results))
        sys.stdout.flush()

    def close(self) -> None:
        pass

    abort = close


def open_output(path, fmt: str, resume: bool, pipe, options: dict, input_fmt: str = "jsonl"):
    """A writer for `fmt`. Text lines in and text or JSON lines out: each line is the pipeline's
    result as it returns it (a text line has no columns to keep), so the output is `pipe(texts)`;
    a row that failed with on_error="record" is {"error": message} there."""
    if path is None or str(path) == "-":
        if resume:
            raise ValueError("--resume needs --output FILE: it counts the rows already written there")
        return _StdoutOut()
    if fmt == "parquet":
        return _ParquetOut(path, resume, pipe, options)
    if fmt in ("csv", "tsv"):
        return _CsvOut(path, fmt, resume)
    return _LinesOut(path, fmt == "text" or input_fmt == "text", resume)


# -- the run ------------------------------------------------------------------------------

def run_file(pipe, input, output=None, *, options: dict | None = None, fmt: str | None = None,
             columns: Columns | None = None, window: int | None = None, resume: bool = False,
             progress: bool = True, on_error: str = "raise") -> int:
    """Run `pipe` over every row of `input` and write the rows with result columns to `output`
    (None: JSON results on stdout), `window` rows at a time (default: the pipeline's
    `file_window`, 512; 32 for generation tasks). With `resume`, rows already in
    `output` are skipped. A row that fails: `on_error="raise"` stops with an error naming its line
    (text, JSON lines) or row (CSV, Parquet; the header not counted), 1-based; "record" writes its
    error in an `error` column (null for rows that succeeded; their result columns null) and goes
    on. Returns the number of rows in the output."""
    options = dict(options or {})
    columns = columns or Columns()
    window = window if window is not None else pipe.file_window
    in_fmt, out_fmt = check_run(input, output, fmt, window, on_error)
    total = count_rows(input, in_fmt.rstrip("?")) if in_fmt != "jsonl?" else None
    out = open_output(output, out_fmt, resume, pipe, options, in_fmt)
    done = out.done
    if total is not None and done > total:
        out.abort()
        raise ValueError(f"{output} already has {done} rows but {input} has {total}; "
                         "is it the output of another input? (drop --resume to start over)")
    where = _position(input, in_fmt)
    known = {}  # the result columns seen so far: a failed row gets them as nulls
    bar = _progress(total, done, pipe.task) if progress else None
    try:
        for win in read_windows(input, in_fmt, window, skip=done, column=columns.text or "text"):
            results, flat = _run_window(pipe, win, options, columns, on_error, where, in_fmt, known)
            out.write(win, results, flat)
            done += len(results)
            if bar is not None:
                bar.update(len(results))
    except BaseException:
        out.abort()
        if bar is not None:
            bar.leave = False  # the error message, not a half-full bar, is the last line
        raise
    finally:
        if bar is not None:
            bar.close()
    out.close()
    return done


def _run_window(pipe, win: Window, options: dict, columns: Columns, on_error: str, where, in_fmt: str,
                known: dict) -> tuple[list, list[dict]]:
    """A window's results (as the pipeline returns them) and result columns, one per row; with
    on_error="record" a failed row's result is {"error": message} and its columns nulls + error."""
    results, errors = run_batch(pipe, win.rows, columns, options, on_error, lambda i: where(win.first + i + 1),
                                missing_is_fatal=in_fmt not in ("jsonl", "jsonl?"))  # JSON lines rows vary
    flat = record_columns(pipe, results, errors, known, on_error == "record")
    # nested as `pipe(texts)` nests them: text lines out are the pipeline's results as it returns them
    results = [pipe.in_list(r) if err is None else {ERROR: err} for r, err in zip(results, errors)]
    return results, flat


def _position(input, fmt: str):
    """Row number (1-based) → where it is in the input: "FILE line N" for text and JSON lines,
    whose every line is a row; "FILE row N" for CSV (the header not counted) and Parquet."""
    name = "stdin" if str(input) == "-" else str(input)
    unit = "row" if fmt in ("csv", "tsv", "parquet") else "line"
    return lambda number: f"{name} {unit} {number}"


def _progress(total, initial, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=" rows", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)
