"""Gated deep linear networks: the graph, the loss, and the neural race reduction against brute-force GD."""

import numpy as np
import pytest
import torch

from learning_dynamics import gated, linear
from learning_dynamics.ode import integrate
from learning_dynamics.tasks import hierarchy
from learning_dynamics.train import train

# ---------------------------------------------------------------------------
# The graph and its data
# ---------------------------------------------------------------------------

DIAMOND = ({"x": 3, "a": 5, "b": 4, "y": 3},
           {"xa": ("x", "a"), "xb": ("x", "b"), "ab": ("a", "b"), "ay": ("a", "y"), "by": ("b", "y")})


def test_pathways_are_enumerated_from_inputs_to_outputs():
    net = gated.GDLN(*DIAMOND)
    assert net.inputs == ("x",) and net.outputs == ("y",)
    assert set(net.pathways) == {("xa", "ay"), ("xa", "ab", "by"), ("xb", "by")}
    assert net.order.index("a") < net.order.index("b")


@pytest.mark.parametrize("nodes,edges,message", [
    ({"x": 2, "h": 2, "y": 2}, {"e1": ("x", "h"), "e2": ("h", "y"), "e3": ("y", "h")}, "cycle"),
    ({"x": 2, "h": 2}, {"e1": ("x", "h"), "e2": ("h", "z")}, "dangling"),
    ({"x": 2, "h": 2, "z": 3}, {"e1": ("x", "h")}, "no edges"),
    ({"x": 0, "h": 2}, {"e1": ("x", "h")}, "width of node 'x'"),
    ({"x": 2, "h": 2}, {"e1": ("x",)}, "(source, target)"),
])
def test_malformed_graphs_raise(nodes, edges, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gated.GDLN(nodes, edges)


def test_bad_data_raises():
    net = gated.GDLN(*DIAMOND)
    x, y = np.zeros((6, 3)), np.zeros((6, 3))
    with pytest.raises(ValueError, match="gate of edge 'ab' must have shape"):
        gated.gated_data(net, {"x": x}, {"y": y}, edge_gates={"ab": np.ones(5)})
    with pytest.raises(ValueError, match="unknown node"):
        gated.gated_data(net, {"x": x}, {"y": y}, node_gates={"q": np.ones(6)})
    with pytest.raises(ValueError, match="inputs"):
        gated.gated_data(net, {"a": x}, {"y": y})
    with pytest.raises(ValueError, match=r"targets\['y'\] must have shape"):
        gated.gated_data(net, {"x": x}, {"y": np.zeros((6, 2))})
    with pytest.raises(ValueError, match="must be zero where output node"):
        gated.gated_data(net, {"x": x}, {"y": np.ones((6, 3))}, node_gates={"y": np.zeros(6)})


def random_gated_data(net, n, rng):
    inputs = {v: rng.standard_normal((n, net.nodes[v])) for v in net.inputs}
    gates = {v: (rng.random(n) < 0.8).astype(float) for v in net.nodes}
    targets = {v: rng.standard_normal((n, net.nodes[v])) * gates[v][:, None] for v in net.outputs}
    edge_gates = {e: (rng.random(n) < 0.8).astype(float) for e in net.edges}
    return gated.gated_data(net, inputs, targets, node_gates=gates, edge_gates=edge_gates, weights=rng.random(n))


def test_correlation_loss_equals_per_sample_loss_and_gradient():
    """The dynamics see the data only through the gated correlations (Saxe et al. 2022, Eq. 4)."""
    rng = np.random.default_rng(0)
    net = gated.GDLN(*DIAMOND)
    datasets = [random_gated_data(net, 20, rng) for _ in range(3)]
    params = gated.orthogonal_init(net, 0.7, 3, seed=1)
    groups, corr = gated.correlation_batch(net, datasets)
    samples = gated.data_tensors(net, datasets)
    for p in (params, {k: v.clone().requires_grad_(True) for k, v in params.items()}):
        a, b = gated.correlation_loss(net, groups)(p, *corr), gated.loss_function(net)(p, *samples)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    leaves = list(p.values())
    ga = torch.autograd.grad(gated.correlation_loss(net, groups)(p, *corr).sum(), leaves)
    gb = torch.autograd.grad(gated.loss_function(net)(p, *samples).sum(), leaves)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12)
    errors = gated.output_errors(net, params, samples)
    assert errors.shape == (3, 20)


def test_orthogonal_init_has_the_given_singular_values():
    net = gated.GDLN(*DIAMOND)
    params = gated.orthogonal_init(net, np.array([0.3, 2.0]), 2, seed=0)
    for w in params.values():
        s = torch.linalg.svdvals(w)
        torch.testing.assert_close(s, torch.tensor([[0.3], [2.0]], dtype=s.dtype).expand_as(s))


# ---------------------------------------------------------------------------
# The reduction against brute-force gradient descent
# ---------------------------------------------------------------------------


def aligned_context_task(net, n_contexts, rank, rng):
    """Random context-dependent gates and targets Y_c = U diag(s_c) V^T: the reduction's assumptions hold."""
    x_node, y_node = net.inputs[0], net.outputs[0]
    u = np.linalg.qr(rng.standard_normal((net.nodes[y_node], rank)))[0]
    v = np.linalg.qr(rng.standard_normal((net.nodes[x_node], net.nodes[x_node])))[0]
    n_items = net.nodes[x_node]
    context = np.repeat(np.arange(n_contexts), n_items)
    strengths = rng.uniform(0.5, 3.0, (n_contexts, rank)) * rng.choice([-1, 1], (n_contexts, rank))
    y = np.concatenate([(u * s) @ v[:, :rank].T for s in strengths], axis=1).T  # rows: (context, item)
    ctx_gates = {k: rng.integers(0, 2, n_contexts).astype(float) for k in list(net.edges)}
    for k in ctx_gates:  # at least one pathway on in every context
        ctx_gates[k][0] = 1.0
    data = gated.gated_data(net, {x_node: np.tile(np.eye(n_items), (n_contexts, 1))}, {y_node: y},
                            edge_gates={e: g[context] for e, g in ctx_gates.items()},
                            weights=rng.uniform(0.5, 1.5, n_contexts)[context])
    modes_in = {x_node: v[:, :rank]}
    modes_out = {y_node: u}
    return data, modes_in, modes_out


class Task:
    def __init__(self, net, data, modes_in, modes_out):
        self.net, self.data, self.modes_in, self.modes_out = net, data, modes_in, modes_out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduction_matches_brute_force_gd_on_random_gated_networks(seed):
    rng = np.random.default_rng(seed)
    nodes, edges = DIAMOND
    net = gated.GDLN({**nodes, "x": 4, "y": 5}, edges)
    task = Task(net, *aligned_context_task(net, 3, 3, rng))
    run = gated.aligned_runs([task], 0.3, lr=2e-3, steps=600, records=30, seed=seed)
    # GD step = Euler step of the reduced equations, exactly
    steps, euler = gated.race_steps(run.final["start"][0], run.final["races"][0], 2e-3, 600)
    np.testing.assert_allclose(run.records["edges_gd"][:, 0], euler[np.rint(run.times / 2e-3).astype(int)], atol=1e-11)
    # and GD at a small step follows the reduced gradient flow
    scale = np.abs(run.final["drive"]).max()
    assert np.max(np.abs(run.records["gd"] - run.records["flow"])) < 0.02 * scale
    # the loss in reduced variables is the network's loss
    np.testing.assert_allclose(gated.race_loss(run.records["flow_edges"][0, 0], run.final["races"][0]), run.records["loss"][0, 0], rtol=1e-10)


def test_reduction_refuses_data_that_break_its_assumptions():
    rng = np.random.default_rng(3)
    net = gated.GDLN(*DIAMOND)
    data = random_gated_data(net, 30, rng)
    with pytest.raises(ValueError, match="not diagonal"):
        gated.race_reduction(net, data, {"x": np.eye(3)}, {"y": np.eye(3)})
    with pytest.raises(ValueError, match="orthonormal"):
        gated.race_reduction(net, data, {"x": 2 * np.eye(3)}, {"y": np.eye(3)})


def test_ungated_gdln_is_the_plain_deep_linear_network():
    """A chain GDLN without gates trains exactly like W2 W1 x, and its reduction is the Saxe sigmoid."""
    task = hierarchy.tree_task(depth=2, hidden=6)
    params = gated.orthogonal_init(task.net, 0.1, 2, seed=4)
    ours = gated.train_gdln(task.net, params, task.data, steps=200, lr=0.02)
    x = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    y = torch.as_tensor(hierarchy.tree_features(2)).expand(2, 7, 4)
    plain = train(linear.matrix_loss, {"w1": params["W1"], "w2": params["W2"]}, data=(x, y), steps=200, lr=0.02 * 4)
    # matrix_loss averages over the 4 items; the GDLN loss sums them
    torch.testing.assert_close(ours.params["W1"], plain.params["w1"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.params["W2"], plain.params["w2"], rtol=1e-12, atol=1e-12)

    race = gated.race_reduction(task.net, task.data, task.modes_in, task.modes_out)
    _, s, _ = hierarchy.modes_of(hierarchy.tree_features(2))
    t = np.linspace(0, 6, 50)
    b = gated.race_solve(t, np.full((2, len(s)), 0.03), race)
    np.testing.assert_allclose(gated.race_products(b, race)[:, 0], linear.sigmoid_mode(t[:, None], s, 0.03**2), rtol=1e-7)


def test_deep_tree_chain_reduces_to_the_deep_mode():
    """An L-layer tree chain: its reduction is Saxe's du/dt = L u^(2-2/L) (s - u), and GD from the aligned
    init follows it (the chapter's learning time against depth)."""
    for layers in (1, 3, 4):
        task = hierarchy.tree_task(depth=2, hidden=6, layers=layers)
        assert list(task.net.edges) == [f"W{k + 1}" for k in range(layers)] and len(task.net.pathways) == 1
    task = hierarchy.tree_task(depth=2, hidden=6, layers=4)
    _, s, _ = hierarchy.modes_of(hierarchy.tree_features(2))
    race = gated.race_reduction(task.net, task.data, task.modes_in, task.modes_out)
    t = np.linspace(0, 3, 30)
    b = gated.race_solve(t, np.full((4, len(s)), 0.5), race)
    np.testing.assert_allclose(gated.race_products(b, race)[:, 0], linear.deep_mode(t[:, None], s, 0.5**4, 4), rtol=1e-7)
    run = gated.aligned_runs([task], 0.5, lr=1e-3, steps=3000, records=30, seed=1)
    err = np.abs(run.records["gd"][:, 0, 0] - linear.deep_mode(run.times[:, None], s, 0.5**4, 4)).max() / s.min()
    assert err < 0.01
    with pytest.raises(ValueError, match="layers"):
        hierarchy.tree_task(depth=2, layers=0)


def test_xor_task_reduces_to_three_pathways_and_gd_solves_it():
    """The XoR GDLN: drives 0, +2, -2 on one mode; GD from the aligned init follows the reduction to zero loss."""
    task = hierarchy.xor_task(hidden=4)
    race = gated.race_reduction(task.net, task.data, task.modes_in, task.modes_out)
    np.testing.assert_allclose(race.drive[:, 0], [0.0, 2.0, -2.0], atol=1e-12)
    np.testing.assert_allclose(race.coupling[:, :, 0], [[4, 2, 2], [2, 2, 0], [2, 0, 2]], atol=1e-12)
    run = gated.aligned_runs([task], 0.1, lr=1e-3, steps=3000, records=30, seed=2)
    assert np.abs(run.records["gd"] - run.records["flow"]).max() < 2e-3
    assert run.records["loss"][-1, 0] < 1e-6 * run.records["loss"][0, 0]
    with pytest.raises(ValueError, match="hidden"):
        hierarchy.xor_task(hidden=0)


def test_chain_closed_form_matches_integration_and_the_race():
    t = np.linspace(0, 12, 80)
    w = np.array([0.5, 2.0, 0.5])
    b0 = 0.2 * np.sqrt(w)                                  # b^2 / w equal: the closed-form branch
    closed = gated.chain_solve(t, b0, w, 2.0)
    numeric = integrate(lambda b: gated.chain_rhs(b, w, 2.0), t, b0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(closed, numeric, rtol=1e-7, atol=1e-10)
    # the routing network's 49-pathway race collapses onto the chain with weights (K/M^2, K/M, K/M^2) x 3.5
    routing = hierarchy.routing_task(hierarchy.routing_gate(7, 4), hidden=8)
    race = gated.race_reduction(routing.net, routing.data, routing.modes_in, routing.modes_out)
    _, s, _ = hierarchy.modes_of(hierarchy.routing_targets())
    assert np.allclose(s**2, [185, 41, 9, 9])
    b = gated.race_solve(t[:30], np.full((15, 4), 0.1), race)
    chain = gated.chain_solve(t[:30], np.full((4, 3), 0.1), np.array([4 / 49, 4 / 7, 4 / 49]) * 3.5, s)
    np.testing.assert_allclose(b[:, list(routing.net.edges).index("shared")], chain[..., 1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_deep_mode_matches_integration(depth):
    t = np.linspace(0, 30, 40)
    numeric = integrate(lambda u: 0.4 * depth * u ** (2 - 2 / depth) * (1.5 - u), t, [1e-3], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(linear.deep_mode(t, 1.5, 1e-3, depth, 0.4), numeric[:, 0], rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match="depth"):
        linear.deep_mode(t, 1.5, 1e-3, 1)


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


def test_routing_gate_and_tasks():
    gate = hierarchy.routing_gate(7, 4)
    assert (gate.sum(0) == 4).all() and (gate.sum(1) == 4).all()
    assert set(np.flatnonzero(gate[0])) == {6, 0, 1, 2}
    with pytest.raises(ValueError, match="n_trained"):
        hierarchy.routing_gate(7, 8)
    task = hierarchy.routing_task(gate, hidden=8)
    assert task.data.n_samples == 28 * 4 and task.test.n_samples == 49 * 4
    assert len(task.net.pathways) == 49
    _, s, _ = hierarchy.modes_of(hierarchy.tree_features(3))
    np.testing.assert_allclose(np.unique(s.round(9)), np.sqrt([1, 3, 7, 15]))
    ctx = hierarchy.context_task(3, n_slots=5, shared_depth=3)
    assert len(ctx.net.pathways) == 6 and ctx.data.weights.sum() == 12
    with pytest.raises(ValueError, match="strengths"):
        hierarchy.context_targets(2, (1.0, 2.0))


def test_stacked_races_solve_like_separate_ones():
    tasks = [hierarchy.context_task(c, 3, 2, 8, (3.0, 2.0, 2.5)) for c in (1, 2, 3)]
    races = [gated.race_reduction(t.net, t.data, t.modes_in, t.modes_out) for t in tasks]
    b0 = np.stack([gated.signed_strengths(r, 0.1) for r in races])
    t = np.linspace(0, 1.5, 7)
    both = gated.race_solve(t, b0, gated.stack_races(races))
    for k, r in enumerate(races):
        np.testing.assert_allclose(both[:, k], gated.race_solve(t, b0[k], r), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gated.race_rhs(b0[k], r), gated.race_rhs(b0, gated.stack_races(races))[k], rtol=1e-14)


def test_integrate_matches_a_known_solution():
    # logistic growth dy/dt = y (1 - y): y = 1 / (1 + (1/y0 - 1) e^-t)
    t = np.linspace(0, 8, 17)
    y = integrate(lambda y: y * (1 - y), t, np.array([0.01, 0.5]))
    exact = 1 / (1 + (1 / np.array([0.01, 0.5]) - 1) * np.exp(-t[:, None]))
    np.testing.assert_allclose(y, exact, rtol=1e-10)


def test_routing_pair_errors_and_projectors_match_the_generic_ones():
    task = hierarchy.routing_task(hierarchy.routing_gate(5, 2), hidden=8)
    params = gated.orthogonal_init(task.net, np.array([0.3, 1.5]), 2, seed=3)
    batch = gated.data_tensors(task.net, task.test, 2)
    torch.testing.assert_close(hierarchy.routing_pair_errors(task, params),
                               gated.output_errors(task.net, params, batch, task.test_groups, 25), rtol=1e-12, atol=1e-12)
    # pathway strengths against the direct product of the weights along each pathway
    pi = gated.pathway_strengths(task.net, params, task.modes_in, task.modes_out)
    for k, p in enumerate(task.net.pathways):
        w = params[p[0]]
        for e in p[1:]:
            w = params[e] @ w
        u = torch.as_tensor(task.modes_out[task.net.target(p)])
        v = torch.as_tensor(task.modes_in[task.net.source(p)])
        torch.testing.assert_close(pi[:, k], torch.einsum("ia,nij,ja->na", u, w, v))


def test_routing_code_similarity_is_the_cosine_of_the_shared_layers_codes():
    task = hierarchy.routing_task(hierarchy.routing_gate(3, 2), hidden=6)
    params = gated.orthogonal_init(task.net, np.array([0.3, 2.0]), 2, seed=1)
    codes = torch.cat([params["shared"] @ params[f"in{i}"] for i in range(3)], dim=-1)     # (n, h, M items)
    codes = codes / codes.norm(dim=1, keepdim=True)
    torch.testing.assert_close(hierarchy.routing_code_similarity(task, params), codes.transpose(1, 2) @ codes)
    same = {k: v.clone() for k, v in params.items()}
    same["in1"], same["in2"] = same["in0"], same["in0"]                                       # one code for all modules
    np.testing.assert_allclose(hierarchy.cross_module_similarity(hierarchy.routing_code_similarity(task, same), 3), 1.0)
    # module i's item a against module j's item a only: a block-diagonal pattern that leaves other items out
    blocks = np.kron(np.ones((3, 3)), np.diag([0.5, -0.5, 0.2, 0.4])) + np.eye(12)
    np.testing.assert_allclose(hierarchy.cross_module_similarity(blocks, 3), 0.15)
    with pytest.raises(ValueError, match="n_modules = 5"):
        hierarchy.cross_module_similarity(blocks, 5)


def test_pathway_error_is_half_the_squared_gap_to_the_target():
    task = hierarchy.routing_task(hierarchy.routing_gate(3, 2), hidden=6)
    race = gated.race_reduction(task.net, task.data, task.modes_in, task.modes_out)
    b = np.random.default_rng(0).uniform(0.1, 1.0, (4, len(task.net.edges), 4))
    s = np.array([3.0, 2.0, 1.0, 0.5])
    np.testing.assert_allclose(gated.pathway_error(b, race, s, pathway=1),
                               0.5 * ((s - gated.race_products(b, race)[:, 1]) ** 2).sum(-1))
    with pytest.raises(ValueError, match="pathway must be < 9"):
        gated.pathway_error(b, race, s, pathway=9)


def test_one_context_ties_the_shared_and_the_private_pathway():
    # at C = 1 both pathways of depth 2 see the same data from the same start: a tie by symmetry (moved out of the claims)
    task = hierarchy.context_task(1, 1, 2, 8, (3.0, 2.0, 2.5))
    run = gated.aligned_runs([task], 0.1, lr=1e-3, steps=2000, seed=0)
    share = run.records["gd"][-1, 0, 0, :2] / run.records["gd"][-1, 0, :2, :2].sum(0)
    np.testing.assert_allclose(share, 0.5, atol=1e-9)


def test_routing_reduction_at_step_lr_over_k_is_the_same_at_every_k():
    # the neural_race chapter draws one reduction line for its K/M sweep (step km_lr / K): each edge collects K paths
    steps, curves = np.arange(0, 301, 30), []
    s_route = hierarchy.modes_of(hierarchy.routing_targets())[1]
    for k in (1, 6):
        task = hierarchy.routing_task(hierarchy.routing_gate(10, k), hidden=16)
        race = gated.race_reduction(task.net, task.data, task.modes_in, task.modes_out)
        flow = gated.race_solve(steps * 0.12 / k, np.full((len(task.net.edges), 4), 0.08), race)
        curves.append(gated.pathway_error(flow, race, s_route))
    assert curves[0][-1] < 0.5 * curves[0][0]                                     # it has learned
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-7, atol=1e-9)


def test_pair_samples_gate_on_only_the_pair_and_carry_its_items():
    net = hierarchy.routing_network(3, 2, 4, 5)
    items = [np.arange(4.0).reshape(2, 2) + 10 * i for i in range(3)]
    targets = [np.full((2, 5), float(j)) for j in range(3)]
    data = hierarchy.pair_samples(net, [(0, 2), (1, 0)], items, targets, weight=0.5)
    assert data.n_samples == 4 and np.all(data.weights == 0.5)
    np.testing.assert_array_equal(data.inputs["x0"][:2], items[0])
    np.testing.assert_array_equal(data.inputs["x1"][2:], items[1])
    np.testing.assert_array_equal(data.targets["y2"][:2], targets[2])
    on = {v: np.flatnonzero(data.node_gates[v]).tolist() for v in ("x0", "x1", "x2", "y0", "y1", "y2")}
    assert on == {"x0": [0, 1], "x1": [2, 3], "x2": [], "y0": [2, 3], "y1": [], "y2": [0, 1]}
