"""The k-path task of Saxe, Sodhani & Lewallen (2022) on a real classification set (digits, or MNIST at `paper`).

Input module i sees the images with their (whitened) pixels permuted by P_i,
output module j reports the label permuted by Q_j, and the gate trains K of
the M output modules with each input module (the authors'
``K_plus_mod_permute``; github.com/facebookresearch/gated-dln,
scripts/mnist.sh). A pair (i, j) is solved zero-shot when the network, never
trained on it, still classifies the test images.

With inputs whitened on the training set (Sigma_xx = I), the full-batch
squared loss of a linear GDLN depends on the data only through the
input-output correlation Sigma_yx = E[y z^T]: the loss of pair (i, j) is
1/2 |W_p - Q_j Sigma_yx P_i^T|_F^2 plus a constant. :func:`permuted_task`
therefore trains on d "items" per pair (the whitened directions, as one-hot
inputs) whose targets are the columns of Sigma_yx: the same gradients as the
whole training set, at the cost of d samples per pair. The test images are
kept for :func:`pair_accuracies`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..gated import side_by_side
from ..validation import Array, Integer, validate_params
from .hierarchy import GatedTask, modes_of, pair_samples, routing_network

N_CLASSES = 10


@dataclass
class PermutedTask:
    """A k-path GDLN with its training data (:class:`GatedTask`) and the held-out test images.

    ``pixels[i]`` is input module i's permutation of the whitened inputs,
    ``labels[j]`` output module j's permutation of the classes; ``x_test``
    holds the whitened, unpermuted test inputs and ``y_test`` their labels.
    """

    task: GatedTask
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    pixels: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)


@validate_params({"x_train": Array(ndim=2), "x_test": Array(ndim=2), "dims": Integer(low=1)})
def whiten_pca(x_train, x_test, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """The leading ``dims`` principal components of the training inputs, scaled to unit variance on the training set.

    Returns ``(z_train, z_test)`` with z_train^T z_train / N = I exactly.
    """
    x_train, x_test = np.asarray(x_train, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"x_test must have the {x_train.shape[1]} features of x_train; got {x_test.shape[1]}")
    mean = x_train.mean(0)
    _, s, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    rank = int((s > s[0] * 1e-10).sum())
    if dims > rank:
        raise ValueError(f"dims must be at most the training inputs' rank {rank}; got {dims}")
    project = vt[:dims].T / (s[:dims] / np.sqrt(len(x_train)))
    return (x_train - mean) @ project, (x_test - mean) @ project


@validate_params({"z_train": Array(ndim=2), "y_train": Array(ndim=1), "z_test": Array(ndim=2), "y_test": Array(ndim=1),
                  "gate": Array(ndim=2), "hidden": Integer(low=1), "seed": Integer(low=0)})
def permuted_task(z_train, y_train, z_test, y_test, gate, *, hidden: int, seed: int) -> PermutedTask:
    """The k-path network on whitened inputs (:func:`whiten_pca`): M input modules (pixel permutations) -> a shared
    hidden pathway -> M output modules (label permutations), trained on the pairs flagged by ``gate`` (M, M).

    Nodes x0..x{M-1} (width d), h1, h2 (width ``hidden``) and y0..y{M-1}
    (10 classes), as in :func:`learning_dynamics.tasks.hierarchy.routing_task`.
    The permutations are drawn from ``seed``. The modes of pair (i, j) are
    Sigma_yx's singular vectors, permuted: v_i = P_i v and u_j = Q_j u (neural_race chapter).
    """
    gate = np.asarray(gate, dtype=bool)
    z_train, z_test = np.asarray(z_train, dtype=np.float64), np.asarray(z_test, dtype=np.float64)
    y_train, y_test = np.asarray(y_train).astype(int), np.asarray(y_test).astype(int)
    m, d = gate.shape[0], z_train.shape[1]
    if gate.shape != (m, m) or not gate.any():
        raise ValueError(f"gate must be a square boolean (M, M) matrix with a trained pair; got shape {gate.shape}")
    if len(y_train) != len(z_train) or len(y_test) != len(z_test) or z_test.shape[1] != d:
        raise ValueError(f"z_train, y_train, z_test and y_test must pair up: got shapes {z_train.shape}, {y_train.shape}, "
                         f"{z_test.shape}, {y_test.shape}")
    rng = np.random.default_rng(seed)
    pixels = np.stack([rng.permutation(d) for _ in range(m)])
    labels = np.stack([rng.permutation(N_CLASSES) for _ in range(m)])
    correlation = np.eye(N_CLASSES)[y_train].T @ z_train / len(y_train)             # Sigma_yx: classes x d
    net = routing_network(m, d, hidden, N_CLASSES)
    # item a of pair (i, j): whitened direction a, permuted like z[:, P_i]; its target: column a of Sigma_yx, classes permuted
    data = pair_samples(net, [tuple(p) for p in np.argwhere(gate)], [np.eye(d)[:, pixels[i]] for i in range(m)],
                        [correlation.T[:, labels[j]] for j in range(m)])
    u, _, v = modes_of(correlation)
    task = GatedTask(net, data, {f"x{i}": v[pixels[i]] for i in range(m)},           # x_i = z[P_i]: v_i = v[P_i]
                     {f"y{j}": u[labels[j]] for j in range(m)}, trained_groups=gate.ravel().copy())
    return PermutedTask(task, z_test, y_test, pixels, labels)


def pair_accuracies(permuted: PermutedTask, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Test accuracy of every (input, output) module pair: shape (networks, M^2), entry i M + j.

    Pair (i, j) classifies z[:, P_i] by the largest output of W_p = W_out{j} W_shared W_in{i}, read back through Q_j.
    """
    m = len(permuted.pixels)
    with torch.no_grad():
        prefix = side_by_side(tuple((f"in{i}", "shared") for i in range(m)), params)              # (n, h, M d)
        outs = torch.stack([params[f"out{j}"] for j in range(m)], dim=1)                            # (n, M, 10, h)
        d = permuted.x_test.shape[1]
        w = (outs @ prefix.unsqueeze(1)).reshape(prefix.shape[0], m, N_CLASSES, m, d)              # (n, j, class, i, d)
        z = torch.as_tensor(np.stack([permuted.x_test[:, p] for p in permuted.pixels]), dtype=w.dtype, device=w.device)
        scores = torch.einsum("njcid,ikd->nijkc", w, z).contiguous()                                 # (n, i, j, test, 10)
        truth = torch.as_tensor(np.stack([np.argsort(q)[permuted.y_test] for q in permuted.labels]), device=w.device)
        correct = scores.argmax(-1) == truth[None, None]                                            # truth: (j, test)
        return correct.to(w.dtype).mean(-1).reshape(prefix.shape[0], m * m)


@validate_params({"strengths": Array()})
def mode_accuracy(permuted: PermutedTask, strengths) -> np.ndarray:
    """Test accuracy of the classifier u diag(pi) v^T built from mode strengths pi (..., r): shape (...).

    In the reduction from a decoupled start every pair, trained or not, has the same strengths, so this is every
    pair's predicted accuracy (evaluated on pair (0, 0); the permutations cancel).
    """
    strengths = np.asarray(strengths, dtype=np.float64)
    u, v = permuted.task.modes_out["y0"], permuted.task.modes_in["x0"]
    if strengths.shape[-1:] != (u.shape[1],):
        raise ValueError(f"strengths must have the {u.shape[1]} modes on the last axis; got shape {strengths.shape}")
    z = permuted.x_test[:, permuted.pixels[0]]
    scores = ((z @ v) * strengths[..., None, :]) @ u.T                                  # (..., test, 10)
    truth = np.argsort(permuted.labels[0])[permuted.y_test]
    return (scores.argmax(-1) == truth).mean(-1)
