"""Presets of the dynamical-feedback-principle chapter (Nam et al. 2025)."""

from dataclasses import dataclass, field
from pathlib import Path

from ..validation import InstanceOf, Optional, Real
from . import ChapterPreset, param, register


@dataclass(frozen=True)
class FeedbackPrinciple(ChapterPreset):
    # Figure 1: emergence of skills
    n_skills: int = param(5, low=1, high=50, help="number of skills K")
    alpha: float = param(0.6, low=0.0, help="skill frequencies p_k ~ k^-(alpha+1)")
    skill_strength: float = param(5.0, low=0.0, strict_low=True, help="target S of every skill")
    skill_init: float = param(0.1, low=0.0, strict_low=True, help="initial a0 = b0 of the layerwise model")
    lr: float = param(0.005, low=0.0, strict_low=True, help="SGD step of the skill models")
    skill_steps: int = param(6000, low=1, help="online SGD steps")
    skill_batch: int = param(2000, low=1, help="samples per SGD step")
    n_seeds: int = param(4, low=1, help="independent runs per experiment")
    # Figure 4a: emergence in a two-layer ReLU network on multitask sparse parity
    em_bits: int = param(16, low=3, high=64, help="task bits of the sparse-parity input (the control bits are n_skills more)")
    em_width: int = param(400, low=1, help="hidden units of the ReLU network")
    em_init: float = param(0.01, low=0.0, strict_low=True, help="std of every weight and bias at init")
    em_lr: float = param(0.05, low=0.0, strict_low=True, help="SGD step of the ReLU network")
    em_batch: int = param(200, low=1, help="fresh samples per SGD step")
    em_steps: int = param(8000, low=1, help="SGD steps of the ReLU network")
    em_networks: int = param(3, low=2, help="ReLU networks per seed (mean and standard error)")
    em_probe: int = param(1000, low=2, help="held-out samples per skill for the learned fraction (even)")
    em_record: int = param(50, low=1, help="steps between measurements of the learned fraction")
    em_min_skills: int = param(5, low=1, help="skills whose mean learned fraction must cross 1/2 by the end")
    em_ratio_tol: float = param(0.25, low=0.0, strict_low=True, help="tolerance of t_k/t_1 against p_1/p_k (relative)")
    em_curve_tol: float = param(0.25, low=0.0, strict_low=True, help="tolerance of the calibrated sigmoid's RMS gap")
    em_calibration_tol: float = param(0.2, low=0.0, strict_low=True, help="tolerance of the fitted B against the paper's 22")
    # Figure 2: lazy vs rich heatmap
    target_singular_values: tuple = param((0.54, 0.14), items=Real(low=0.0, strict_low=True), min_len=2, max_len=2, help="singular values of the 2-2-2 target map Y X^T / N "
                                           "(the medians over 4,000 random 10-sample tasks; directions stay random)")
    grid_points: int = param(40, low=4, high=200, help="lambda and scale values per axis")
    grid_lr: float = param(0.01, low=0.0, strict_low=True, help="GD step of the 2-2-2 network")
    grid_steps: int = param(4000, low=1, help="full-batch GD steps of the 2-2-2 network")
    slice_refine: int = param(4, low=1, high=100, help="the aligned theory slice runs at grid_lr / refine for refine x the steps")
    # Figure 3: gamma_+ toy
    toy_width: int = param(1000, low=1, help="width Z of the scalar toy")
    toy_points: int = param(24, low=2, help="initial scales Sigma0 in the sweep")
    toy_lr: float = param(0.001, low=0.0, strict_low=True, help="GD step of the toy (small: lr * 2 sqrt(S^2 + Sigma0^2) <= 0.05)")
    toy_steps: int = param(10000, low=1, help="GD steps of the toy")
    # Figure 8: grokking in a tanh MLP on digits (MNIST from a local file at the paper's sizes)
    grok_train: int = param(1000, low=10, help="training images (the rest of digits, or MNIST's test set, are the test set)")
    grok_width: int = param(128, low=1, help="width of the three tanh hidden layers")
    grok_epochs: int = param(150, low=1, help="epochs of Adam")
    grok_batch: int = param(128, low=1, help="minibatch size (reshuffled every epoch)")
    grok_lr: float = param(2e-3, low=0.0, strict_low=True, help="Adam step")
    grok_weight_decay: float = param(3e-3, low=0.0, help="weight decay, coupled into the gradient as in torch.optim.Adam")
    grok_networks: int = param(2, low=1, help="networks per variant")
    grok_record_every: int = param(3, low=1, help="epochs between accuracy measurements")
    grok_level: float = param(0.9, low=0.0, high=1.0, strict_low=True, help="accuracy level that times the delay")
    grok_min_delay: float = param(30.0, low=0.0, help="least mean delay (epochs) of the variant that groks")
    grok_max_delay: float = param(20.0, low=0.0, help="largest mean delay (epochs) of the variants that do not")
    grok_final_test: float = param(0.95, low=0.0, high=1.0, help="least final test accuracy of variants b, c and f")
    grok_final_test_a: float = param(0.95, low=0.0, high=1.0, help="least final test accuracy of variant a (it groks late)")
    mnist_file: str | None = field(default=None, metadata={
        "constraint": Optional(InstanceOf(str, description="a path (a string)")),
        "help": "a local mnist.npz (x_train, y_train, x_test, y_test) for the grokking networks; None: scikit-learn's digits"})
    # Figure 6b: unwhitened 20-20-2 network from a zero product
    zp_points: int = param(17, low=3, high=200, help="lambda and scale values per axis of the zero-product grid")
    zp_init: float = param(0.1, low=0.0, strict_low=True, help="scale of the mirrored zero-product init")
    zp_lr: float = param(0.01, low=0.0, strict_low=True, help="GD step of the 20-20-2 network (stable below ~0.035)")
    zp_steps: int = param(4000, low=1, help="full-batch GD steps of the 20-20-2 network")
    # Neural collapse: the unconstrained-features model
    nc_classes: int = param(4, low=2, high=100, help="classes C")
    nc_per_class: int = param(25, low=1, help="samples per class n")
    nc_dim: int = param(32, low=2, help="feature dimension")
    nc_inits: tuple = param((0.01, 0.03, 0.1), items=Real(low=0.0, strict_low=True), min_len=1,
                            help="initial size a0 of every class mode (u0 = a0^2)")
    nc_within: float = param(1e-4, low=0.0, strict_low=True, help="std of the within-class noise in the features at init")
    nc_lr: float = param(0.1, low=0.0, strict_low=True, help="GD step (the gap to gradient flow is linear in it)")
    nc_steps: int = param(4000, low=1, help="GD steps of the unconstrained-features model")

    def __post_init__(self):
        super().__post_init__()
        if self.mnist_file is not None and not Path(self.mnist_file).is_file():
            raise ValueError(f"mnist_file = {self.mnist_file!r}: no such file; pass the path of a local mnist.npz "
                             "(arrays x_train, y_train, x_test, y_test), or None for scikit-learn's digits")

    def memory_needs(self) -> dict[str, float]:
        # float64: the toy's (networks, Z) weights, gradients and copies; the skill batches (seeds, batch, K)
        return {"toy_width": 12 * 8.0 * self.toy_points * self.n_seeds * self.toy_width,
                "skill_batch": 6 * 8.0 * self.n_seeds * self.skill_batch * self.n_skills,
                # float64 hidden activations, their gates and gradients of the ReLU networks' batches
                "em_batch": 4 * 8.0 * self.em_networks * self.em_batch * self.em_width,
                # float32 weights with Adam's two moments, and the activations of the whole test set
                "grok_width": 4 * 4.0 * 5 * self.grok_networks * (784 + 2 * self.grok_width + 10) * self.grok_width}


# What the paper and the authors' code fix. The emergence figure (paper Fig. 4a) comes from the authors' emergence
# code, github.com/yoonsoonam119/Skill_Eigenmode; the lazy/rich grid (Fig. 6a) from github.com/yoonsoonam119/linear_first.
PAPER = {
    "n_skills": (5, "Skill_Eigenmode train_time.py: skill_cnt = 5"),
    "alpha": (0.6, "Skill_Eigenmode plot_emergence_all.py: p_k ~ k^-1.6"),
    "skill_strength": (5.0, "Skill_Eigenmode plot_emergence_all.py: y_scale = 5"),
    "skill_batch": (4000, "Skill_Eigenmode train_time.py: fresh batches of 20000 // 5"),
    "n_seeds": (10, "Skill_Eigenmode train_time.py: try_cnt = 10 (Fig. 4a: mean and std)"),
    "em_bits": (32, "Skill_Eigenmode data_generator.py: 32 task bits after 5 control bits (input 37)"),
    "em_width": (1000, "Skill_Eigenmode utils.FCN: hidden 1000"),
    "em_init": (0.01, "Skill_Eigenmode plot_emergence_all.py: the run with init 0.01"),
    "em_lr": (0.02, "Skill_Eigenmode plot_emergence_all.py: the run with lr 0.02"),
    "em_batch": (4000, "Skill_Eigenmode train_time.py: fresh batches of 20000 // 5"),
    "em_steps": (30000, "Skill_Eigenmode train_time.py: 6000 epochs of 5 steps"),
    "em_networks": (10, "Skill_Eigenmode train_time.py: try_cnt = 10"),
    "em_probe": (20000, "Skill_Eigenmode utils.check_corrs: 20000 samples of each skill"),
    "em_record": (50, "Skill_Eigenmode train_time.py: measured every 10 epochs"),
    "grid_points": (40, "linear_first fig6a_run.py: 40 x 40 values"),
    "grid_lr": (0.01, "linear_first fig6a_run.py: learning_rate"),
    "grid_steps": (4000, "linear_first fig6a_run.py: training_steps"),
    "grok_train": (1000, "linear_first train_mnist_grokking.py: data_cnt = 1000"),
    "grok_width": (512, "linear_first train_mnist_grokking.py: MLP(width=512)"),
    "grok_epochs": (2000, "linear_first train_mnist_grokking.py: --epochs 2000"),
    "grok_batch": (128, "linear_first train_mnist_grokking.py: batch_size 128"),
    "grok_lr": (1e-3, "linear_first train_mnist_grokking.py: --lr 1e-3"),
    "grok_weight_decay": (1e-4, "linear_first train_mnist_grokking.py: --weight_decay 1e-4"),
    "grok_networks": (1, "linear_first train_mnist_grokking.py: one run per panel",
                      "differs: the chapter's delay claims average over networks per variant"),
    "zp_points": (40, "linear_first fig6b_run.py: 40 x 40 values"),
    "zp_init": (0.1, "linear_first fig6b_run.py: get_lambda_unbalanced(..., scale=0.1)"),
    "zp_lr": (0.01, "linear_first fig6b_run.py: learning_rate"),
    "zp_steps": (4000, "linear_first fig6b_run.py: training_steps"),
}
PAPER_NOTE = (
    "Sources: the authors' repositories yoonsoonam119/Skill_Eigenmode (the emergence runs behind Fig. 4a) and "
    "yoonsoonam119/linear_first (Fig. 6a). The paper's emergence runs train a two-layer ReLU network (SGD step 0.02, "
    "weight std 0.01, 6,000 epochs of five steps): the `em_*` rows. The layerwise model's own step, init and length "
    "(`lr`, `skill_init`, `skill_steps`) are this book's and are not compared. The book's ReLU networks see 16 task "
    "bits instead of 32 and take a larger step, to fit the budget; the authors' bits are {0, 1} with y = +-S. Fig. 6a fits one "
    "random draw of targets, where `target_singular_values` fixes their spectrum; the paper gives no width or "
    "length for the γ₊ toy. Fig. 6b (fig6b_run.py) fits a 20-20-2 network to 10 unwhitened Gaussian samples, lambda "
    "from -0.5 to 0.5 and the scale from 0.1 to 50 on linear grids. The paper gives no sizes for the "
    "unconstrained-features model of neural collapse; those are this book's. The grokking networks follow "
    "train_mnist_grokking.py (variants a, b, c, d, f; the code's variant e, dropout 0.6, is left out) on "
    "scikit-learn's 8 x 8 digits, with a narrower network, fewer epochs and a larger step and weight decay; "
    "`mnist_file` puts MNIST in their place.")

register(
    "feedback_principle",
    FeedbackPrinciple,
    # smoke takes the largest steps the claims allow: skill lr 2 p_max S = 0.047 <= 0.05; grid lr 0.04
    # (lazy corner 7.6e-7 < 1e-5 at seed 0, still monotone); the aligned slice at 0.04 / 6 = 0.0067, where the
    # GD-vs-flow gap (linear in the step) uses about 0.69 of its 5% + 2e-6 tolerance; toy lr
    # 2 sqrt(1 + Sigma0_max^2) = 0.049 <= 0.05. It runs the skills to t = 18 (every half time is reached
    # by t ~ 15) and the toy to t = 5 (the growth factor is settled); grid and slice keep the book's t = 40.
    smoke=dict(lr=0.008, skill_steps=2250, skill_batch=500, n_seeds=2, grid_points=20, grid_lr=0.04, grid_steps=1000,
               slice_refine=6, toy_width=200, toy_points=8, toy_lr=0.00115, toy_steps=4348,
               zp_points=7, zp_lr=0.02, zp_steps=2000, nc_inits=(0.03,), nc_steps=2000,
               em_width=200, em_steps=2000, em_networks=2, em_probe=200, em_min_skills=2, em_ratio_tol=0.35,
               em_curve_tol=0.35, em_calibration_tol=0.4, grok_width=96, grok_epochs=40, grok_networks=1,
               grok_record_every=2, grok_level=0.7, grok_min_delay=5.0, grok_max_delay=3.0, grok_final_test=0.92,
               grok_final_test_a=0.65),
    book=dict(),
    paper=dict(n_seeds=10, skill_batch=4000, grid_points=40, zp_points=40, em_bits=32, em_width=1000, em_lr=0.02,
               em_batch=4000, em_steps=30000, em_networks=10, em_probe=20000, grok_width=512, grok_epochs=2000,
               grok_lr=1e-3, grok_weight_decay=1e-4, grok_networks=5, grok_record_every=10, toy_width=4000, toy_points=48, toy_steps=20000, toy_lr=0.0005, lr=0.0025, skill_steps=12000),
    paper_source=PAPER,
    paper_note=PAPER_NOTE,
)
