"""Token-by-token references for the linear-recurrent mechanisms (tests/test_retention.py, test_gla.py,
test_deltanet.py), written from the papers' equations with a plain loop over positions, in float64, and
sharing no code with models/attention. The chunked forms under test must equal these.
"""
from __future__ import annotations

import torch


def gated_recurrence(q, k, v, a, state=None):
    """Retention (a_t = gamma) and GLA (a_t = alpha_t per key dimension):
        S_t = diag(a_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t
    q, k, a: (B, h, n, e) (a may broadcast), v: (B, h, n, f). Returns o (B, h, n, f) and S_n, float64."""
    q, k, v = q.double(), k.double(), v.double()
    a = torch.as_tensor(a).double().expand_as(k)
    B, h, n, e = q.shape
    S = torch.zeros(B, h, e, v.shape[-1], dtype=torch.float64) if state is None else state.double()
    outs = []
    for t in range(n):
        S = a[:, :, t, :, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhe,bhef->bhf", q[:, :, t], S))
    return torch.stack(outs, dim=2), S


def delta_recurrence(q, k, v, beta, state=None):
    """DeltaNet (Schlag et al. 2021; Yang et al. 2024), the papers' column convention, S: (f, e):
        S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,   o_t = S_t q_t
    q, k: (B, h, n, e), v: (B, h, n, f), beta: (B, h, n). Returns o (B, h, n, f) and S_n (B, h, f, e), float64."""
    q, k, v, beta = q.double(), k.double(), v.double(), beta.double()
    B, h, n, e = q.shape
    f = v.shape[-1]
    S = torch.zeros(B, h, f, e, dtype=torch.float64) if state is None else state.double()
    eye = torch.eye(e, dtype=torch.float64)
    outs = []
    for t in range(n):
        kt, vt, bt = k[:, :, t], v[:, :, t], beta[:, :, t, None, None]
        S = S @ (eye - bt * kt[..., :, None] * kt[..., None, :]) + bt * vt[..., :, None] * kt[..., None, :]
        outs.append((S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outs, dim=2), S


def rel_err(a, b):
    """Norm-wise relative error of a against the reference b."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def linear(x, w, b):
    """x W^T + b, from separate weights (independent of the module's own projection layout)."""
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


def heads(y, h):
    """(B, n, h*e) -> (B, h, n, e)"""
    B, n, d = y.shape
    return y.view(B, n, h, d // h).transpose(1, 2)
