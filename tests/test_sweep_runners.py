"""Each chapter's heavy grid gives the same result in chunks and on a 2-worker LocalCluster as in one batched call."""

from __future__ import annotations

import learning_dynamics  # noqa: F401  (first: the thread policy)
import numpy as np
import pytest
import torch

from learning_dynamics import train as train_module
from learning_dynamics import gated, linear, mlp, operators, shallow, sweep, tasks
from learning_dynamics.tasks import digits, hierarchy, recurrent


@pytest.fixture(scope="module")
def cluster():
    with sweep.client("local:2") as connection:
        yield connection


def same_run(a, b):
    assert np.array_equal(a.times, b.times)
    assert a.records.keys() == b.records.keys() and a.final.keys() == b.final.keys()
    assert all(np.array_equal(a.records[k], b.records[k]) for k in a.records)
    assert all(np.array_equal(a.final[k], b.final[k]) for k in a.final)


def lambda_grid(**where):  # feedback_principle: the lazy/rich grid
    x, y = tasks.random_regression(10, 2, 2, seed=1, singular_values=(0.54, 0.14))
    lams, scales = np.repeat(np.linspace(-9, 9, 6), 5), np.tile(np.linspace(1, 20, 5), 6)
    return linear.lambda_grid_runs(x, y, lams, scales, lr=0.01, steps=100, seed=1, **where)


def gd_batch(**where):  # three_mechanisms: the GD batch of prototypes
    batch = shallow.prototype_inits([10, 100], [1, 100], seed=2)
    return shallow.gd_runs(batch.u0, batch.w0, **batch.hyper(), lr=1e-2, steps=200, record_every=20, **where)


def generalisation(**where):  # neural_race: networks of several init scales and learning rates
    routing = hierarchy.routing_task(hierarchy.routing_gate(7, 4), 16)
    params = gated.orthogonal_init(routing.net, np.linspace(0.2, 1.0, 5), 5, seed=3)
    return gated.train_gdln(routing.net, params, [routing.data] * 5, steps=40, lr=np.linspace(0.01, 0.02, 5),
                            record=lambda p: {"pairs": hierarchy.routing_pair_errors(routing, p)}, record_every=10,
                            **where)


@pytest.mark.parametrize("runner", [lambda_grid, gd_batch, generalisation], ids=["feedback", "three_mechanisms", "race"])
def test_chunks_and_a_cluster_are_bitwise_the_one_call(runner, cluster):
    whole = runner()
    same_run(whole, runner(chunks=7))
    same_run(whole, runner(client=cluster))


@pytest.fixture(scope="module")
def gru_runs():
    """kpflow: three small GRUs trained on memory-pro, and four trained on the four memory tasks."""
    def trained(n_in, n_nets, make, steps):
        step = operators.make_step("gru", n_in, 8)
        params = operators.init_params(step, 3, n_networks=n_nets, g=np.linspace(0.5, 2.0, n_nets), seed=0,
                                       dtype=torch.float32)
        x, y = make(4, uniform=True, noise=0.0)[:2]
        sampler = recurrent.sampler(lambda n, gen: make(n, generator=gen)[:2], n_nets, 4)
        run = train_module.train(operators.mse_loss(step), params, steps=steps, lr=1e-2, optimizer="adam", data=sampler,
                                 record=operators.recorder(step, x, y), record_every=steps // 2, seed=0)
        return step, run
    pro = lambda n, **kw: recurrent.memory_pro(n, 2, 2, 3, dtype=torch.float32, **kw)  # noqa: E731
    multi = lambda n, **kw: recurrent.memory_multitask(max(1, n // 4), 1, 2, 2, 3, dtype=torch.float32, **kw)  # noqa: E731
    return trained(3, 3, pro, 6), trained(3 + len(recurrent.MEMORY_TASKS), 4, multi, 4), multi(8, uniform=True, noise=0.0)


def _same_arrays(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same_arrays(a[k], b[k])
        else:
            assert np.array_equal(a[k], b[k]), k


def test_the_kpflow_analyses_on_a_cluster_are_bitwise_the_one_process(gru_runs, cluster):
    (step, run), (mt_step, mt_run), (x, y, task) = gru_runs
    x_eval = recurrent.memory_pro(4, 2, 2, 3, uniform=True, noise=0.0, dtype=torch.float32)[0]
    analyses = {
        "ranks": lambda **w: operators.rank_history(step, run.records, x_eval, n_probes=4, seed=1, **w),
        "spectra": lambda **w: operators.final_spectra(step, run.records, x_eval, 3, seed=1, **w),
        "alignment": lambda **w: operators.alignment_history(mt_step, mt_run.records, x, y, task, 4, **w),
    }
    for name, analyse in analyses.items():
        whole = analyse()
        _same_arrays(whole, analyse(chunks=1))
        _same_arrays(whole, analyse(client=cluster))


def test_kpflow_training_in_chunks_of_networks(cluster):
    """One call: bitwise the trainer on every network at once. Chunks: the first keeps the trainer's trials, the
    others draw their own; chunked runs are bitwise the same here and on a cluster."""
    step = operators.make_step("gru", 3, 8)
    params = operators.init_params(step, 3, n_networks=4, g=np.linspace(0.5, 2.0, 4), seed=0, dtype=torch.float32)
    trials = lambda n, gen: recurrent.memory_pro(n, 2, 2, 3, generator=gen, dtype=torch.float32)  # noqa: E731
    x, y = recurrent.memory_pro(4, 2, 2, 3, uniform=True, noise=0.0, dtype=torch.float32)
    run = lambda **w: operators.train_networks(step, params, trials, 4, x, y, steps=6, lr=1e-2, record_every=3,  # noqa: E731
                                               seed=2, **w)
    direct = train_module.train(operators.mse_loss(step), params, steps=6, lr=1e-2, optimizer="adam", record_every=3,
                                data=recurrent.sampler(trials, 4, 4), record=operators.recorder(step, x, y), seed=2)
    whole = run()
    same_run(whole, direct)
    chunked = run(chunks=2)
    same_run(chunked, run(client=cluster, chunks=2))
    first = {k: v[:, :2] for k, v in chunked.records.items()}
    alone = operators.train_networks(step, {k: v[:2] for k, v in params.items()}, trials, 4, x, y, steps=6, lr=1e-2,
                                     record_every=3, seed=2)
    assert all(np.array_equal(first[k], alone.records[k]) for k in first), "a chunk is the networks trained alone"
    assert not np.array_equal(chunked.records["eval_loss"][-1, 2:], whole.records["eval_loss"][-1, 2:])


def test_the_dnn_grid_on_a_cluster_is_another_draw_of_the_same_experiment(cluster):
    # spring_block: chunks of noise levels share the initialisations; only the per-step noise is drawn per chunk
    data = digits.load(300, seed=0)
    settings = dict(width=16, depth=3, steps=20, seed=0)
    whole = mlp.train_grid(data, [0.0, 1.0], [0.5, 0.0], 2, **settings)
    split = mlp.train_grid(data, [0.0, 1.0], [0.5, 0.0], 2, client=cluster, **settings)
    assert split.log_d.shape == whole.log_d.shape and split.records["loss"].shape == whole.records["loss"].shape
    assert np.array_equal(split.log_d[:, 1], whole.log_d[:, 1])          # no noise: nothing is drawn, bitwise equal
    assert np.abs(split.accuracy - whole.accuracy).max() <= 0.05         # noisy column: within a few test images
    start = [run.records["loss"][0].reshape(2, 2, 2)[:, 1] for run in (split, whole)]
    assert np.array_equal(*start)                                        # the same initial networks


def test_a_bad_chunk_size_names_the_parameter():
    with pytest.raises(ValueError, match="chunks must be"):
        lambda_grid(chunks=0)
    assert torch.get_num_threads() >= 1
