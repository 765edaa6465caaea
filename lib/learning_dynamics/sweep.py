"""Parameter sweeps: a grid of points, mapped in one vectorised call, in chunks, or over a dask cluster.

Three pieces (DESIGN.md, ``sweep``):

- :func:`grid` ``(**axes)`` names the axes of a sweep and holds the cartesian
  product of their values as flat coordinate arrays (``'ij'`` order, like
  ``np.meshgrid(..., indexing="ij")``); :meth:`Grid.reshape` turns a flat
  per-point result back into the grid's shape.
- :func:`map` ``(fn, items, client=None, chunks=None, cache=None)`` evaluates a
  vectorised ``fn`` on every point. By default it calls ``fn`` once on
  everything (the batched, in-process path every chapter uses). With
  ``chunks=n`` it calls ``fn`` on consecutive chunks of at most ``n`` points,
  in this process or, with ``client``, as dask.distributed tasks, and
  concatenates the chunks' results in order. With ``cache`` every finished
  chunk is written to disk, so an interrupted sweep resumes where it stopped.
- :func:`client` ``(scheduler)`` turns a chapter's ``scheduler`` parameter
  (``None``, ``"local:N"`` or a scheduler address) into a :class:`Connection`,
  which :func:`map` takes as its ``client`` and which closes its cluster as a
  context manager.

The chunk convention. ``fn`` receives one chunk and returns one row per point
of it:

- for a :class:`Grid`, the chunk is a dict ``{axis name: 1-D array}`` of the
  chunk's flat coordinates (copies; vectorised functions want arrays);
- for a numpy array of items, the chunk is the slice ``items[start:stop]``;
- for any other sequence, the chunk is the list ``list(items[start:stop])``.

``fn`` returns a numpy array (or a torch tensor, turned into one) whose
leading axis has the chunk's length, or a dict of such arrays (the same keys
for every chunk). The result of :func:`map` has the leading axis of length
``len(items)`` (``grid.size``), in the items' order.

Identical results. The chunks of a chunked run are the same in this process
and on a cluster, and :func:`map` concatenates them exactly, so a
deterministic ``fn`` gives bitwise identical results on either path. A
chunked run equals the one-call run when ``fn``'s value at a point does not
depend on which other points share its chunk (true of the library's batched
trainers on stacked networks with common random numbers, such as
:func:`learning_dynamics.linear.lambda_grid_runs`; the tests check it). So
``fn`` must never depend on which worker, process or thread runs it: derive
every seed from the chunk's own items (give the grid a ``seed`` axis, or build
``np.random.SeedSequence([seed, *point])`` from each point's coordinates),
never from a global counter, the process id or the chunk's position alone.

A cluster. :func:`client` starts a ``dask.distributed`` LocalCluster of ``N``
worker processes with one thread each for ``"local:N"``, or connects to a
running scheduler (``"tcp://host:8786"``: for instance one that
``dask_jobqueue.SLURMCluster`` started; :func:`client` also takes such a
cluster object). Every worker imports ``learning_dynamics`` before running a
task, so it has the library's CPU thread policy (:mod:`learning_dynamics.threads`),
and uses one torch thread (a LocalCluster also sets ``OMP_NUM_THREADS=1``);
on a worker that dask started with ``MALLOC_TRIM_THRESHOLD_`` (its default),
glibc's mmap threshold is raised, which makes torch 2.6x faster there
(:func:`_malloc_policy`). A LocalCluster leaves this process's environment
as it was.
Chunks are submitted with ``pure=False``; a worker that dies is replaced and
its chunk rescheduled by dask's scheduler (no ``retries`` needed: those rerun a
chunk whose ``fn`` raised, which a deterministic ``fn`` does again). A chunk
that fails raises its own exception type and message, with a note naming the
chunk.

The cache. ``cache=folder`` (or a :class:`Cache` with a key naming the run:
chapter, preset, parameters) writes each finished chunk as an ``.npz`` file
(atomically: a temporary file, then ``os.replace``), under a folder named by
a hash of the key, ``fn``'s name, the number of points, the chunk size and
:func:`code_hash` (the library's source). Each chunk's file name holds its
index and a hash of its items. A rerun loads every finished chunk and
computes only the missing ones; a change of the library's code, the key, the
items or the chunk size computes afresh. The cache is written by the process
that calls :func:`map`, so cluster workers need no shared disk.

>>> import numpy as np
>>> g = grid(alpha=[0.0, 0.5, 1.0], noise=[0.1, 0.2])
>>> g.shape, g.size
((3, 2), 6)
>>> g.flat["alpha"]
array([0. , 0. , 0.5, 0.5, 1. , 1. ])
>>> out = map(lambda chunk: chunk["alpha"] + chunk["noise"], g, chunks=4)
>>> g.reshape(out)
array([[0.1, 0.2],
       [0.6, 0.7],
       [1.1, 1.2]])
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import numbers
import os
import pickle
import re
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import numpy as np

from .validation import Constraint, check_int, check_positive, value_text

__all__ = ["Grid", "grid", "map", "map_runs", "client", "Connection", "Cache", "code_hash", "Scheduler"]

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEDULER_ALLOWED = "None, 'local:N' or a scheduler address such as tcp://host:8786"
CHUNKS_PER_THREAD = 4   # default chunking on a cluster: this many chunks per worker thread
_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss|ucx)://)?[^\s:/]+:\d+/?$")


# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Grid:
    """The cartesian product of named 1-D axes (make one with :func:`grid`).

    Attributes:
        axes: axis name -> its 1-D array of values, in the order given.
        flat: axis name -> the coordinate of every point, shape ``(size,)``,
            in ``'ij'`` order (the last axis varies fastest), exactly
            ``np.meshgrid(*axes.values(), indexing="ij")[k].ravel()``.
    """

    axes: dict
    flat: dict = field(init=False, repr=False)

    def __post_init__(self):
        if not self.axes:
            raise ValueError("axes must name at least one axis, as grid(alpha=[...], ...); got none")
        checked = {}
        for name, values in self.axes.items():
            array = np.asarray(values)
            if array.ndim != 1 or array.size == 0:
                raise ValueError(f"{name} must be a non-empty 1-D sequence of values; got {value_text(values)}"
                                 + (f" (shape {array.shape})" if array.ndim != 1 else ""))
            checked[name] = array.copy()
        mesh = np.meshgrid(*checked.values(), indexing="ij")
        object.__setattr__(self, "axes", checked)
        object.__setattr__(self, "flat", {name: c.ravel().copy() for name, c in zip(checked, mesh)})

    @property
    def names(self) -> tuple[str, ...]:
        """The axis names, in order."""
        return tuple(self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        """One length per axis."""
        return tuple(len(v) for v in self.axes.values())

    @property
    def size(self) -> int:
        """The number of points, the product of :attr:`shape`."""
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.size

    def points(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """The flat coordinates of points ``start:stop`` as ``{name: array}`` (copies): a chunk for :func:`map`."""
        return {name: np.array(values[start:stop]) for name, values in self.flat.items()}

    def reshape(self, result):
        """A flat per-point result back to the grid: leading axis ``size`` -> ``shape`` (trailing axes kept).

        ``result`` is an array (or anything ``np.asarray`` takes) or a dict of them.
        """
        if isinstance(result, Mapping):
            return {name: self._reshape_one(f"result[{name!r}]", value) for name, value in result.items()}
        return self._reshape_one("result", result)

    def _reshape_one(self, name, value):
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] != self.size:
            raise ValueError(f"{name} must have a leading axis of length {self.size} (one row per grid point); "
                             f"got shape {array.shape}")
        return array.reshape(self.shape + array.shape[1:])

    def __repr__(self):
        axes = ", ".join(f"{name}={len(v)}" for name, v in self.axes.items())
        return f"Grid({axes}; shape {self.shape}, {self.size} points)"


def grid(**axes) -> Grid:
    """The sweep over every combination of the named axes: ``grid(alpha=[0, 0.5, 1], noise=[0.1, 0.2])``.

    Each axis is a non-empty 1-D sequence of values. See :class:`Grid`.
    """
    return Grid(dict(axes))


# ---------------------------------------------------------------------------
# The library's code, and the chunk cache
# ---------------------------------------------------------------------------


def code_hash(package_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 (hex) of every ``.py`` file under ``lib/learning_dynamics`` (or ``package_dir``): paths and contents.

    Part of every cache key, so that cached chunks never outlive the code that computed them.
    """
    root = Path(package_dir) if package_dir is not None else PACKAGE_DIR
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _jsonable(value):
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-like")


class Cache:
    """Where :func:`map` keeps finished chunks: ``Cache(folder, key={"chapter": ..., "preset": ..., ...})``.

    ``key`` names the run (JSON-like values: numbers, strings, lists, dicts,
    numpy values, dataclasses such as a chapter's preset). A run's chunks go
    to ``folder/<hash>/chunk-<index>-<items hash>.npz``, where the hash covers
    the key, ``fn``'s name, the number of points, the chunk size and
    :func:`code_hash`; ``key.json`` beside them records what the hash covers.
    """

    def __init__(self, folder: str | os.PathLike, key: Mapping | None = None):
        if not isinstance(folder, (str, os.PathLike)) or not str(folder):
            raise ValueError(f"folder must be a path (str or os.PathLike); got {value_text(folder)}")
        if key is not None and not isinstance(key, Mapping):
            raise ValueError(f"key must be a dict naming the run (chapter, preset, parameters) or None; "
                             f"got {value_text(key)}")
        self.folder = Path(folder)
        self.key = dict(key or {})
        try:
            self._key_text = json.dumps(self.key, sort_keys=True, default=_jsonable)
        except (TypeError, ValueError) as err:
            raise ValueError(f"key must hold JSON-like values (numbers, strings, lists, dicts, numpy values, "
                             f"dataclasses); got {value_text(self.key)} ({err})") from None

    def __repr__(self):
        return f"Cache({str(self.folder)!r}, key={self.key!r})"

    def for_call(self, index: int) -> "Cache":
        """The cache of the ``index``-th map of one run (a :class:`Connection` numbers them in call order)."""
        return Cache(self.folder, key={**self.key, "call": index})

    def run_folder(self, fn_name: str, size: int, chunk_size: int) -> tuple[Path, dict]:
        """The folder of one run's chunks and the description its name hashes."""
        described = {"key": json.loads(self._key_text), "fn": fn_name, "size": size, "chunk_size": chunk_size,
                     "code": code_hash()}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
        return self.folder / digest[:20], described


class _RunCache:
    """One run's chunk files (made by :func:`map`)."""

    def __init__(self, cache: Cache, fn_name: str, size: int, chunk_size: int):
        self.folder, self.described = cache.run_folder(fn_name, size, chunk_size)

    def path(self, index: int, items_digest: str) -> Path:
        return self.folder / f"chunk-{index:05d}-{items_digest[:16]}.npz"

    def load(self, path: Path):
        """The chunk's result, or None when it is missing or unreadable (then it is computed again)."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                names = list(stored.files)
                if names == ["__array__"]:
                    return np.array(stored["__array__"])
                if names and all(n.startswith("key:") for n in names):
                    return {n[4:]: np.array(stored[n]) for n in names}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass
        return None

    def save(self, path: Path, result) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        description = self.folder / "key.json"
        if not description.exists():
            _atomic_write(description, lambda f: f.write(json.dumps(self.described, indent=2, sort_keys=True).encode()))
        arrays = {"__array__": result} if isinstance(result, np.ndarray) else {f"key:{k}": v for k, v in result.items()}
        _atomic_write(path, lambda f: np.savez(f, **arrays))


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then ``os.replace``: readers never see half a file."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        try:
            os.unlink(handle.name)
        except OSError:
            pass
        raise


def _items_digest(chunk) -> str:
    digest = hashlib.sha256()
    if isinstance(chunk, dict):
        for name, values in chunk.items():
            digest.update(name.encode() + b"\0" + str(values.dtype).encode() + b"\0")
            digest.update(values.tobytes() if values.dtype != object else pickle.dumps(values.tolist(), protocol=4))
    elif isinstance(chunk, np.ndarray) and chunk.dtype != object:
        digest.update(f"{chunk.dtype}{chunk.shape}".encode() + chunk.tobytes())
    else:
        try:
            digest.update(pickle.dumps(chunk, protocol=4))
        except Exception:  # an item that cannot be pickled cannot go to a cluster either; its repr still names it
            digest.update(repr(chunk).encode())
    return digest.hexdigest()


def _fn_name(fn) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


# ---------------------------------------------------------------------------
# Mapping a function over the points
# ---------------------------------------------------------------------------


class _Items:
    """The points of a sweep, cut into chunks by :func:`map`'s convention."""

    def __init__(self, items):
        if isinstance(items, Grid):
            self.size, self._take = items.size, items.points
        elif isinstance(items, np.ndarray):
            if items.ndim == 0:
                raise ValueError(f"items must be a sequence of points or a Grid; got a 0-d array {value_text(items)}")
            self.size, self._take = len(items), lambda a, b: np.array(items[a:b])
        elif isinstance(items, Sequence) and not isinstance(items, (str, bytes)):
            self.size, self._take = len(items), lambda a, b: list(items[a:b])
        else:
            raise ValueError(f"items must be a Grid, a numpy array or a sequence (list, tuple, range) of points; "
                             f"got {value_text(items)}")
        if self.size == 0:
            raise ValueError(f"items must hold at least one point; got {value_text(items)}")

    def chunk(self, start: int, stop: int):
        return self._take(start, stop)


def _check_chunks(chunks):
    if chunks is None:
        return None
    if isinstance(chunks, bool) or not isinstance(chunks, numbers.Integral) or chunks < 1:
        raise ValueError(f"chunks must be None (one call on every point) or an integer >= 1 (points per chunk); "
                         f"got {chunks!r}")
    return int(chunks)


def _as_numpy(result):
    """fn's result with torch tensors turned into numpy arrays (on the worker, before it travels)."""
    if isinstance(result, Mapping):
        return {k: _as_numpy(v) for k, v in result.items()}
    if hasattr(result, "detach") and hasattr(result, "cpu"):
        return result.detach().cpu().numpy()
    return result


def _check_result(result, n: int, index: int):
    """fn's result as a numpy array or dict of arrays, each with a leading axis of n."""
    where = f"chunk {index} ({n} points)"
    if isinstance(result, Mapping):
        if not result:
            raise ValueError(f"fn must return a numpy array or a non-empty dict of arrays; {where} returned an empty dict")
        return {str(k): _check_array(f"fn's result[{k!r}]", v, n, where) for k, v in result.items()}
    return _check_array("fn's result", result, n, where)


def _check_array(name, value, n, where):
    if not isinstance(value, (np.ndarray, np.generic, list, tuple, numbers.Number)):
        raise ValueError(f"{name} must be a numpy array (or a dict of them) with one row per point; "
                         f"{where} returned {type(value).__name__}")
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(f"{name} must be a numeric (or string) array, not objects; {where} returned {value_text(value)}")
    if array.ndim == 0 or array.shape[0] != n:
        raise ValueError(f"{name} must have a leading axis of the chunk's length, one row per point; "
                         f"{where} returned shape {array.shape}")
    return array


def _run_chunk(fn, chunk):
    """What a worker runs: fn on one chunk, tensors made numpy."""
    return _as_numpy(fn(chunk))


def _annotate(err: BaseException, index: int, start: int, stop: int, n_chunks: int) -> None:
    note = f"raised in sweep chunk {index} of {n_chunks} (points {start} to {stop - 1})"
    if note not in getattr(err, "__notes__", ()):
        err.add_note(note)


def _concatenate(parts: list):
    first = parts[0]
    if isinstance(first, dict):
        keys = list(first)
        for i, part in enumerate(parts):
            if not isinstance(part, dict) or set(part) != set(keys):
                got = sorted(part) if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"fn must return the same kind of result for every chunk; chunk 0 returned a dict "
                                 f"with keys {sorted(keys)}, chunk {i} returned {got}")
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}
    for i, part in enumerate(parts):
        if isinstance(part, dict):
            raise ValueError(f"fn must return the same kind of result for every chunk; chunk 0 returned an array, "
                             f"chunk {i} a dict")
    return np.concatenate(parts)


def _dask_client(client):
    """The distributed.Client behind ``client`` (None: in process)."""
    if client is None:
        return None
    if isinstance(client, Connection):
        return client.client
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a pinned dependency
        Client = ()
    if Client and isinstance(client, Client):
        return client
    raise ValueError(f"client must be None (in process), a distributed.Client or what sweep.client() returns; "
                     f"got {value_text(client)}")


def map(fn, items, *, client=None, chunks: int | None = None, cache=None, desc: str = "sweep", retries: int = 0):
    """``fn`` on every point of ``items``, one vectorised call or in chunks, here or on a dask cluster.

    Args:
        fn: ``fn(chunk)`` -> a numpy array (or torch tensor) with one row per
            point of the chunk, or a dict of them. The chunk is, for a
            :class:`Grid`, the dict ``{axis: flat coordinates}`` of its points;
            for a numpy array of items, a slice of it; for another sequence,
            a list of its items. It must not depend on the process that runs
            it: derive seeds from the chunk's own items (see the module's
            notes). On a cluster it must pickle (cloudpickle).
        items: a :class:`Grid` or a sequence of points.
        client: None (in this process), a ``distributed.Client``, or the
            :class:`Connection` of :func:`client`.
        chunks: points per chunk. None calls ``fn`` once on every point in
            this process (the batched default), or, with a client, cuts
            ``CHUNKS_PER_THREAD`` chunks per worker thread; pass it explicitly
            to keep the chunks (and the cache) the same on every cluster.
        cache: None, a folder, or a :class:`Cache` (a folder and a key naming
            the run): finished chunks are saved there and loaded by a rerun.
        desc: label of the progress bar over chunks.
        retries: how often dask reruns a chunk whose ``fn`` raised. A worker
            that dies (killed, out of memory) needs none: dask's scheduler
            replaces it and reschedules its chunks by itself (up to
            ``distributed.scheduler.allowed-failures`` times, then
            ``KilledWorker``). A deterministic ``fn`` that raised raises
            again, so the default 0 reports it at once.

    Returns:
        The chunks' results concatenated in order: an array with leading axis
        ``len(items)`` or a dict of them (:meth:`Grid.reshape` gives the grid
        shape back). A chunk whose ``fn`` raised re-raises that exception
        (its own type and message) with a note naming the chunk; the chunks
        finished before it stay in the cache.
    """
    if not callable(fn):
        raise ValueError(f"fn must be a callable fn(chunk); got {value_text(fn)}")
    if cache is None and isinstance(client, Connection):
        cache = client.next_cache()
    points = _Items(items)
    chunks = _check_chunks(chunks)
    retries = check_int("retries", retries, low=0)
    dask = _dask_client(client)
    if isinstance(cache, (str, os.PathLike)):
        cache = Cache(cache)
    elif cache is not None and not isinstance(cache, Cache):
        raise ValueError(f"cache must be None, a folder or a sweep.Cache; got {value_text(cache)}")

    size = points.size
    if chunks is None:
        chunks = size if dask is None else math.ceil(size / (CHUNKS_PER_THREAD * _threads(dask)))
    bounds = [(start, min(start + chunks, size)) for start in range(0, size, chunks)]
    n_chunks = len(bounds)
    run_cache = _RunCache(cache, _fn_name(fn), size, chunks) if cache is not None else None

    parts: list = [None] * n_chunks
    todo: list[tuple[int, object, Path | None]] = []
    for index, (start, stop) in enumerate(bounds):
        chunk = points.chunk(start, stop)
        path = run_cache.path(index, _items_digest(chunk)) if run_cache is not None else None
        if path is not None:
            parts[index] = run_cache.load(path)
        if parts[index] is None:
            todo.append((index, chunk, path))

    def finish(index, result, path):
        start, stop = bounds[index]
        parts[index] = _check_result(result, stop - start, index)
        if path is not None:
            run_cache.save(path, parts[index])

    if todo and dask is None:
        _map_here(fn, todo, bounds, finish, desc, n_done=n_chunks - len(todo))
    elif todo:
        _map_dask(dask, fn, todo, bounds, finish, desc, retries, n_done=n_chunks - len(todo))
    return _concatenate(parts)


def map_runs(fn, n: int, *, client=None, chunks: int | None = None, cache=None, desc: str = "sweep"):
    """A runner over ``n`` stacked networks, in chunks of networks, here or on a cluster: one joined Run back.

    ``fn(index)`` trains or solves the networks ``index`` (a 1-D int array)
    and returns a :class:`~learning_dynamics.results.Run` whose records have
    the network axis second and whose ``final`` arrays have it first. With no
    client and no ``chunks`` it is called once on every network and its Run
    is returned as it is (the in-process default). Otherwise the chunks' Runs
    are joined along the network axis (their ``times`` and ``steps`` must
    agree; the final ``params`` are not kept). The result equals the one-call
    Run wherever a network's result does not depend on the other networks of
    its batch: runners whose networks share no random stream.
    """
    from .results import Run

    n = check_int("n", n, low=1)
    cached = cache is not None or (isinstance(client, Connection) and client.cache is not None)
    if not client and chunks is None and not cached:
        return fn(np.arange(n))

    def rows(index):
        run = fn(np.asarray(index))
        out = {"times": np.broadcast_to(run.times, (len(index),) + run.times.shape).copy()}
        if run.steps is not None:
            out["steps"] = np.broadcast_to(run.steps, (len(index),) + run.steps.shape).copy()
        out.update({"records/" + k: np.moveaxis(np.asarray(v), 1, 0) for k, v in run.records.items()})
        out.update({"final/" + k: np.asarray(v) for k, v in run.final.items()})
        return out

    flat = map(rows, np.arange(n), client=client, chunks=chunks, cache=cache, desc=desc)
    if not (flat["times"] == flat["times"][0]).all():
        raise ValueError("every chunk of map_runs must record the same times; got chunks that differ")
    return Run(times=flat["times"][0], steps=flat["steps"][0] if "steps" in flat else None,
               records={k.split("/", 1)[1]: np.moveaxis(v, 0, 1) for k, v in flat.items() if k.startswith("records/")},
               final={k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("final/")})


def _map_here(fn, todo, bounds, finish, desc, n_done):
    from .train import progress

    loop = todo if len(bounds) == 1 else progress(todo, desc=desc, total=len(bounds), initial=n_done, unit="chunk")
    for index, chunk, path in loop:
        try:
            result = _run_chunk(fn, chunk)
        except Exception as err:
            if len(bounds) > 1:
                _annotate(err, index, *bounds[index], len(bounds))
            raise
        finish(index, result, path)


def _map_dask(dask, fn, todo, bounds, finish, desc, retries, n_done):
    from distributed import as_completed

    from .train import progress

    futures = {}
    for index, chunk, path in todo:
        future = dask.submit(_run_chunk, fn, chunk, pure=False, retries=retries,
                             key=f"{desc}-chunk-{index}-{os.urandom(6).hex()}")
        futures[future] = (index, path)
    try:
        for future in progress(as_completed(futures), desc=desc, total=len(bounds), initial=n_done, unit="chunk"):
            index, path = futures[future]
            try:
                result = future.result()
            except Exception as err:
                _annotate(err, index, *bounds[index], len(bounds))
                raise
            finish(index, result, path)
            future.release()
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            dask.cancel(pending)


def _threads(dask) -> int:
    try:
        workers = dask.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    except Exception:  # a scheduler that cannot say: one chunk per CHUNKS_PER_THREAD points' worth
        return 1


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


def _worker_env() -> dict[str, str]:
    """The environment of LocalCluster workers: one OpenMP/BLAS thread, the library's wait policy."""
    from .threads import WAIT_POLICY

    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY") or WAIT_POLICY}


def _thread_policy_plugin():
    from distributed.diagnostics.plugin import WorkerPlugin

    class ThreadPolicy(WorkerPlugin):
        """Import learning_dynamics (its CPU thread policy) on every worker, and use one torch thread."""

        name = "learning-dynamics-thread-policy"

        def setup(self, worker):
            _setup_worker()

    return ThreadPolicy()


def _setup_worker() -> None:
    import learning_dynamics  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
    import torch

    torch.set_num_threads(1)
    _malloc_policy()


M_MMAP_THRESHOLD = -3              # glibc's mallopt parameter
MMAP_THRESHOLD = 32 * 2**20        # glibc's largest dynamic mmap threshold (64-bit)


def _malloc_policy() -> bool:
    """Undo the slowdown of dask's ``MALLOC_TRIM_THRESHOLD_`` on a worker; return whether it was needed.

    dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting it freezes glibc's mmap
    threshold at 128 KiB, so every torch tensor above that is a fresh ``mmap``
    and page faults: the spring-block DNN grid trained 2.6x slower (16.3 s
    against 6.2 s, most of it system time). Raising the mmap threshold to
    32 MiB with ``mallopt`` gives the speed back (9.1 s against 8.7 s in the
    same run), and trimming still returns freed memory. Only on Linux
    (glibc), and only where the variable is set and ``MALLOC_MMAP_THRESHOLD_``
    is not.
    """
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ \
            or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


class Connection:
    """What :func:`client` returns: the ``distributed.Client`` (or None, in process) and whether it owns the cluster.

    Pass it as :func:`map`'s ``client``. ``with sweep.client(scheduler) as c:``
    closes the client, and the LocalCluster it started, on leaving; so does
    :meth:`close`. ``bool(c)`` is False in process.

    With a ``cache`` (a :class:`Cache` naming the run), every :func:`map` and
    :func:`map_runs` given this connection and no cache of its own caches its
    chunks there, under the key plus its call number (0, 1, ... in the order
    of the calls): a rerun of the same chapter makes the same calls in the
    same order, so it finds the chunks of each one.
    """

    def __init__(self, scheduler, client=None, owned: bool = True, cache: Cache | None = None):
        self.scheduler, self.client, self._owned = scheduler, client, owned
        self.cache, self._calls = cache, 0

    def next_cache(self) -> Cache | None:
        """The cache of the next map on this connection (None without one)."""
        if self.cache is None:
            return None
        self._calls += 1
        return self.cache.for_call(self._calls - 1)

    def __bool__(self):
        return self.client is not None

    @property
    def n_workers(self) -> int:
        """Workers the scheduler knows now (0 in process)."""
        return 0 if self.client is None else len(self.client.scheduler_info().get("workers", {}))

    def close(self) -> None:
        """Close the client (and a cluster it started); a client passed in by the caller stays open."""
        if self.client is not None and self._owned:
            self.client.close()  # a client that started its LocalCluster closes it too
        self._owned = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        where = "in process" if self.client is None else repr(self.client)
        cached = f", chunks cached in {str(self.cache.folder)!r}" if self.cache is not None else ""
        return f"Connection({self.scheduler!r}: {where}{cached})"


class Scheduler(Constraint):
    """A chapter's ``scheduler`` parameter, checked for its form (no connection is made): None, ``"local:N"``, an address."""

    def describe(self):
        return SCHEDULER_ALLOWED

    def check(self, name, value):
        if value is None:
            return None
        if isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"local(:.*)?", text):
                local = re.fullmatch(r"local:(\d+)", text)
                if local and int(local.group(1)) >= 1:
                    return value
            elif _ADDRESS.match(text):
                return value
        self._fail(name, value)

    def invalid_example(self):
        return "local:0"


def client(scheduler=None, *, cache=None, timeout: float = 3.0) -> Connection:
    """The chapter parameter ``scheduler`` as a :class:`Connection` for :func:`map`.

    - ``None``: in process (``Connection.client`` is None).
    - ``"local:N"``: a dask.distributed LocalCluster of ``N`` worker processes
      with one thread each, started here and closed with the connection.
    - ``"tcp://host:port"`` (or ``tls://``, ``ws://``, ``host:port``): a running
      scheduler, such as one a ``dask_jobqueue.SLURMCluster`` started; if none
      answers within ``timeout`` seconds, a ``ValueError`` names ``scheduler``.
    - a ``distributed.Client`` (used as it is, left open) or a cluster object
      (``SLURMCluster``, ``LocalCluster``: a client is made for it and closed
      with the connection; the cluster stays the caller's).

    Every worker imports ``learning_dynamics`` (its CPU thread policy) and uses
    one torch thread before it runs a chunk. ``cache`` (None, a folder or a
    :class:`Cache`) caches the chunks of every map made through the
    connection (see :class:`Connection`).
    """
    timeout = check_positive("timeout", timeout)
    if isinstance(cache, (str, os.PathLike)):
        cache = Cache(cache)
    elif cache is not None and not isinstance(cache, Cache):
        raise ValueError(f"cache must be None, a folder or a sweep.Cache; got {value_text(cache)}")
    connection = _connect(scheduler, timeout)
    connection.cache = cache
    return connection


def _connect(scheduler, timeout) -> Connection:
    if scheduler is None:
        return Connection(None)
    if isinstance(scheduler, str):
        text = scheduler.strip()
        if re.fullmatch(r"local(:.*)?", text):
            return _local(scheduler, text)
        if _ADDRESS.match(text):
            return _remote(scheduler, text, timeout)
        raise ValueError(f"scheduler must be {SCHEDULER_ALLOWED}; got {scheduler!r}")
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover
        Client = None
    if Client is not None and isinstance(scheduler, Client):
        _register_policy(scheduler)
        return Connection(scheduler, scheduler, owned=False)
    if hasattr(scheduler, "scheduler_address") and Client is not None:
        made = Client(scheduler, timeout=timeout)
        _register_policy(made)
        return Connection(scheduler, made)
    raise ValueError(f"scheduler must be {SCHEDULER_ALLOWED} (or a distributed Client or cluster); "
                     f"got {value_text(scheduler)}")


def _local(scheduler, text) -> Connection:
    match = re.fullmatch(r"local:(.+)", text)
    n = None
    if match:
        try:
            n = int(match.group(1))
        except ValueError:
            n = None
    if n is None or n < 1:
        raise ValueError(f"scheduler must be {SCHEDULER_ALLOWED}, with N an integer >= 1 worker processes; "
                         f"got {scheduler!r}")
    import dask
    from distributed import Client

    # No pre-spawn environment: dask would write it (MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS=1) into THIS
    # process's os.environ, where every process started later (a papermill kernel) inherits it. ``env`` sets
    # the threads in the worker before torch loads, and without the malloc variable glibc stays fast.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        made = Client(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL, env=_worker_env())
    _register_policy(made)
    return Connection(scheduler, made)


def _remote(scheduler, address, timeout) -> Connection:
    from distributed import Client

    try:
        made = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise ValueError(f"scheduler must be {SCHEDULER_ALLOWED} that answers; got {scheduler!r}, and no "
                         f"scheduler answered there within {timeout:g} s ({err})") from None
    _register_policy(made)
    return Connection(scheduler, made)


def _register_policy(dask) -> None:
    dask.register_plugin(_thread_policy_plugin())
