"""learning_dynamics.sweep: grids, chunked and dask maps (bitwise identical), the chunk cache, failures."""

from __future__ import annotations

import doctest
import json
import os
import sys
import time

import numpy as np
import pytest

import learning_dynamics  # noqa: F401  (first: the thread policy)
from learning_dynamics import linear, sweep, tasks

# --------------------------------------------------------------------------
# Functions the workers run. They live in this module, which dask's spawned
# workers import by name (they inherit this process's sys.path).
# --------------------------------------------------------------------------

X, Y = tasks.random_regression(10, 2, 2, seed=0, singular_values=(0.54, 0.14))


def lambda_grid_end(chunk, steps=60):
    """The chapter's batched GD of 2-2-2 linear networks on a chunk of the (lambda, scale) grid: final grams, loss."""
    run = linear.lambda_grid_runs(X, Y, chunk["lam"], chunk["scale"], lr=0.02, steps=steps, seed=0)
    n = len(chunk["lam"])
    return {"w1tw1": run.records["w1tw1"][-1].reshape(n, 4), "w2w2t": run.records["w2w2t"][-1].reshape(n, 4),
            "loss": run.records["loss"][-1]}


def numpy_points(points):
    """A list of (a, b) points -> one row each, seeded from the point itself."""
    rows = []
    for a, b in points:
        rng = np.random.default_rng([int(a), int(b)])
        rows.append(np.concatenate([[a * b], rng.standard_normal(3)]))
    return np.array(rows)


class Recorder:
    """fn(chunk) that records the first lam of every chunk it computes and fails once on a chosen chunk."""

    def __init__(self, fail_at: float | None = None):
        self.computed, self.fail_at = [], fail_at

    def __call__(self, chunk):
        self.computed.append(float(chunk["lam"][0]))
        if self.fail_at is not None and self.fail_at in chunk["lam"]:
            self.fail_at = None
            raise KeyError("simulated interruption")
        return lambda_grid_end(chunk)


def die_once(chunk, marker):
    """Kill the worker process (no exception, no cleanup) the first time any chunk runs."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return lambda_grid_end(chunk)


def raise_once(chunk, marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise OSError("a transient failure")
    return lambda_grid_end(chunk)


def fail_on_point(chunk, bad):
    if bad in chunk["lam"]:
        raise ZeroDivisionError(f"lam {bad} is not allowed")
    return lambda_grid_end(chunk)


def worker_policy():
    import torch

    return (os.environ.get("OMP_NUM_THREADS"), os.environ.get("OMP_WAIT_POLICY"), torch.get_num_threads(),
            "learning_dynamics" in sys.modules, os.environ.get("MALLOC_TRIM_THRESHOLD_"))


ENV_BEFORE = dict(os.environ)
GRID = sweep.grid(lam=np.linspace(-3, 3, 5), scale=np.linspace(1, 4, 3))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k  # bitwise: no tolerance


@pytest.fixture(scope="module")
def cluster():
    with sweep.client("local:2") as conn:
        yield conn
    assert conn.client.status == "closed"


# --------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------


def test_grid_flat_coordinates_shape_and_reshape():
    a, b, c = [0.0, 0.5, 1.0], [10, 20], ["x", "y", "z", "w"]
    g = sweep.grid(alpha=a, noise=b, kind=c)
    assert g.names == ("alpha", "noise", "kind") and g.shape == (3, 2, 4) and g.size == len(g) == 24
    for name, mesh in zip(g.names, np.meshgrid(a, b, c, indexing="ij")):
        assert np.array_equal(g.flat[name], mesh.ravel())
    value = g.flat["alpha"] * 100 + g.flat["noise"]
    assert np.array_equal(g.reshape(value)[2, 1], np.full(4, 120.0))
    both = g.reshape({"v": value, "w": np.stack([value, -value], 1)})
    assert both["v"].shape == (3, 2, 4) and both["w"].shape == (3, 2, 4, 2)
    assert np.array_equal(both["w"][..., 1], -both["v"])
    assert np.array_equal(g.points(3, 6)["kind"], np.array(["w", "x", "y"]))
    chunk = g.points(0, 2)
    chunk["alpha"][:] = -1.0  # a chunk is a copy: fn may write to it
    assert g.flat["alpha"][0] == 0.0


@pytest.mark.parametrize("axes, message", [
    ({}, "axes must name at least one axis"),
    ({"alpha": []}, "alpha must be a non-empty 1-D sequence of values; got []"),
    ({"alpha": 0.5}, "alpha must be a non-empty 1-D sequence of values; got 0.5"),
    ({"alpha": [0.1], "noise": [[0.1, 0.2]]}, "noise must be a non-empty 1-D sequence of values; got [[0.1, 0.2]] (shape (1, 2))"),
])
def test_grid_rejects_bad_axes(axes, message):
    with pytest.raises(ValueError) as err:
        sweep.grid(**axes)
    assert message in str(err.value)


def test_reshape_rejects_a_result_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"result must have a leading axis of length 15 .*got shape \(14,\)"):
        GRID.reshape(np.zeros(14))
    with pytest.raises(ValueError, match=r"result\['a'\] must have a leading axis of length 15"):
        GRID.reshape({"a": np.float64(1.0)})


def test_module_example_runs():
    assert doctest.testmod(sweep).failed == 0


# --------------------------------------------------------------------------
# map: in process, chunked, on a cluster
# --------------------------------------------------------------------------


def test_map_in_process_chunked_and_on_a_cluster_are_bitwise_identical(cluster):
    whole = sweep.map(lambda_grid_end, GRID)
    assert whole["w1tw1"].shape == (15, 4) and whole["loss"].shape == (15,)
    reference = linear.lambda_grid_runs(X, Y, GRID.flat["lam"], GRID.flat["scale"], lr=0.02, steps=60, seed=0)
    assert np.array_equal(whole["loss"], reference.records["loss"][-1])
    assert GRID.reshape(whole)["loss"].shape == (5, 3)
    for chunks in (1, 4, 15, 100):
        assert_same(sweep.map(lambda_grid_end, GRID, chunks=chunks), whole)
    assert_same(sweep.map(lambda_grid_end, GRID, client=cluster, chunks=4), whole)
    assert_same(sweep.map(lambda_grid_end, GRID, client=cluster.client), whole)  # default chunks, a plain Client


def test_map_over_a_sequence_of_items(cluster):
    items = [(a, b) for a in range(4) for b in range(3)]
    whole = sweep.map(numpy_points, items)
    assert whole.shape == (12, 4) and np.array_equal(whole[:, 0], [a * b for a, b in items])
    assert np.array_equal(sweep.map(numpy_points, items, chunks=5), whole)
    assert np.array_equal(sweep.map(numpy_points, items, chunks=5, client=cluster), whole)
    assert np.array_equal(sweep.map(lambda chunk: chunk * 2.0, np.arange(7.0), chunks=3), np.arange(7.0) * 2.0)


def test_cluster_workers_have_the_thread_policy(cluster):
    assert cluster.n_workers == 2 and bool(cluster) and not sweep.client(None)
    for policy in cluster.client.run(worker_policy).values():
        assert policy == ("1", os.environ["OMP_WAIT_POLICY"], 1, True, ENV_BEFORE.get("MALLOC_TRIM_THRESHOLD_"))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):  # this process's is untouched
        assert os.environ.get(name) == ENV_BEFORE.get(name), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_workers_started_with_dasks_malloc_variable_raise_the_mmap_threshold():
    import subprocess

    code = "from learning_dynamics import sweep; print(sweep._malloc_policy())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for extra, expected in (({"MALLOC_TRIM_THRESHOLD_": "65536"}, "True"), ({}, "False"),
                            ({"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "131072"}, "False")):
        out = subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, (extra, out.stderr)


# --------------------------------------------------------------------------
# The cache: an interrupted sweep resumes
# --------------------------------------------------------------------------


def test_an_interrupted_sweep_resumes_from_its_cache(tmp_path):
    cache = sweep.Cache(tmp_path, key={"chapter": "feedback_principle", "preset": "smoke", "steps": 60})
    whole = sweep.map(lambda_grid_end, GRID)
    fn = Recorder(fail_at=GRID.flat["lam"][9])            # chunk 3 of 5 (3 points each)
    with pytest.raises(KeyError, match="simulated interruption") as err:
        sweep.map(fn, GRID, chunks=3, cache=cache)
    assert "raised in sweep chunk 3 of 5 (points 9 to 11)" in err.value.__notes__
    assert len(fn.computed) == 4
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name[:11] for p in run.glob("chunk-*.npz")) == [f"chunk-{i:05d}" for i in range(3)]
    assert not list(run.glob(".*tmp")) and (run / "key.json").exists()

    fn.computed.clear()
    assert_same(sweep.map(fn, GRID, chunks=3, cache=cache), whole)
    assert fn.computed == [GRID.flat["lam"][9], GRID.flat["lam"][12]]  # only the two missing chunks
    fn.computed.clear()
    assert_same(sweep.map(fn, GRID, chunks=3, cache=cache), whole)
    assert fn.computed == []                                          # all five from disk

    # Another chunk size, key or grid is another run; a damaged chunk file is computed again.
    assert_same(sweep.map(fn, GRID, chunks=5, cache=cache), whole) and len(fn.computed) == 3
    fn.computed.clear()
    sweep.map(fn, GRID, chunks=3, cache=sweep.Cache(tmp_path, key={"chapter": "other"}))
    assert len(fn.computed) == 5
    fn.computed.clear()
    damaged = sorted(run.glob("chunk-00001-*.npz"))[0]
    damaged.write_bytes(damaged.read_bytes()[:40])
    assert_same(sweep.map(fn, GRID, chunks=3, cache=cache), whole)
    assert fn.computed == [GRID.flat["lam"][3]]
    array_run = sweep.map(numpy_points, [(1, 2), (3, 4), (5, 6)], chunks=2, cache=str(tmp_path))  # folder only
    assert np.array_equal(sweep.map(numpy_points, [(1, 2), (3, 4), (5, 6)], chunks=2, cache=tmp_path), array_run)


def test_a_connection_with_a_cache_numbers_its_maps(tmp_path):
    """Two maps of one function over the same points, through one cached connection, are two runs (call 0 and 1),
    and a new connection of the same run (a rerun of the chapter) finds both."""
    cache = sweep.Cache(tmp_path, key={"chapter": "feedback_principle", "preset": "smoke"})
    first, second = Recorder(), Recorder()
    with sweep.client(None, cache=cache) as here:
        assert "chunks cached in" in repr(here)
        a = sweep.map(first, GRID, chunks=5, client=here)
        b = sweep.map(first, GRID, chunks=5, client=here)  # the same function and points: told apart by call
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    assert {json.loads(k.read_text())["key"]["call"] for k in tmp_path.glob("*/key.json")} == {0, 1}
    with sweep.client(None, cache=str(tmp_path / "elsewhere")) as other:
        assert other.cache.folder == tmp_path / "elsewhere"
    with sweep.client(None, cache=cache) as rerun:
        assert_same(sweep.map(second, GRID, chunks=5, client=rerun), a)
        assert_same(sweep.map(second, GRID, chunks=5, client=rerun), b)
    assert second.computed == []
    with pytest.raises(ValueError, match="cache must be None, a folder or a sweep.Cache; got 3"):
        sweep.client(None, cache=3)


def test_the_cache_is_shared_by_the_cluster_and_the_process(cluster, tmp_path):
    cache = sweep.Cache(tmp_path, key={"chapter": "feedback_principle"})
    on_cluster = sweep.map(Recorder(), GRID, client=cluster, chunks=4, cache=cache)
    here = Recorder()
    assert_same(sweep.map(here, GRID, chunks=4, cache=cache), on_cluster)
    assert here.computed == []  # written by this process as the cluster's chunks came back


def test_code_hash_covers_every_source_file(tmp_path):
    assert sweep.code_hash() == sweep.code_hash() and len(sweep.code_hash()) == 64
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    before = sweep.code_hash(tmp_path)
    (tmp_path / "notes.txt").write_text("not code")
    assert sweep.code_hash(tmp_path) == before
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert sweep.code_hash(tmp_path) != before


def test_cache_key_must_be_json_like(tmp_path):
    from learning_dynamics import presets

    sweep.Cache(tmp_path, key={"preset": presets.resolve("feedback_principle", "smoke"), "lams": np.arange(3)})
    with pytest.raises(ValueError, match="key must hold JSON-like values"):
        sweep.Cache(tmp_path, key={"fn": object()})
    with pytest.raises(ValueError, match="key must be a dict naming the run"):
        sweep.Cache(tmp_path, key="feedback")
    with pytest.raises(ValueError, match="cache must be None, a folder or a sweep.Cache; got 3"):
        sweep.map(numpy_points, [(1, 2)], cache=3)


# --------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_the_result_is_identical(cluster, tmp_path):
    whole = sweep.map(lambda_grid_end, GRID)
    marker = tmp_path / "killed-once"
    import functools

    fn = functools.partial(die_once, marker=str(marker))
    assert_same(sweep.map(fn, GRID, client=cluster, chunks=4, retries=0), whole)  # the scheduler reschedules
    assert marker.exists()


def test_a_failing_chunk_raises_its_own_exception(cluster):
    bad = float(GRID.flat["lam"][7])
    import functools

    fn = functools.partial(fail_on_point, bad=bad)
    for client in (None, cluster):
        with pytest.raises(ZeroDivisionError, match=f"lam {bad} is not allowed") as err:
            sweep.map(fn, GRID, client=client, chunks=4)
        assert "raised in sweep chunk 1 of 4 (points 4 to 7)" in err.value.__notes__


def test_retries_rerun_a_chunk_that_raised(cluster, tmp_path):
    import functools

    fn = functools.partial(raise_once, marker=str(tmp_path / "raised-once"))
    assert_same(sweep.map(fn, GRID, client=cluster, chunks=8, retries=1), sweep.map(lambda_grid_end, GRID))


def test_a_bad_scheduler_address_fails_fast_and_clearly():
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        sweep.client("tcp://127.0.0.1:1")
    assert time.perf_counter() - start < 5.0
    assert str(err.value).startswith("scheduler must be None, 'local:N' or a scheduler address such as "
                                     "tcp://host:8786 that answers; got 'tcp://127.0.0.1:1'")


@pytest.mark.parametrize("scheduler", ["local:0", "local:-2", "local:x", "local", "http//x", "", 5, 2.0])
def test_bad_schedulers_are_rejected(scheduler):
    with pytest.raises(ValueError) as err:
        sweep.client(scheduler)
    assert str(err.value).startswith("scheduler must be None, 'local:N' or a scheduler address such as tcp://host:8786")
    assert f"got {scheduler!r}" in str(err.value)


@pytest.mark.parametrize("chunks", [0, -1, "a", 1.5, True])
def test_bad_chunks_are_rejected(chunks):
    with pytest.raises(ValueError) as err:
        sweep.map(numpy_points, [(1, 2)], chunks=chunks)
    assert str(err.value) == ("chunks must be None (one call on every point) or an integer >= 1 (points per chunk); "
                              f"got {chunks!r}")


@pytest.mark.parametrize("fn, items, message", [
    (lambda c: np.zeros(len(c) + 1), [1, 2, 3], r"fn's result must have a leading axis of the chunk's length, one row "
                                                r"per point; chunk 0 \(3 points\) returned shape \(4,\)"),
    (lambda c: "nope", [1, 2], r"fn's result must be a numpy array \(or a dict of them\)"),
    (lambda c: {"a": np.float64(1.0)}, [1], r"fn's result\['a'\] must have a leading axis"),
    (lambda c: np.zeros(len(c)), "abc", r"items must be a Grid, a numpy array or a sequence"),
    (lambda c: np.zeros(len(c)), [], r"items must hold at least one point; got \[\]"),
    ("not callable", [1], r"fn must be a callable fn\(chunk\); got 'not callable'"),
])
def test_bad_fn_results_and_items_are_rejected(fn, items, message):
    with pytest.raises(ValueError, match=message):
        sweep.map(fn, items)


def test_bad_client_is_rejected():
    with pytest.raises(ValueError, match="client must be None .* got 'local:2'"):
        sweep.map(numpy_points, [(1, 2)], client="local:2")
