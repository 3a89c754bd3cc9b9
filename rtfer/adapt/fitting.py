"""The adapted model as parameters (:class:`Params`) and the candidate fits: re-fitted stackers, a log-prior
correction and a light fine-tune of each member's last layer on its embeddings, all in numpy/scipy."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from rtfer.adapt.features import MemberFeatures
from rtfer.bundle import BundleSpec
from rtfer.ensemble import make_ensemble, softmax
from rtfer.labels import NUM_CLASSES

#: Fine-tune strengths tried (the L2 pull towards the base weights; smaller moves further from the base).
FINETUNE_STRENGTHS = (10.0, 3.0, 1.0)


@contextlib.contextmanager
def blas_single_thread():
    """Hold BLAS (numpy's and scipy's OpenBLAS) to one thread while the small fits run (see the module docstring)."""
    import scipy.optimize  # noqa: F401  (loads scipy's BLAS, so that the limit reaches it too)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield

# -- the adapted model as parameters ---------------------------------------------------------------------------------
@dataclass
class Params:
    """What a candidate changes: per-member last layers (None = unchanged), the ensemble and its temperature."""

    heads: list[tuple[np.ndarray, np.ndarray] | None]
    ensemble: dict
    temperature: float = 1.0

    def member_probs(self, feats: list[MemberFeatures], idx=slice(None)) -> list[np.ndarray]:
        out = []
        for f, h in zip(feats, self.heads):
            z = f.logits[idx] if h is None else f.embeddings[idx] @ h[0].T + h[1]
            out.append(softmax(z, f.spec.temperature))
        return out

    def predict(self, feats: list[MemberFeatures], idx=slice(None), temperature: float | None = None) -> np.ndarray:
        """Exactly what the runtime computes for the adapted bundle (rtfer.bundle.Bundle.combine)."""
        t = self.temperature if temperature is None else temperature
        ens = make_ensemble(self.ensemble, len(feats), t)
        return np.asarray(ens(self.member_probs(feats, idx)), np.float64)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def _ce_grad(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(z) and its gradient with respect to z."""
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.mean(np.log(np.clip(p[np.arange(n), y], 1e-300, None))))
    g = p.copy()
    g[np.arange(n), y] -= 1.0
    return loss, g / n


def _minimize(fun, x0: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 150})
    return res.x


def base_params(spec: BundleSpec, feats: list[MemberFeatures]) -> Params:
    return Params(heads=[None] * len(feats), ensemble=dict(spec.ensemble), temperature=spec.temperature)


def _fit_soft_vote(spec, feats, idx, y, present) -> Params:
    """Soft-vote weights on a 0.05 grid by NLL (smoother than accuracy on a few examples)."""
    m = len(feats)
    base = base_params(spec, feats)
    if m == 1:
        return base
    steps = 20
    import itertools

    grid = [np.array([*c, steps - sum(c)], np.float64) / steps
            for c in itertools.product(range(steps + 1), repeat=m - 1) if sum(c) <= steps]
    probs = base.member_probs(feats, idx)
    best = min(grid, key=lambda w: (nll(make_ensemble({"method": "soft_vote", "weights": w.tolist()}, m)(probs), y),
                                    float(np.abs(w - 1 / m).sum())))
    return Params(heads=[None] * m, ensemble={"method": "soft_vote", "weights": best.tolist()})


def _fit_logistic(spec, feats, idx, y, present, c: float = 1.0) -> Params:
    """Multinomial logistic regression over the concatenated member probabilities (rtfer's LogisticStacker), L2 on
    the coefficients as scikit-learn's default (C=1); a class absent from the fold is never predicted."""
    probs = base_params(spec, feats).member_probs(feats, idx)
    x = np.concatenate([np.asarray(p, np.float64) for p in probs], axis=1)
    n, d = x.shape
    cls = np.unique(y)

    def fun(theta):
        w = theta[:len(cls) * d].reshape(len(cls), d)
        b = theta[len(cls) * d:]
        yy = np.searchsorted(cls, y)
        loss, g = _ce_grad(x @ w.T + b, yy)
        reg = 0.5 / (c * n)
        return loss + reg * float((w ** 2).sum()), np.concatenate([(g.T @ x + 2 * reg * w).ravel(), g.sum(0)])

    theta = _minimize(fun, np.zeros(len(cls) * (d + 1)))
    coef = np.zeros((NUM_CLASSES, d))
    intercept = np.full(NUM_CLASSES, -30.0)
    coef[cls] = theta[:len(cls) * d].reshape(len(cls), d)
    intercept[cls] = theta[len(cls) * d:]
    return Params(heads=[None] * len(feats), ensemble={"method": "logistic", "coef": coef.tolist(),
                                                      "intercept": intercept.tolist()})


def _fit_prior(spec, feats, idx, y, present, strength: float = 0.1) -> Params | None:
    """A log-prior offset per class (absent classes fixed at 0) on the base ensemble's output, baked into every
    member's last-layer bias (member m gets T_m * offset, so each member's probabilities are multiplied by
    exp(offset) before the vote)."""
    if any(f.head is None for f in feats):
        return None
    base = base_params(spec, feats)
    logp = np.log(np.clip(base.predict(feats, idx, temperature=1.0), 1e-12, None))
    mask = np.zeros(NUM_CLASSES)
    mask[present] = 1.0

    def fun(delta):
        d = delta * mask
        loss, g = _ce_grad(logp + d, y)
        return loss + 0.5 * strength * float((d ** 2).sum()), (g.sum(0) + strength * d) * mask

    delta = _minimize(fun, np.zeros(NUM_CLASSES)) * mask
    heads = [(f.head.weight, f.head.bias + f.spec.temperature * delta) for f in feats]
    return Params(heads=heads, ensemble=dict(spec.ensemble))


def _fit_finetune(spec, feats, idx, y, present, strength: float = 0.1) -> Params | None:
    """Each member's last layer re-fitted on its embeddings: cross-entropy on the examples plus
    ``strength``/2 * (s * |dW|^2 + |db|^2), s = mean squared embedding norm / D (so that the penalty is on the
    expected change of the logits). Rows of classes without examples stay as they were."""
    if any(f.head is None for f in feats):
        return None
    heads = []
    rows = np.asarray(present, np.int64)
    for f in feats:
        e = f.embeddings[idx]
        w0, b0, t = f.head.weight, f.head.bias, f.spec.temperature
        dim = e.shape[1]
        scale = float(np.mean((e ** 2).sum(1))) / dim
        k = len(rows)

        def fun(theta, e=e, w0=w0, b0=b0, t=t, dim=dim, scale=scale, k=k):
            dw = theta[:k * dim].reshape(k, dim)
            db = theta[k * dim:]
            w = w0.copy()
            b = b0.copy()
            w[rows] += dw
            b[rows] += db
            loss, g = _ce_grad((e @ w.T + b) / t, y)
            g = g[:, rows] / t
            reg = 0.5 * strength * (scale * float((dw ** 2).sum()) + float((db ** 2).sum()))
            return loss + reg, np.concatenate([(g.T @ e + strength * scale * dw).ravel(), g.sum(0) + strength * db])

        theta = _minimize(fun, np.zeros(k * (dim + 1)))
        w, b = w0.copy(), b0.copy()
        w[rows] += theta[:k * dim].reshape(k, dim)
        b[rows] += theta[k * dim:]
        heads.append((w, b))
    return Params(heads=heads, ensemble=dict(spec.ensemble))


def candidate_fitters() -> dict[str, object]:
    """name -> fit(spec, feats, idx, labels, present_classes) -> Params | None."""
    fitters: dict[str, object] = {
        "stacker:soft_vote": _fit_soft_vote,
        "stacker:logistic": _fit_logistic,
        "prior": _fit_prior,
    }
    for s in FINETUNE_STRENGTHS:
        fitters[f"finetune:{s:g}"] = (lambda spec, feats, idx, y, present, s=s:
                                      _fit_finetune(spec, feats, idx, y, present, strength=s))
    return fitters
