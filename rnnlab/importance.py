"""What a finished random search says, as Greff et al. 2017 ("LSTM: A Search Space Odyssey")
read theirs: how each variant compares with the vanilla LSTM, and which hyperparameters matter.

    python -m rnnlab experiment=greff                       # the sweep (an Optuna study named greff)
    python -m rnnlab.importance --study greff               # this: tables on stdout, report.md + figure
    python -m rnnlab.importance --storage postgresql://user@db/optuna --study lstm --key cell.variant --top 0.1

A separate command, not part of the sweep's own summary: it reads any finished study (a journal
file or a database URL, as the sweeper writes them), can be re-run with other settings (the
top fraction, the baseline, more forests) without touching the study, and the sweep's summary
(rnnlab.sweep.summarize) stays the cheap one it was.

**(a) Variants.** The trials' objective (the best epoch's validation loss) grouped by ``--key``
(default cell.variant). Each group against ``--baseline`` (vanilla) by Welch's t-test (unequal
variances; Greff et al. used it at p < 0.05), and, since k variants make k comparisons, the
p-values are adjusted by Holm's step-down method (``--correction holm``, the default: it controls
the family-wise error rate as Bonferroni's does and rejects at least as much;
``bonferroni`` and ``none`` are there too). ``--top 0.1`` keeps each group's best 10% of trials,
as Greff et al.'s second analysis did (it needs ~20 trials a group for two per group).

**(b) fANOVA** (Hutter et al. 2014). A random forest (scikit-learn's, Optuna's settings: 64
trees, depth 64) is fitted to objective ~ hyperparameters, each in the coordinates it was sampled
in: log for a log-scaled one, the category's index for a choice. Each tree is a piecewise-constant
function f on the box of the search space, and under the uniform measure on that box (the
distribution random search drew from) its variance splits exactly into

    V = sum_j V_j + sum_{j<k} V_jk + (higher orders)
    V_j  = Var_{x_j} E[f | x_j]                          main effect of j
    V_jk = Var_{x_j,x_k} (E[f | x_j, x_k] - E[f | x_j] - E[f | x_k] + E[f])

computed here from the tree's leaves (boxes) without sampling: every E[f | x_j] is constant on
the cells between the tree's split points on j. Importances are V_j / V and V_jk / V per tree,
then averaged over the trees and over ``--repeats`` forests of different seeds; the table gives
the mean, the sd over all trees, and the sd of the forests' means (how much the answer depends on
the forest's seed).

Optuna's FanovaImportanceEvaluator (printed beside ours, normalised to sum 1 as Optuna's
get_param_importances gives it) measures the same thing with one difference: Optuna 4-5 integrate
a log-scaled parameter uniformly on its *linear* scale (its transform has transform_log=False), so
a learning rate drawn from 1e-3..3 is weighed as if most trials had lr > 0.3. Ours uses the
sampling scale. A choice is one-hot encoded there, one index here. On linear parameters the two
agree (tests/test_importance.py).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import optuna


class ImportanceError(ValueError):
    """Bad input (an unknown study or key, too few trials): one line for the user."""


# ------------------------------------------------------------------------- (a) the t-tests


def welch(a: Any, b: Any) -> tuple[float, float, float]:
    """Welch's two-sided t-test of mean(a) == mean(b): (t, Welch-Satterthwaite df, p)."""
    from scipy.stats import t as student

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t), float(df), float(2 * student.sf(abs(t), df))


CORRECTIONS = ("holm", "bonferroni", "none")


def adjust(pvalues: Any, method: str = "holm") -> np.ndarray:
    """p-values adjusted for m comparisons. bonferroni: min(1, m p). holm: the i-th smallest
    (i = 1..m) becomes max over j <= i of min(1, (m - j + 1) p_(j)), so that rejecting the
    adjusted p < alpha is Holm's step-down test at family-wise level alpha."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if method == "none" or m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, m * p)
    if method != "holm":
        raise ImportanceError(f"--correction={method!r} is not allowed (allowed: {', '.join(CORRECTIONS)})")
    order = np.argsort(p)
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def interval(values: Any) -> tuple[float, float]:
    """Mean and half-width of its 95% Student t interval (NaN for fewer than 2 values): the
    report's (rnnlab.report.Interval), so both commands print the same interval."""
    from rnnlab.report import Interval

    got = Interval.of(values)
    return got.mean, got.half_width


@dataclass
class Comparison:
    group: str
    n: int
    mean: float
    half_width: float  # of the 95% t interval
    median: float
    diff: float  # mean - the baseline's mean (positive: worse, for a loss)
    t: float
    df: float
    p: float  # Welch's, unadjusted
    p_adjusted: float
    significant: bool  # p_adjusted < alpha


def compare(groups: dict[str, Any], baseline: str, alpha: float = 0.05, correction: str = "holm") -> list[Comparison]:
    """The baseline's row (no test), then every other group against it, in ``groups``' order."""
    if baseline not in groups:
        raise ImportanceError(f"--baseline={baseline!r} is not a group of the study (its groups: {', '.join(groups)})")
    base = np.asarray(groups[baseline], dtype=float)
    others = [g for g in groups if g != baseline]
    tests = [welch(groups[g], base) if len(groups[g]) > 1 and len(base) > 1 else (math.nan,) * 3 for g in others]
    ps = np.array([p for _, _, p in tests])
    tested = ~np.isnan(ps)
    adjusted = np.full(len(ps), math.nan)
    adjusted[tested] = adjust(ps[tested], correction)
    rows = [Comparison(baseline, len(base), *interval(base), float(np.median(base)), 0.0, *(math.nan,) * 4, False)]
    for g, (t, df, p), q in zip(others, tests, adjusted):
        x = np.asarray(groups[g], dtype=float)
        rows.append(Comparison(g, len(x), *interval(x), float(np.median(x)), float(x.mean() - base.mean()),
                               t, df, p, float(q), bool(q < alpha)))
    return rows


# -------------------------------------------------------------------------- (b) fANOVA


@dataclass
class Dimension:
    """One hyperparameter in the coordinates the forest sees: [low, high] (log for a log-scaled
    one), or a choice's index in [-0.5, K - 0.5], each category a cell of width 1."""

    name: str
    low: float
    high: float
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def encode(self, value: Any) -> float:
        if self.choices is not None:
            return float(self.choices.index(value))
        return math.log(value) if self.log else float(value)


def dimensions(distributions: dict[str, Any]) -> list[Dimension]:
    """The search space of Optuna distributions as Dimensions (sorted by name)."""
    dims = []
    for name in sorted(distributions):
        d = distributions[name]
        if hasattr(d, "choices"):
            dims.append(Dimension(name, -0.5, len(d.choices) - 0.5, choices=tuple(d.choices)))
        elif d.log:
            dims.append(Dimension(name, math.log(d.low), math.log(d.high), log=True))
        else:
            dims.append(Dimension(name, float(d.low), float(d.high)))
    return dims


def tree_variances(tree: Any, low: np.ndarray, high: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The functional-ANOVA decomposition of one fitted tree (sklearn's ``tree_``) over the box
    [low, high] with the uniform measure: (V, V_j for each j, V_jk for each pair, upper triangle).

    The leaves are boxes with constant values v_l. Per dimension j the leaves' bounds cut
    [low_j, high_j] into cells (widths u_c as fractions); E[f | x_j in cell c] is the sum over
    the leaves covering c of v_l times their volume fraction in the other dimensions. Pairs
    likewise on the grid of two dimensions' cells, where a leaf covers a rectangle of cells:
    added with a 2-D difference array and two cumulative sums (no leaves x cells x cells loop)."""
    d = len(low)
    left, right, feature, threshold = tree.children_left, tree.children_right, tree.feature, tree.threshold
    values = tree.value[:, 0, 0]
    boxes, leaf_values = [], []
    stack = [(0, low.astype(float).copy(), high.astype(float).copy())]
    while stack:  # leaves' boxes: a split x_f <= t sends the left child below t
        node, lo, hi = stack.pop()
        if left[node] < 0:
            boxes.append((lo, hi))
            leaf_values.append(values[node])
            continue
        f, t = feature[node], min(max(threshold[node], lo[feature[node]]), hi[feature[node]])
        lo_r, hi_l = lo.copy(), hi.copy()
        hi_l[f], lo_r[f] = t, t
        stack += [(left[node], lo, hi_l), (right[node], lo_r, hi)]
    lo = np.array([b[0] for b in boxes])  # (L, d)
    hi = np.array([b[1] for b in boxes])
    v = np.array(leaf_values)  # (L,)
    frac = (hi - lo) / (high - low)  # (L, d): each leaf's share of each dimension
    weight = frac.prod(axis=1)  # (L,): volume fractions, summing to 1
    mean = float(weight @ v)
    total = float(weight @ (v - mean) ** 2)
    main, pair = np.zeros(d), np.zeros((d, d))
    if total <= 0:
        return total, main, pair
    cells, spans = [], []  # per dimension: cell widths (fractions) and each leaf's [first, last) cell
    for j in range(d):
        cuts = np.unique(np.concatenate([lo[:, j], hi[:, j], [low[j], high[j]]]))
        cells.append(np.diff(cuts) / (high[j] - low[j]))
        spans.append((np.searchsorted(cuts, lo[:, j]), np.searchsorted(cuts, hi[:, j])))
    effects = []
    for j in range(d):
        others = np.prod(np.delete(frac, j, axis=1), axis=1)  # (L,)
        diff = np.zeros(len(cells[j]) + 1)
        np.add.at(diff, spans[j][0], v * others)
        np.add.at(diff, spans[j][1], -v * others)
        effect = np.cumsum(diff)[:-1] - mean  # (C_j,): E[f | x_j] - E[f]
        effects.append(effect)
        main[j] = cells[j] @ effect**2
    for j in range(d):
        for k in range(j + 1, d):
            coef = v * np.prod(np.delete(frac, [j, k], axis=1), axis=1)
            (a0, a1), (b0, b1) = spans[j], spans[k]
            diff = np.zeros((len(cells[j]) + 1, len(cells[k]) + 1))
            for rows, cols, sign in ((a0, b0, 1), (a1, b0, -1), (a0, b1, -1), (a1, b1, 1)):
                np.add.at(diff, (rows, cols), sign * coef)
            joint = diff.cumsum(0).cumsum(1)[:-1, :-1] - mean  # E[f | x_j, x_k] - E[f]
            term = joint - effects[j][:, None] - effects[k][None, :]
            pair[j, k] = cells[j] @ term**2 @ cells[k]
    return total, main, pair


@dataclass
class Importances:
    names: list[str]
    main: np.ndarray  # (forests, trees, d): V_j / V of every tree
    pair: np.ndarray  # (forests, trees, d, d): V_jk / V, upper triangle

    def rows(self) -> list[tuple[str, float, float, float]]:
        """(name, mean, sd over all trees, sd of the forests' means): main effects, then pairs,
        each part from the largest mean down."""
        def row(name: str, x: np.ndarray) -> tuple[str, float, float, float]:
            return name, float(x.mean()), float(x.std()), float(x.mean(axis=1).std(ddof=1)) if len(x) > 1 else math.nan

        mains = [row(n, self.main[:, :, j]) for j, n in enumerate(self.names)]
        d = len(self.names)
        pairs = [row(f"{self.names[j]} x {self.names[k]}", self.pair[:, :, j, k]) for j in range(d) for k in range(j + 1, d)]
        return sorted(mains, key=lambda r: -r[1]) + sorted(pairs, key=lambda r: -r[1])


def fanova(x: np.ndarray, y: np.ndarray, dims: list[Dimension], trees: int = 64, repeats: int = 5, seed: int = 0,
           max_depth: int = 64) -> Importances:
    """Fit ``repeats`` random forests (seeds seed, seed+1, ...) to y ~ x (x: encoded, one column
    per Dimension) and decompose every tree (tree_variances). Trees whose fit is constant
    (V = 0) are dropped, as Optuna does."""
    from sklearn.ensemble import RandomForestRegressor

    if len(y) < 2:
        raise ImportanceError(f"{len(y)} complete trials: fANOVA needs at least 2")
    low, high = np.array([d.low for d in dims]), np.array([d.high for d in dims])
    mains, pairs = [], []
    for r in range(repeats):
        forest = RandomForestRegressor(n_estimators=trees, max_depth=max_depth, min_samples_split=2,
                                       min_samples_leaf=1, random_state=seed + r).fit(x, y)
        per_tree = [tree_variances(e.tree_, low, high) for e in forest.estimators_]
        kept = [(m / v, p / v) for v, m, p in per_tree if v > 0]
        if not kept:
            raise ImportanceError("the forest's fit is constant (every trial the same value?): no variance to explain")
        mains.append(np.array([m for m, _ in kept]))
        pairs.append(np.array([p for _, p in kept]))
    n = min(len(m) for m in mains)  # a dropped constant tree is rare; every forest keeps as many
    return Importances([d.name for d in dims], np.stack([m[:n] for m in mains]), np.stack([p[:n] for p in pairs]))


# ---------------------------------------------------------------------------- the study


def load(storage: str | None, name: str) -> optuna.Study:
    import optuna

    from rnnlab.sweep import SweepError, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        store = open_storage(storage)
    except SweepError as e:
        raise ImportanceError(str(e)) from None
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise ImportanceError(f"--study={name!r} is not in {storage or 'outputs/optuna.journal'} "
                              f"(its studies: {', '.join(names) or 'none'})") from None


def groups_of(trials: list[Any], key: str, top: float = 1.0) -> dict[str, np.ndarray]:
    """Each value of ``key`` -> its trials' objective values, the best ``top`` fraction of
    them (at least one), in the order the key's choices were declared."""
    if not trials:
        raise ImportanceError("the study has no complete trial")
    if key not in trials[0].distributions:
        raise ImportanceError(f"--key={key!r} is not a parameter of the study (its parameters: {', '.join(sorted(trials[0].distributions))})")
    if not 0 < top <= 1:
        raise ImportanceError(f"--top={top} is out of range (allowed: 0 < top <= 1)")
    dist = trials[0].distributions[key]
    order = list(getattr(dist, "choices", sorted({t.params[key] for t in trials})))
    out = {}
    for g in order:
        values = np.sort([t.value for t in trials if t.params.get(key) == g])
        if len(values):
            out[str(g)] = values[: max(1, math.ceil(top * len(values)))]
    return out


def encode(trials: list[Any]) -> tuple[np.ndarray, np.ndarray, list[Dimension]]:
    """The trials' params as the forest's inputs (one column per Dimension) and their values.
    The search space is that of the trials (all of them share it in a sweep)."""
    dims = dimensions(trials[0].distributions)
    x = np.array([[d.encode(t.params[d.name]) for d in dims] for t in trials])
    return x, np.array([t.value for t in trials], dtype=float), dims


def optuna_importances(study: optuna.Study, seed: int = 0) -> dict[str, float]:
    """Optuna's own fANOVA main effects (normalised to sum 1, as get_param_importances gives them)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)))


# ----------------------------------------------------------------------------- report


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def markdown_variants(rows: list[Comparison], alpha: float, correction: str) -> str:
    lines = [f"| variant | n | mean best val loss | 95% interval | median | vs baseline | Welch p | p ({correction}) | significant at {alpha} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r.mean - r.half_width, r.mean + r.half_width
        verdict = "(baseline)" if math.isnan(r.p) and r.diff == 0 else ("yes, worse" if r.significant and r.diff > 0
                                                                     else "yes, better" if r.significant else "no")
        lines.append(f"| {r.group} | {r.n} | {_f(r.mean)} | [{_f(lo)}, {_f(hi)}] | {_f(r.median)} | {r.diff:+.3f} | "
                     f"{_p(r.p)} | {_p(r.p_adjusted)} | {verdict} |")
    return "\n".join(lines)


def markdown_importances(imp: Importances, theirs: dict[str, float] | None = None) -> str:
    forests, trees = imp.main.shape[:2]
    head = f"| hyperparameter (or pair) | fraction of variance | sd over {forests * trees} trees | sd over {forests} forests |"
    lines = [head + (" Optuna (normalised) |" if theirs is not None else ""), "|---|---|---|---|" + ("---|" if theirs is not None else "")]
    for name, mean, sd_trees, sd_forests in imp.rows():
        extra = f" {_f(theirs.get(name, math.nan))} |" if theirs is not None else ""
        extra = extra if " x " not in name else (" |" if theirs is not None else "")
        lines.append(f"| {name} | {_f(mean)} | {_f(sd_trees)} | {_f(sd_forests)} |{extra}")
    total_main = imp.main.sum(axis=2).mean()
    total_pair = imp.pair.sum(axis=(2, 3)).mean()
    lines.append(f"\nMain effects explain {total_main:.1%} of the forest's variance, pairwise interactions {total_pair:.1%}, "
                 f"higher orders the remaining {1 - total_main - total_pair:.1%}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.importance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=None, help="journal file or database URL (default outputs/optuna.journal)")
    parser.add_argument("--study", required=True, help="the study's name (hydra.sweeper.study_name)")
    parser.add_argument("--key", default="cell.variant", help="the parameter whose groups are compared")
    parser.add_argument("--baseline", default="vanilla", help="the group every other is tested against")
    parser.add_argument("--top", type=float, default=1.0, help="keep each group's best fraction of trials (Greff et al.: 0.1)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--correction", default="holm", help="holm | bonferroni | none")
    parser.add_argument("--trees", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="forests of different seeds")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and importance.png (default outputs/importance/<study>)")
    args = parser.parse_args(argv)
    try:
        if args.repeats < 1 or args.trees < 1:
            raise ImportanceError(f"--trees={args.trees}, --repeats={args.repeats}: each must be >= 1")
        if args.correction not in CORRECTIONS:
            raise ImportanceError(f"--correction={args.correction!r} is not allowed (allowed: {', '.join(CORRECTIONS)})")
        study = load(args.storage, args.study)
        if len(study.directions) != 1:
            raise ImportanceError(f"study {args.study!r} has {len(study.directions)} objectives: this reads single-objective studies")
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        groups = groups_of(trials, args.key, args.top)
        rows = compare(groups, args.baseline, args.alpha, args.correction)
        x, y, dims = encode(trials)
        imp = fanova(x, y, dims, trees=args.trees, repeats=args.repeats)
    except ImportanceError as e:
        print(f"rnnlab.importance: error: {e}", file=sys.stderr)
        return 2
    theirs = optuna_importances(study)
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    text = "\n\n".join([
        f"# Study {args.study}: {len(trials)} complete trials ({', '.join(f'{k.lower()} {v}' for k, v in counts.items() if v and k != 'COMPLETE') or 'no others'})",
        f"## {args.key} against {args.baseline} (best {args.top:.0%} of each group's trials; objective: {study.metric_names[0] if study.metric_names else 'value'}, lower is better)",
        markdown_variants(rows, args.alpha, args.correction),
        f"## fANOVA ({args.repeats} forests x {args.trees} trees; sampling scale: log where the search was log)",
        markdown_importances(imp, theirs),
    ])
    print(text)
    out = args.out or Path("outputs/importance") / args.study
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    from rnnlab.figures import plot_variants_and_importances

    figure = plot_variants_and_importances(groups, args.baseline, {r.group: r.significant for r in rows}, imp.rows(),
                                           out / "importance.png", f"{args.study}: {args.key}")
    print(f"\nwrote {out / 'report.md'} and {figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
