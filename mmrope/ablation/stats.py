"""Mean and Student-t 95% confidence interval across seeds, and the results of a grid grouped into cells."""

from __future__ import annotations

import math

METRICS = ("exact", "attribute", "place", "relation", "axis", "named", "relation_named", "axis_named", "event",
           "motion", "order", "change", "bleu4", "cider")

# t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf); beyond, the Cornish-Fisher expansion below is within 1e-4.
T_975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom: the two-sided 95% multiplier."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval, t_{0.975, n-1} * s / sqrt(n) with s the sample
    standard deviation. Student's t, not the normal 1.96: with 3 seeds the multiplier is 4.30. One value: no CI."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * s / math.sqrt(n)


def summarize(rows: list[dict]) -> list[dict]:
    """Rows grouped by arm, split and factor -> ``{encoder, scheme, split, factor, size, seeds, <metric>: (mean,
    ci)}``, in the order the groups first appear."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["encoder"], r["scheme"], r["split"], r["factor"], r.get("frames")), []).append(r)
    summary = []
    for (encoder, scheme, split, factor, frames), group in groups.items():
        s = {"encoder": encoder, "scheme": scheme, "split": split, "factor": factor, "size": group[0]["size"],
             "frames": frames,
             "seeds": len(group)}
        for m in METRICS:
            values = [r[m] for r in group if r.get(m) is not None]
            if values:
                s[m] = mean_ci(values)
        summary.append(s)
    return summary
