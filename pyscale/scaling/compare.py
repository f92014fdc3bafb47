"""Likelihood-ratio test of two nested fits of one law on the same rows.

Besiroglu et al. 2024 (Epoch AI) tested Hoffmann et al.'s published Approach-3 constants this way: fit the
law with every parameter fixed at the published values (only the likelihood's scale free), fit it freely, and
compare. Both fits must be likelihoods (`loss="huber_nll"`), so that twice the gain in log-likelihood is
asymptotically chi-squared with as many degrees of freedom as the restricted fit fixes beyond the full one
(Wilks' theorem). The theorem assumes the data's noise follows that Huber likelihood; with other noise the
chi-squared reference is an approximation (as in the published procedure), and a tested parameter on a bound
of the full fit makes it conservative (the note says so).

    restricted = fit("chinchilla", runs, loss="huber_nll", fixed=presets.HOFFMANN_2022.params)
    full = fit("chinchilla", runs, loss="huber_nll")
    compare(restricted, full).p_value
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Relative slack in log-likelihood within which a full fit that is (numerically) no better than the
# restricted one counts as equal rather than as a failed optimisation.
_LL_RTOL = 1e-9


@dataclass(frozen=True)
class LikelihoodRatioTest:
    """2 (log L_full - log L_restricted), its chi-squared degrees of freedom and p-value."""

    statistic: float
    df: int
    p_value: float
    tested: dict[str, float]  # the parameters the restricted fit fixes and the full one fits, at their fixed values
    law: str
    n: int
    log_likelihood_restricted: float
    log_likelihood_full: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        names = ", ".join(f"{k}={v:g}" for k, v in self.tested.items())
        return (f"likelihood-ratio test ({self.law}, {self.n} rows): restricted ({names}) vs full: "
                f"statistic {self.statistic:.4g}, df {self.df}, p = {self.p_value:.3g}"
                + (f"; {self.note}" if self.note else ""))


_KEYS = ("law", "formula", "loss", "delta", "n", "data_fingerprint", "fixed", "n_free", "log_likelihood",
         "success", "message", "params")


def _view(fit: Any, role: str) -> dict[str, Any]:
    """What the test needs of one fit: a FitResult, its to_dict() (the JSON of `pyscale fit --json`) or a path."""
    if isinstance(fit, (str, os.PathLike)):
        try:
            with open(fit) as fh:
                fit = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{role}: cannot read a fit from {os.fspath(fit)!r}: {exc}") from None
    if hasattr(fit, "to_dict") and hasattr(fit, "law"):
        fit = fit.to_dict()
    if not isinstance(fit, Mapping):
        raise ValueError(f"{role}: expected a FitResult, its to_dict() or a JSON path, got {type(fit).__name__}")
    missing = [k for k in _KEYS if k not in fit]
    if missing:
        raise ValueError(f"{role}: the fit lacks {missing} (save it with `pyscale fit ... --json`)")
    return dict(fit)


def compare(restricted: Any, full: Any) -> LikelihoodRatioTest:
    """The likelihood-ratio test of `restricted` (more parameters fixed) against `full`.

    Both: FitResults, their to_dict()s, or paths to the JSON `pyscale fit --json` writes. Raises ValueError
    naming what differs unless both are converged `loss="huber_nll"` fits of the same law with the same Huber
    delta on the same rows, and the restricted fit fixes every parameter the full one fixes (at the same
    values) and at least one more.
    """
    r, f = _view(restricted, "restricted"), _view(full, "full")
    for role, v in (("restricted", r), ("full", f)):
        if v["loss"] != "huber_nll":
            raise ValueError(f"{role}: a likelihood-ratio test needs likelihoods: the fit has loss={v['loss']!r}, "
                             "refit it with loss='huber_nll' (`--loss huber_nll`)")
        if not v["success"] or v["log_likelihood"] is None:
            raise ValueError(f"{role}: the fit did not converge ({v['message']}); refit it before testing")
    if (r["law"], r["formula"]) != (f["law"], f["formula"]):
        raise ValueError(f"law: restricted is {r['law']!r} ({r['formula']}), full is {f['law']!r} ({f['formula']}); "
                         "nested fits are of one law")
    if not math.isclose(r["delta"], f["delta"], rel_tol=1e-12):
        raise ValueError(f"delta: the Huber likelihoods differ in shape (restricted delta={r['delta']:g}, full "
                         f"delta={f['delta']:g})")
    if r["n"] != f["n"] or r["data_fingerprint"] != f["data_fingerprint"]:
        raise ValueError(f"data: the fits are not on the same rows (restricted: {r['n']} rows, fingerprint "
                         f"{r['data_fingerprint']}; full: {f['n']} rows, fingerprint {f['data_fingerprint']})")
    rfix, ffix = dict(r["fixed"]), dict(f["fixed"])
    not_held = sorted(set(ffix) - set(rfix))
    if not_held:
        raise ValueError(f"fixed: the full fit fixes {not_held}, which the restricted fit does not; the restricted "
                         "fit's fixed set must contain the full fit's")
    moved = sorted(k for k in ffix if not math.isclose(float(rfix[k]), float(ffix[k]), rel_tol=1e-12))
    if moved:
        raise ValueError(f"fixed: {moved} are fixed at different values in the two fits "
                         f"(restricted {[rfix[k] for k in moved]}, full {[ffix[k] for k in moved]}); not nested")
    tested = {k: float(v) for k, v in rfix.items() if k not in ffix}
    df = int(f["n_free"]) - int(r["n_free"])
    if not tested or df <= 0:
        raise ValueError("fixed: the restricted fit fixes nothing the full fit does not; nothing is tested")
    ll_r, ll_f = float(r["log_likelihood"]), float(f["log_likelihood"])
    statistic, note = 2.0 * (ll_f - ll_r), ""
    if statistic < 0:
        if -statistic > _LL_RTOL * max(abs(ll_f), abs(ll_r), 1.0):
            note = (f"the full fit's log-likelihood is below the restricted one's by {-statistic / 2:.3g}: it did "
                    "not reach its maximum (refit it, e.g. from the full start grid); the statistic is set to 0")
        statistic = 0.0
    message = str(f["message"])
    on_bound = message.split("at a bound: ", 1)[1].split(", ") if "at a bound: " in message else []
    at_bound = [k for k in tested if k in on_bound]
    if at_bound:
        note = "; ".join(filter(None, [note, f"{at_bound} sit on a bound in the full fit: the chi-squared "
                                             "p-value is then conservative"]))
    from scipy.stats import chi2

    return LikelihoodRatioTest(statistic=statistic, df=df, p_value=float(chi2.sf(statistic, df)), tested=tested,
                               law=str(f["law"]), n=int(f["n"]), log_likelihood_restricted=ll_r,
                               log_likelihood_full=ll_f, note=note)


__all__ = ["LikelihoodRatioTest", "compare"]
