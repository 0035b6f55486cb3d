"""Batch inference over files: text lines, JSON lines, CSV/TSV and Parquet, read and written in
windows so memory stays flat however large the file, with `resume` after an interruption.

    run_file(pipe, "reviews.parquet", "scored.parquet", columns=Columns(text="review"))

Each input row becomes one pipeline input (a column's text, a text pair, a question/context
pair); each result is flattened into columns (`rows.flatten_result`) and appended to the row, and the
output is written in its extension's format, rows in input order.

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
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .rows import Columns, base_task, canonical_task, flatten_result, one_per_input, row_input

WINDOW = 512  # rows per window: the same as pipelines.base.WINDOW_ITEMS
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
    with open(path, encoding="utf-8") as f:
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
    """The output file's format: its extension's, else the input's."""
    return EXTENSIONS.get(Path(str(path)).suffix.lower()) or input_fmt.rstrip("?")


# -- reading ------------------------------------------------------------------------------

@dataclass
class Window:
    rows: list  # one dict per row
    first: int  # 0-based index of the first row in the input
    batch: object = None  # the pyarrow.RecordBatch the rows came from (Parquet input), kept for its types


def count_rows(path, fmt: str) -> int | None:
    """Rows in the input (for the progress bar's total and ETA); None for stdin."""
    if str(path) == "-":
        return None
    if fmt == "parquet":
        return need_pyarrow()[1].read_metadata(path).num_rows
    if fmt in ("csv", "tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            return max(0, sum(1 for _ in csv.reader(f, delimiter=_delimiter(fmt))) - 1)
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def read_windows(path, fmt: str, window: int = WINDOW, skip: int = 0, column: str = "text") -> Iterator[Window]:
    """The input's rows as dicts, `window` at a time, starting after the first `skip` rows.
    Text lines become {column: line}; blank lines are not rows."""
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
    f = sys.stdin if str(path) == "-" else open(path, encoding="utf-8", newline="" if fmt in ("csv", "tsv") else None)
    try:
        if fmt in ("csv", "tsv"):
            yield from csv.DictReader(f, delimiter=_delimiter(fmt))
            return
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if fmt == "text" or (fmt == "jsonl?" and not _is_json_line(line)):
                yield {column: line}
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {number} is not JSON ({e.msg}); for plain text lines use a .txt file "
                                 f"or --format text") from None
            if isinstance(value, str):
                value = {column: value}
            if not isinstance(value, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object or string, got {type(value).__name__}")
            yield value
    finally:
        if f is not sys.stdin:
            f.close()


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
            lines = [json.dumps(r, ensure_ascii=False, default=_jsonable) for r in results]
        else:
            lines = [json.dumps(_merge(row, f), ensure_ascii=False, default=_jsonable) for row, f in zip(window.rows, flat)]
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
            self.header = list(dict.fromkeys(k for r in rows for k in r))
            header_line = self._line(self.header)
        extra = {k for r in rows for k in r} - set(self.header)
        if extra:
            raise ValueError(f"rows from {window.first + 1} have columns {sorted(extra)} that the CSV header "
                             f"{self.header} lacks; write JSON lines (.jsonl) for rows whose columns vary")
        body = "".join(self._line([self._cell(r.get(k)) for k in self.header]) for r in rows)
        _write_durably(self.f, header_line + body)

    def _line(self, cells: list) -> str:
        import io

        buf = io.StringIO()
        csv.writer(buf, delimiter=self.delimiter, lineterminator="\n").writerow(cells)
        return buf.getvalue()

    @staticmethod
    def _cell(value):
        value = _jsonable(value)
        if value is None:
            return ""
        if isinstance(value, (list, dict, bool)):
            return json.dumps(value, ensure_ascii=False)
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

    def __init__(self, path, resume: bool, task: str, options: dict):
        self.pa, self.pq = need_pyarrow()
        self.path, self.task, self.options = Path(path), task, options
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
                self.schema = self.schema or meta.schema.to_arrow_schema()
                self.done += meta.num_rows
                self.count += 1

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def write(self, window: Window, results: list, flat: list[dict]) -> None:
        pa = self.pa
        columns = {name: [f.get(name) for f in flat] for name in dict.fromkeys(k for f in flat for k in f)}
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
        table = self._conform(table, window)
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
        if _has_null(pa, array.type):
            array = pa.array(values, type=self._fallback_type(name, values, is_result))
        if is_result and name == "embedding":
            array = array.cast(_float32_like(pa, array.type))  # the model computes in float32
        return array

    def _fallback_type(self, name: str, values: list, is_result: bool):
        """A type for a column whose first window held only nulls / empty lists."""
        pa = self.pa
        f64, i64, s = pa.float64(), pa.int64(), pa.string()
        if not is_result:
            return s
        if base_task(self.task) == "token-classification" and name == "entities":
            if self.options.get("aggregation_strategy") in (None, "none"):
                fields = [("entity", s), ("score", f64), ("index", i64), ("word", s), ("start", i64), ("end", i64)]
            else:
                fields = [("entity_group", s), ("score", f64), ("word", s), ("start", i64), ("end", i64)]
            return pa.list_(pa.struct(fields))
        if name == "answers":
            return pa.list_(pa.struct([("score", f64), ("start", i64), ("end", i64), ("answer", s)]))
        if name in ("labels",):
            return pa.list_(s)
        if name in ("scores",):
            return pa.list_(f64)
        if name == "embedding":
            return pa.list_(pa.float32())
        if name in ("score",):
            return f64
        if name in ("start", "end"):
            return i64
        return s

    def _conform(self, table, window: Window):
        """Cast a window to the file's schema (fixed by the first window)."""
        if table.schema.equals(self.schema):
            return table
        extra = set(table.column_names) - set(self.schema.names)
        if extra:
            raise ValueError(f"rows from {window.first + 1} have columns {sorted(extra)} that the first window "
                             f"lacked; write JSON lines (.jsonl) for rows whose columns vary")
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
        sys.stdout.write("".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in results))
        sys.stdout.flush()

    def close(self) -> None:
        pass

    abort = close


def open_output(path, fmt: str, resume: bool, task: str, options: dict, input_fmt: str = "jsonl"):
    """A writer for `fmt`. Text lines in and text or JSON lines out: each line is the pipeline's
    result as it returns it (a text line has no columns to keep), so the output is `pipe(texts)`."""
    if path is None or str(path) == "-":
        if resume:
            raise ValueError("--resume needs --output FILE: it counts the rows already written there")
        return _StdoutOut()
    if fmt == "parquet":
        return _ParquetOut(path, resume, task, options)
    if fmt in ("csv", "tsv"):
        return _CsvOut(path, fmt, resume)
    return _LinesOut(path, fmt == "text" or input_fmt == "text", resume)


# -- the run ------------------------------------------------------------------------------

def run_file(pipe, input, output=None, *, options: dict | None = None, fmt: str | None = None,
             columns: Columns | None = None, window: int = WINDOW, resume: bool = False,
             progress: bool = True, task: str | None = None) -> int:
    """Run `pipe` over every row of `input` and write the rows with result columns to `output`
    (None: JSON results on stdout), `window` rows at a time. With `resume`, rows already in
    `output` are skipped. Returns the number of rows in the output."""
    options = dict(options or {})
    columns = columns or Columns()
    task = getattr(pipe, "task", None) or canonical_task(task or "")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if str(input) != "-" and not Path(input).is_file():
        raise FileNotFoundError(f"input file not found: {input}")
    in_fmt = detect_format(input, fmt)
    out_fmt = output_format(output, in_fmt) if output not in (None, "-") else None
    if out_fmt == "parquet" or in_fmt == "parquet":
        need_pyarrow()
    if output not in (None, "-") and str(input) != "-" and Path(output).resolve() == Path(input).resolve():
        raise ValueError("--output must differ from --input: the input is read while the output is written")
    total = count_rows(input, in_fmt.rstrip("?")) if in_fmt != "jsonl?" else None
    out = open_output(output, out_fmt, resume, task, options, in_fmt)
    done = out.done
    if total is not None and done > total:
        out.abort()
        raise ValueError(f"{output} already has {done} rows but {input} has {total}; "
                         "is it the output of another input? (drop --resume to start over)")
    bar = _progress(total, done, task) if progress else None
    try:
        for win in read_windows(input, in_fmt, window, skip=done, column=columns.text or "text"):
            inputs = [row_input(row, win.first + i + 1, task, columns) for i, row in enumerate(win.rows)]
            try:
                results = one_per_input(task, inputs, pipe(inputs, **options))
            except (ValueError, TypeError) as e:  # say where in the file the bad row is
                raise type(e)(f"{input} rows {win.first + 1}-{win.first + len(inputs)}: {e}") from None
            out.write(win, results, [flatten_result(task, r) for r in results])
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


def _progress(total, initial, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=" rows", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)
