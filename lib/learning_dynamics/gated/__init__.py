"""Gated deep linear networks and the neural race reduction (Saxe, Sodhani & Lewallen 2022).

A gated deep linear network (GDLN) is a directed acyclic graph: nodes are
layers of linear units and edges are weight matrices. Every node v and edge e
carries a gate, g_v and g_e in {0, 1} (any real value is allowed), which
depends on the sample. A node's activity is

    h_v = g_v sum_{e into v} g_e W_e h_source(e),     h_v = g_v x_v at input nodes,

so an output node sums over the pathways p that reach it,
y_hat = sum_p g_p W_p x_p, with g_p the product of the gates and W_p the product
of the weights along p. Each pathway is linear; the gating makes the network a
nonlinear function of its input.

With samples n of weight w_n and the loss L = 1/2 sum_n w_n sum_v |y_v - y_hat_v|^2,
gradient flow (time t = learning rate x steps) depends on the data only through
the gated correlations

    Sigma_yx(p) = sum_n w_n g_p y x_p^T,      Sigma_xx(q, p) = sum_n w_n g_q g_p x_q x_p^T.

When every Sigma_yx(p) = U S_p V^T and Sigma_xx(q, p) = V D_qp V^T share singular
vectors, and the weights start aligned with them (W_e = R_t diag(b_e) R_s^T),
every edge stays diagonal and each mode alpha follows the scalar ODEs

    db_e/dt = sum_{p through e} (prod_{e' in p, e' != e} b_e') (s_p - sum_q d_qp pi_q),

with pi_p the product of the b's along p: the neural race reduction. All
pathways feed one error, so they race; a pathway that is active in many
contexts collects gradient from all of them and wins.

Where the pathways through a chain of edges are all equivalent, the race
collapses to one chain ODE db_e/dt = w_e prod_{e' != e} b_e' (s - pi)
(:func:`chain_solve`), solved in closed form when b_e^2 / w_e is the same for
every edge (Saxe et al. 2014; :func:`learning_dynamics.linear.deep_mode`).

The package: ``graph`` (the network, its data, initialisations and mode
strengths), ``loss`` (gradient descent, batched over networks) and ``race``
(the race reduction and the chain ODE).
"""

from .graph import (  # noqa: F401
    Correlations,
    GDLN,
    GatedData,
    aligned_init,
    edge_projector,
    edge_strengths,
    gated_correlations,
    gated_data,
    node_bases,
    orthogonal_init,
    pathway_gates,
    pathway_projector,
    pathway_strengths,
    side_by_side,
)
from .loss import (  # noqa: F401
    correlation_batch,
    correlation_loss,
    data_tensors,
    output_errors,
    forward,
    loss_function,
    train_gdln,
)
from .race import (  # noqa: F401
    Race,
    aligned_runs,
    reduced_products,
    chain_rhs,
    chain_solve,
    pathway_error,
    race_loss,
    race_products,
    race_reduction,
    race_rhs,
    race_solve,
    race_steps,
    signed_strengths,
    stack_races,
)
