"""A model folder's files, read safely: JSON whose errors name the file, file names taken from
JSON kept inside the folder, and the one rule for which weight files a checkpoint has.

Both `hub` (deciding whether a cached snapshot is complete, what to download) and `loading`
(what to read) use `weight_files`, so they can't disagree. Nothing heavy is imported here:
resolving a cached model stays a few `stat`s and small JSON reads.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath

# (single file, index of shards), in transformers' order of preference: safetensors first, a
# single file before an index; pickle only when allowed.
WEIGHTS = [
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
]
SAFE_SUFFIX = ".safetensors"


def read_json(path, missing=FileNotFoundError, expect: type = dict):
    """The JSON object (or, with expect=list, array) in `path`. A missing file raises
    FileNotFoundError, or returns `missing` when one is given (an optional file). A file that
    isn't one raises ValueError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        if missing is FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist")
        return missing
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{path} is empty (an interrupted download or copy?); expected JSON")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); expected a JSON object") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); "
                         "the file is corrupt or truncated") from None
    if not isinstance(value, expect):
        raise ValueError(f"{path} must hold a JSON {'array' if expect is list else 'object'}, got {_json_type(value)}")
    return value


def _json_type(value) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def inside(folder, name, source) -> Path:
    """`folder / name` for a file name read from the JSON file `source`, refused (ValueError)
    unless it stays inside `folder`: no absolute path, no `..`, no symlink pointing out. In a
    Hugging Face cache snapshot, files are symlinks into the repo's `blobs/`, which counts as inside."""
    folder = Path(folder)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{source} names file {name!r}; expected a non-empty relative path")
    # Windows' rules too (drive letters, backslashes), so the check doesn't depend on the OS
    as_windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or as_windows.drive or as_windows.root or ".." in as_windows.parts:
        raise ValueError(f"{source} names file {name!r}, which is outside the model folder {folder}; refused")
    path = folder / name
    resolved = path.resolve()
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        roots.append((folder.parent.parent / "blobs").resolve())
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ValueError(f"{source} names file {name!r}, a symlink to {resolved} outside the model folder "
                         f"{folder}; refused")
    return path


def shard_names(folder, index: str) -> list[str]:
    """The shard file names an index (`model.safetensors.index.json`) maps weights to, each
    checked to stay inside `folder`."""
    path = Path(folder) / index
    weight_map = read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path} has no weight_map (an object of weight name → shard file)")
    for name in weight_map.values():
        inside(folder, name, path)
    return sorted(set(weight_map.values()))


def refuse_pickles(names: list[str], allow_pickle: bool, where, source=None) -> None:
    """ValueError unless every file is safetensors or pickles are allowed. `source`: the
    safetensors index that named the files (None for pytorch_model.bin and its index)."""
    pickled = [n for n in names if not n.endswith(SAFE_SUFFIX)]
    if not pickled or allow_pickle:
        return
    listed = ", ".join(pickled[:3]) + (f", ... ({len(pickled)} in all)" if len(pickled) > 3 else "")
    how = (f"{source} names non-safetensors shards ({listed})" if source is not None
           else f"{where} has only pickled weights ({pickled[0]})")
    raise ValueError(
        f"{how}; pickle can run code when loaded, so lightpipe refuses it by default. Pass "
        "allow_pickle=True to load it anyway (with torch.load(weights_only=True)), or convert the "
        "checkpoint to safetensors.")


def weight_files(folder, allow_pickle: bool = False, where=None) -> list[Path] | None:
    """The weight files of the checkpoint in `folder`, or None if it has no complete one.

    The first complete candidate of WEIGHTS wins (an index is complete when every shard it names
    exists). Pickled weights, or an index naming anything but .safetensors files, raise ValueError
    unless `allow_pickle`; so do shard names leaving the folder. `where` names the model in errors."""
    folder = Path(folder)
    where = where or folder
    for single, index in WEIGHTS:
        if (folder / single).is_file():
            names, source = [single], None
        elif (folder / index).is_file():
            names = shard_names(folder, index)
            source = folder / index if index == WEIGHTS[0][1] else None
            if not all((folder / n).is_file() for n in names):
                continue
        else:
            continue
        refuse_pickles(names, allow_pickle, where, source)
        return [folder / n for n in names]
    return None
