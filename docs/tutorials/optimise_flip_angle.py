# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Optimising a flip angle with autograd
#
# The PDG simulation is written in PyTorch, so its signal is differentiable with respect to the
# sequence (pulse angles and phases, gradient moments, event times) and the phantom's maps. This
# tutorial lets `torch.optim` find the flip angle of an RF-spoiled FLASH that gives the most
# signal from one tissue, and then the one that best separates two tissues, and checks both
# against the steady-state (Ernst) signal equation.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import mr0core as mr0

TR, TE = 50e-3, 1e-3  # s
T1_WM, T1_GM, T2 = 0.8, 1.3, 2e-3  # s; T2 ≪ TR: no transverse coherence is left

# %% [markdown]
# ## The sequence and the subject
#
# `flash(angle)` builds 60 repetitions of an RF-spoiled gradient echo (117° phase increments) with
# one ADC sample at TE and a spoiler; `angle` is a tensor, so the signal keeps its autograd graph.
# The subject is one voxel of a tissue (`CustomVoxelPhantom`).

# %%
N_REP = 60


def flash(angle: torch.Tensor) -> mr0.Sequence:
    """RF-spoiled FLASH: N_REP repetitions, one sample at TE each."""
    seq = mr0.Sequence()
    for i in range(N_REP):
        rep = seq.new_rep(2)
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = angle
        rep.pulse.phase = math.radians(0.5 * 117 * (i * i + i + 2))
        rep.event_time[0] = TE
        rep.adc_usage[0] = 1
        rep.adc_phase[0] = math.pi / 2 - rep.pulse.phase
        rep.event_time[1] = TR - TE
        rep.gradm[1, 0] = 8.0  # spoiler: 8 cycles across the voxel
    return seq


def voxel(t1: float) -> mr0.SimData:
    """One 1 cm voxel of a tissue with T1 ``t1`` (s)."""
    obj = mr0.CustomVoxelPhantom([[0.0, 0.0, 0.0]], voxel_size=0.01, voxel_shape="box")
    obj.T1, obj.T2, obj.T2dash = t1, T2, 1.0
    return obj.build()


def steady_signal(angle: torch.Tensor, data: mr0.SimData) -> torch.Tensor:
    """Mean |signal| of the last 5 repetitions (the steady state)."""
    seq = flash(angle)
    graph = mr0.compute_graph(seq, data, 200, 1e-5)
    signal = mr0.execute_graph(graph, seq, data, 1e-4, 1e-4, print_progress=False)
    return signal[-5:, 0].abs().mean()


def ernst(alpha: np.ndarray, t1: float) -> np.ndarray:
    """Ideal spoiled steady state, M0 = 1: sin α (1 − E1) / (1 − cos α E1) · exp(−TE/T2)."""
    e1 = np.exp(-TR / t1)
    return np.sin(alpha) * (1 - e1) / (1 - np.cos(alpha) * e1) * np.exp(-TE / T2)


wm, gm = voxel(T1_WM), voxel(T1_GM)
print(f"signal at 20°: simulated {steady_signal(torch.tensor(math.radians(20)), wm):.4f}, "
      f"Ernst {ernst(np.radians(20), T1_WM):.4f}")  # fmt: skip

# %% [markdown]
# ## Most signal from white matter
#
# The optimiser is L-BFGS with a line search (`torch.optim.LBFGS`): for one smooth parameter it
# needs about a dozen evaluations of the simulation and its gradient. It minimises, so the loss is
# the negative signal. The optimum of the signal equation is the Ernst angle, arccos(exp(−TR/T1)).


# %%
def maximise(objective, start_deg: float) -> list[tuple[float, float]]:  # noqa: ANN001
    """Maximise ``objective(angle)`` from ``start_deg``; return (angle °, value) per evaluation."""
    angle = torch.tensor(math.radians(start_deg), requires_grad=True)
    optimiser = torch.optim.LBFGS([angle], lr=1, max_iter=15, line_search_fn="strong_wolfe")
    history = []

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = -objective(angle)
        loss.backward()
        history.append((math.degrees(angle.item()), -loss.item()))
        return loss

    optimiser.step(closure)
    return history


history = maximise(lambda angle: steady_signal(angle, wm), start_deg=50)
ernst_deg = math.degrees(math.acos(math.exp(-TR / T1_WM)))
print(
    f"optimised {history[-1][0]:.2f}° in {len(history)} evaluations, Ernst angle {ernst_deg:.2f}°"
)

# %% [markdown]
# ## Best separation of grey and white matter
#
# Now the objective is the difference of the two tissues' signals: T1 contrast. Its optimum has
# no closed form, so the check is a dense evaluation of the signal equation.

# %%
history_c = maximise(lambda angle: steady_signal(angle, wm) - steady_signal(angle, gm), 10)
alphas = np.radians(np.linspace(0.5, 60, 2000))
best_deg = math.degrees(alphas[np.argmax(ernst(alphas, T1_WM) - ernst(alphas, T1_GM))])
print(f"optimised {history_c[-1][0]:.2f}° in {len(history_c)} evaluations, "
      f"signal equation {best_deg:.2f}°")  # fmt: skip

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
degrees = np.degrees(alphas)
ax0.plot(degrees, ernst(alphas, T1_WM), label="WM (Ernst)")
ax0.plot(degrees, ernst(alphas, T1_GM), label="GM (Ernst)")
ax0.plot(degrees, ernst(alphas, T1_WM) - ernst(alphas, T1_GM), label="WM − GM")
ax0.plot(*zip(*history, strict=True), "o", color="C0", mfc="none", label="L-BFGS, signal")
ax0.plot(*zip(*history_c, strict=True), "o", color="C2", mfc="none", label="L-BFGS, contrast")
ax0.axvline(ernst_deg, color="C0", linestyle=":")
ax0.axvline(best_deg, color="C2", linestyle=":")
ax0.set_xlabel("flip angle (°)")
ax0.set_ylabel("steady-state signal (M0 = 1)")
ax0.legend()
ax1.plot([h[0] for h in history], label="most WM signal")
ax1.plot([h[0] for h in history_c], label="most WM − GM contrast")
ax1.axhline(ernst_deg, color="C0", linestyle=":")
ax1.axhline(best_deg, color="C1", linestyle=":")
ax1.set_xlabel("evaluation")
ax1.set_ylabel("flip angle (°)")
ax1.legend()
fig.tight_layout()
plt.show()
