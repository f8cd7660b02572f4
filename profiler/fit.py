"""Fitting: a model family that follows steps, and cross-validated error per component.

Verify curves are not smooth (on this CPU: one token cheap, a jump at two, flat to about 16, then
linear; on GPUs, steps at tile sizes). `StepPlusLinear` fits

    t(x) = s(x0) + w . x[1:]

where `s` is a non-decreasing step function of the size-like variable x0 (scikit-learn's isotonic
regression: piecewise constant between the measured points, interpolated linearly between them,
clipped outside) and the linear term carries the context-length dependence (scikit-learn's linear
regression with non-negative coefficients). The two are fitted by backfitting, weighted by 1/t^2 so that the fit minimises relative
error (a 5 ms draft step counts as much as a 500 ms verify).

Each component's design matrix is built by one function below, used for fitting and prediction alike.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold, cross_val_predict

# ---- design matrices (column 0: the step variable; the rest: linear terms) -------------------

def draft_features(step, top_k, context_len) -> np.ndarray:
    """Step 1 feeds the root (query 0 level, a level of its own); later steps feed a beam of top_k."""
    step, k, c = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(step, top_k, context_len))
    first = step <= 1
    queries = np.where(first, 1.0, k)
    level = np.where(first, 0.0, k)
    slots = np.maximum(step - 1, 0) * k  # tree nodes already in the head's cache
    return np.column_stack([level, c, c * queries, slots * queries])


def verify_features(size, context_len) -> np.ndarray:
    v, c = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(size, context_len))
    return np.column_stack([v, c, c * (v + 1)])


def overhead_features(depth, size, top_k) -> np.ndarray:
    d, v, k = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(depth, size, top_k))
    return np.column_stack([v, d, d * k])


def batch_features(batch, tokens) -> np.ndarray:
    b, t = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(batch, tokens))
    return np.column_stack([b * t, b])


def ngram_features(context_len, depth) -> np.ndarray:
    """The depth of the cycle (one merge per draft step) is the step variable; the lookup is indexed,
    so the context adds at most a linear drift (dict and list sizes)."""
    c, d = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(context_len, depth))
    return np.column_stack([d.reshape(-1), c.reshape(-1)])


FEATURES = {"draft_step": draft_features, "verify": verify_features, "overhead": overhead_features,
            "batch_forward": batch_features, "ngram": ngram_features}
#: measurement key -> argument order of each component's feature function
ARGS = {"draft_step": ("step", "top_k", "context_len"), "verify": ("size", "context_len"),
        "overhead": ("depth", "size", "top_k"), "batch_forward": ("batch", "tokens"),
        "ngram": ("context_len", "depth")}


class StepPlusLinear(RegressorMixin, BaseEstimator):
    """Isotonic step function of X[:, 0] plus a linear function of X[:, 1:], fitted by backfitting."""

    def __init__(self, n_iter: int = 20, relative: bool = True):
        self.n_iter = n_iter
        self.relative = relative

    def fit(self, X, y, sample_weight=None):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if self.relative:
            w = w / np.maximum(np.abs(y), 1e-12) ** 2
        x0, Z = X[:, 0], X[:, 1:]
        lin_part = np.zeros_like(y)
        iso = IsotonicRegression(increasing=True, out_of_bounds="clip")
        lin = LinearRegression(positive=True)  # time never falls with context or width
        coef = np.zeros(Z.shape[1])
        intercept = 0.0
        # A linear term is only identifiable where its columns vary beyond what x0 explains.
        use_lin = Z.shape[1] > 0 and bool(np.any(np.ptp(Z, axis=0) > 0))
        for _ in range(self.n_iter if use_lin else 1):
            iso.fit(x0, y - lin_part, sample_weight=w)
            step = iso.predict(x0)
            if not use_lin:
                break
            lin.fit(Z, y - step, sample_weight=w)
            new = lin.predict(Z)
            done = np.max(np.abs(new - lin_part)) <= 1e-6 * max(np.max(np.abs(y)), 1e-12)
            lin_part = new
            coef, intercept = lin.coef_.copy(), float(lin.intercept_)
            if done:
                break
        if use_lin:  # refit the steps to the final linear term
            iso.fit(x0, y - lin_part, sample_weight=w)
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        self.coef_ = np.asarray(coef, dtype=np.float64)
        self.intercept_ = float(intercept)
        return self

    def predict(self, X):
        X = np.asarray(X, dtype=np.float64)
        return predict_params(self.params(), X)

    def params(self) -> dict:
        return {"x": self.x_thresholds_.tolist(), "y": self.y_thresholds_.tolist(),
                "coef": self.coef_.tolist(), "intercept": self.intercept_}


def predict_params(params: dict, X: np.ndarray) -> np.ndarray:
    """Evaluate fitted (or loaded) parameters: the one prediction rule of the family."""
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    out = np.interp(X[:, 0], np.asarray(params["x"]), np.asarray(params["y"]))
    coef = np.asarray(params["coef"], dtype=np.float64)
    if coef.size:
        out = out + X[:, 1:] @ coef + params["intercept"]
    return out


def cv_errors(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """K-fold cross-validated absolute percentage errors of StepPlusLinear on (X, y)."""
    n = len(y)
    if n < 4:
        return {"folds": 0, "n": n, "mape": None, "median_ape": None, "max_ape": None}
    k = min(folds, n)
    pred = cross_val_predict(StepPlusLinear(), X, y, cv=KFold(k, shuffle=True, random_state=seed))
    ape = np.abs(pred - y) / np.maximum(np.abs(y), 1e-12)
    return {"folds": k, "n": n, "mape": float(np.mean(ape)), "median_ape": float(np.median(ape)),
            "max_ape": float(np.max(ape))}


def fit_component(name: str, keys: list[dict], y) -> tuple[dict, dict]:
    """Fit one component from measurement keys and median times; returns (params, cv errors)."""
    X = FEATURES[name](*[np.array([k[a] for k in keys]) for a in ARGS[name]])
    y = np.asarray(y, dtype=np.float64)
    model = StepPlusLinear().fit(X, y)
    return model.params(), cv_errors(X, y)
