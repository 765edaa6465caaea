"""Presets of the three-mechanisms chapter (Xu & Ziyin 2025)."""

from dataclasses import dataclass

from ..validation import Integer, Real
from . import ChapterPreset, param, register


@dataclass(frozen=True)
class ThreeMechanisms(ChapterPreset):
    # Figure 1 and the width scaling: GD of the 1-D linear network against the exact solution
    widths: tuple = param((10, 100, 1000), items=Integer(low=1), min_len=1, help="widths d of the alignment and disalignment runs (and of the width-scaling GD)")
    rescaling_widths: tuple = param((1, 1000), items=Integer(low=1), min_len=1, help="widths d of the rescaling runs")
    lr: float = param(1e-3, low=0.0, strict_low=True, high=0.01, help="GD step (time t = lr * step); the GD-vs-flow tolerance equals it")
    horizon: float = param(20.0, low=0.0, strict_low=True, help="training time T (steps = T / lr)")
    clock_ntk: float = param(2.0, low=0.0, strict_low=True, help="learning rates are scaled so that max(K0, K_inf) = this")
    records: int = param(100, low=2, help="recorded points per trajectory")
    n_seeds: int = param(4, low=1, help="GD seeds per width in the width-scaling runs")
    # The paper's Fig. 1: the alignment and disalignment prototypes with nonlinear activations (shallow.ACTIVATIONS)
    act_width: int = param(100, low=2, help="width d of the activation runs")
    act_draws: int = param(16, low=1, help="standard normal inputs x of the activation runs (the data are x and -x)")
    act_seeds: int = param(3, low=1, help="prototype draws per activation and setting")
    act_lr: float = param(0.01, low=0.0, strict_low=True, high=0.01, help="GD step of the activation runs")
    act_horizon: float = param(20.0, low=0.0, strict_low=True, help="training time of the activation runs (steps = T / act_lr)")
    # Width scaling (closed form)
    theory_seeds: int = param(1024, low=2, help="random inits averaged per width on the closed-form scaling curves")
    theory_max_width: int = param(1000000, low=10000, help="largest width of the closed-form scaling curves")
    # Phase diagram (closed form) and GD probes
    grid_points: int = param(61, low=5, high=401, help="points per axis of the phase diagrams")
    diagram_width: int = param(10000, low=10, help="width d of the phase diagrams")
    probe_width: int = param(1000, low=10, help="width of the GD probes along the b = 0 cut")
    probe_exponents: tuple = param((0.25, 0.5, 0.75, 1.0, 1.25, 1.5), items=Real(low=0.0), min_len=1, help="output-scale exponents a of the GD probes")
    # Nonlinear network on digits
    digits_samples: int = param(256, low=20, high=1787, help="training images of the tanh network")
    digits_width: int = param(64, low=1, help="hidden width of the tanh network")
    digits_lr: float = param(0.3, low=0.0, strict_low=True, help="GD step of the tanh network (x d in the mean-field setting)")
    digits_steps: int = param(2000, low=1, help="GD steps of the tanh network")

    # A deep tanh network on digits over output scale gamma = width^-a and init scale sigma (shallow.deep_runs)
    deep_output_exponents: tuple = param((0.0, 0.5, 1.0), items=Real(), min_len=2, help="output-scale exponents a of the deep grid")
    deep_init_scales: tuple = param((0.3, 1.0, 2.0), items=Real(low=0.0, strict_low=True), min_len=2,
                                    help="init scales sigma of the deep grid (weights sigma x N(0, 1))")
    deep_width: int = param(32, low=2, help="width of every hidden layer of the deep network")
    deep_depth: int = param(3, low=3, help="hidden layers of the deep network")
    deep_samples: int = param(128, low=20, high=1787, help="training images of the deep network")
    deep_seeds: int = param(2, low=1, help="random initialisations per grid point of the deep network")
    deep_lr: float = param(0.3, low=0.0, strict_low=True, help="GD step of the deep network (each network steps lr / (gamma^2 width))")
    deep_steps: int = param(1000, low=1, help="full-batch GD steps of the deep network")

    def memory_needs(self) -> dict[str, float]:
        # float64 (networks, d_max) weight vectors of the GD batch (prototypes, NTK and mean-field seeds, probes), with
        # gradients and records; the mean-field network of width diagram_width; the tanh net's (samples, width) layers
        n_gd = 4 * len(self.widths) + 2 * len(self.rescaling_widths) + 2 * self.n_seeds * len(self.widths) \
            + len(self.probe_exponents)
        d_max = max(self.widths + self.rescaling_widths + (self.probe_width,))
        width_field = max(("widths", "rescaling_widths", "probe_width"),
                          key=lambda f: max(getattr(self, f)) if f != "probe_width" else self.probe_width)
        act_networks = 2 * self.act_seeds * 5  # two settings x the five of shallow.ACTIVATIONS
        return {width_field: 12 * 8.0 * n_gd * d_max, "diagram_width": 8 * 8.0 * self.diagram_width,
                "act_width": 12 * 8.0 * act_networks * self.act_width * 2 * self.act_draws,
                "deep_width": 16 * 8.0 * len(self.deep_output_exponents) * len(self.deep_init_scales) * self.deep_seeds
                * self.deep_samples * self.deep_width * self.deep_depth,
                "digits_width": 3 * 8 * 8.0 * self.digits_samples * self.digits_width}


# The paper (arXiv:2401.07085) comes without code, and of its text only the abstract, introduction and figure
# captions could be read from our sources: none of them fixes a width, step, init or grid size of this chapter.
PAPER: dict = {}
PAPER_NOTE = (
    "The authors publish no code, and the parts of the paper we could read (abstract, introduction, figure "
    "captions) give no numbers for these fields: the widths, steps and grids are the book's own, and the `paper` "
    "preset only enlarges them.")

register(
    "three_mechanisms",
    ThreeMechanisms,
    # smoke: lr stays at its cap 0.01 (the GD-vs-flow tolerance is lr); T = 8 is where the slowest flow of the batch
    # (small-init alignment) is within 1.4e-3 of its fixed point, so the GD end-state check (< lr) still holds. The tanh
    # net keeps the book's data and width (at width 32 on 128 images its disalignment ranged -0.09 to -0.30 over seeds
    # 0-9, at width 64 on 256 images -0.34 to -0.46) and trains to t = 100 with steps of 1.
    smoke=dict(widths=(10, 100), rescaling_widths=(1, 100), lr=0.01, horizon=8.0, records=50, n_seeds=2, theory_seeds=256,
               grid_points=21, probe_width=100, digits_lr=1.0, digits_steps=100, act_seeds=2, act_horizon=8.0,
               deep_seeds=1, deep_steps=400, deep_lr=0.5),
    book=dict(),
    paper=dict(widths=(10, 100, 1000, 10000), rescaling_widths=(1, 10, 10000), n_seeds=8, theory_seeds=4096,
               theory_max_width=100000000, grid_points=201, diagram_width=100000, probe_width=10000,
               digits_samples=1500, digits_width=256, digits_steps=5000, act_width=1000, act_draws=64, act_seeds=8,
               deep_width=64, deep_samples=1500, deep_seeds=5, deep_steps=3000, deep_lr=0.2),
    paper_source=PAPER,
    paper_note=PAPER_NOTE,
)
