"""rnnlab.importance: Welch's test and the corrections against hand computations and scipy, the
fANOVA decomposition against functions whose decomposition is known exactly, Optuna's own
evaluator on the same trials, and the command on a small journal study."""
from __future__ import annotations

import math
import sys

import numpy as np
import optuna
import pytest
from scipy import stats

from rnnlab import importance as I

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # get_param_importances(normalize=)


def test_welch_matches_a_hand_computation_and_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    t, df, p = I.welch(a, b)
    # By hand: means 2.5 and 6, s²/n = (5/3)/4 and 10/5.
    va, vb = 5 / 12, 2.0
    assert t == pytest.approx(-3.5 / math.sqrt(va + vb), rel=1e-12)
    assert df == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 4), rel=1e-12)  # 5.5208...
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert (t, p) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-10)
    assert 0.05 < p < 0.1  # t = -2.25 on 5.5 df


def test_holm_and_bonferroni_on_fixed_p_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04;
    # running maximum 0.02, 0.03, 0.06, 0.06; back in the given order:
    assert I.adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert I.adjust(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert I.adjust([0.6, 0.9], "bonferroni") == pytest.approx([1.0, 1.0])  # capped at 1
    assert (I.adjust(p, "holm") <= I.adjust(p, "bonferroni") + 1e-15).all()  # Holm never rejects less
    with pytest.raises(I.ImportanceError, match="--correction='bh' is not allowed"):
        I.adjust(p, "bh")


def test_compare_flags_only_the_group_that_differs():
    rng = np.random.default_rng(0)
    groups = {"vanilla": 1 + 0.1 * rng.standard_normal(10), "same": 1 + 0.1 * rng.standard_normal(10),
              "worse": 2 + 0.1 * rng.standard_normal(10)}
    rows = {r.group: r for r in I.compare(groups, "vanilla")}
    assert rows["worse"].significant and rows["worse"].diff > 0.5 and not rows["same"].significant
    mean, half = I.interval(groups["same"])
    assert half == pytest.approx(stats.t.ppf(0.975, 9) * groups["same"].std(ddof=1) / math.sqrt(10))
    # Holm with two tests: the smaller p doubled, the larger kept but never below the first.
    assert rows["same"].p_adjusted == pytest.approx(max(rows["same"].p, 2 * rows["worse"].p))
    with pytest.raises(I.ImportanceError, match="--baseline='lstm' is not a group"):
        I.compare(groups, "lstm")


def test_the_decomposition_of_a_tree_is_exact():
    # f = a + 2ab with a = [x1 > 1/2], b = [x2 > 1/2] on [0,1]²: mean 1, V = 1.5, V_1 = 1,
    # V_2 = 1/4, V_12 = 1/4; a tree fitted to the four cells represents f exactly.
    from sklearn.tree import DecisionTreeRegressor

    x = np.array([[0.25, 0.25], [0.25, 0.75], [0.75, 0.25], [0.75, 0.75]])
    f = x[:, 0] > 0.5
    y = f + 2 * f * (x[:, 1] > 0.5)
    tree = DecisionTreeRegressor().fit(x, y).tree_
    total, main, pair = I.tree_variances(tree, np.zeros(2), np.ones(2))
    assert total == pytest.approx(1.5, abs=1e-12)
    assert main == pytest.approx([1.0, 0.25], abs=1e-12) and pair[0, 1] == pytest.approx(0.25, abs=1e-12)


def _uniform(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, d))


def test_a_forest_recovers_known_main_effects_and_an_interaction():
    # f = 3 x1 + x2 + 2 x1 x3 (x4 unused) on U[0,1]^4. With a = x1 - 1/2, c = x3 - 1/2:
    # f = const + 4a + x2 + c + 2ac, so V_1 = 16/12, V_2 = V_3 = 1/12, V_13 = 4/144, V = 55/36:
    # fractions 48/55, 3/55, 3/55 and 1/55 for the pair.
    x = _uniform(1000, 4)  # 1,000 noise-free points: the forest's staircase is within the tolerances
    y = 3 * x[:, 0] + x[:, 1] + 2 * x[:, 0] * x[:, 2]
    dims = [I.Dimension(f"x{j + 1}", 0.0, 1.0) for j in range(4)]
    imp = I.fanova(x, y, dims, trees=32, repeats=2)
    main, pair = imp.main.mean(axis=(0, 1)), imp.pair.mean(axis=(0, 1))
    assert main == pytest.approx([48 / 55, 3 / 55, 3 / 55, 0.0], abs=0.03)
    assert pair[0, 2] == pytest.approx(1 / 55, abs=0.012)
    assert max(pair[0, 1], pair[0, 3], pair[1, 2], pair[1, 3], pair[2, 3]) < 0.01
    assert imp.main.shape == (2, 32, 4)
    names = [r[0] for r in imp.rows()]
    assert names[0] == "x1" and names[4] == "x1 x x3"  # main effects first, each part largest first


def test_a_pure_interaction_is_all_pair_and_no_main_effect():
    x = _uniform(400, 2, seed=1)
    y = (x[:, 0] - 0.5) * (x[:, 1] - 0.5)
    imp = I.fanova(x, y, [I.Dimension("u", 0.0, 1.0), I.Dimension("w", 0.0, 1.0)], trees=16, repeats=1)
    assert imp.pair[..., 0, 1].mean() > 0.8 and imp.main.mean(axis=(0, 1)).max() < 0.1


def _study(n: int, objective, distributions, seed: int = 0) -> optuna.Study:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(lambda t: objective({k: t.suggest_float(k, d.low, d.high, log=d.log) for k, d in distributions.items()}),
                   n_trials=n)
    return study


def test_main_effects_agree_with_optunas_evaluator_on_linear_parameters():
    # Same trials, Optuna's forest settings: the two must agree within 0.04 on each main effect
    # (the forests differ only in the columns' order and one-hot versus index for a choice).
    space = {"x1": optuna.distributions.FloatDistribution(0, 1), "x2": optuna.distributions.FloatDistribution(0, 1),
             "x3": optuna.distributions.FloatDistribution(0, 1)}
    study = _study(200, lambda p: 3 * p["x1"] + p["x2"] + 2 * p["x1"] * p["x3"], space)
    x, y, dims = I.encode(study.trials)
    mine = dict(zip([d.name for d in dims], I.fanova(x, y, dims, trees=64, repeats=1).main.mean(axis=(0, 1))))
    theirs = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), normalize=False)
    for name in space:
        assert mine[name] == pytest.approx(theirs[name], abs=0.04), (name, mine, theirs)


def test_a_log_parameter_is_measured_on_its_sampling_scale():
    # f = [lr < 0.01] + m/2, lr log-uniform over three decades. On the sampling scale lr < 0.01
    # is a third of the range: V_lr = 2/9, V_m = 1/48, lr's fraction 0.914. Optuna integrates lr
    # on its linear scale, where lr < 0.01 is 1% of it: V_lr = 0.0099, lr's fraction 0.32.
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1, log=True),
             "m": optuna.distributions.FloatDistribution(0, 1)}
    study = _study(150, lambda p: float(p["lr"] < 0.01) + 0.5 * p["m"], space)
    x, y, dims = I.encode(study.trials)
    assert [d.name for d in dims] == ["lr", "m"] and dims[0].log
    main = I.fanova(x, y, dims, trees=32, repeats=1).main.mean(axis=(0, 1))
    assert main[0] == pytest.approx(0.914, abs=0.05)
    theirs = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), normalize=False)
    assert theirs["lr"] < 0.5


def _variant_study(tmp_path, n_per: int = 6):
    """A journal study with a choice 'cell.variant' (NFG clearly worse) and a log lr."""
    from rnnlab.sweep import open_storage

    storage = str(tmp_path / "j.journal")
    space = {"cell.variant": optuna.distributions.CategoricalDistribution(["vanilla", "NP", "NFG"]),
             "train.lr": optuna.distributions.FloatDistribution(1e-3, 1, log=True)}
    study = optuna.create_study(study_name="toy", storage=open_storage(storage))
    rng = np.random.default_rng(0)
    for i in range(3 * n_per):
        variant = ["vanilla", "NP", "NFG"][i % 3]
        lr = float(10 ** rng.uniform(-3, 0))
        value = 1 + 0.2 * abs(math.log10(lr) + 1) + (1.0 if variant == "NFG" else 0) + 0.05 * rng.standard_normal()
        study.add_trial(optuna.trial.create_trial(params={"cell.variant": variant, "train.lr": lr},
                                                  distributions=space, value=value))
    return storage


def test_the_command_prints_the_tables_and_writes_the_figure(tmp_path, capsys):
    storage = _variant_study(tmp_path)
    out = tmp_path / "out"
    assert I.main(["--storage", storage, "--study", "toy", "--out", str(out), "--repeats", "2", "--trees", "16"]) == 0
    text = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "yes, worse" in rows["NFG"] and rows["NP"].rstrip().endswith("| no |") and "(baseline)" in rows["vanilla"]
    assert "| cell.variant x train.lr |" in text and (out / "report.md").read_text().strip() == text.strip()
    assert (out / "importance.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--study", "nope"], "rnnlab.importance: error: --study='nope' is not in"),
    (["--study", "toy", "--key", "depth"], "rnnlab.importance: error: --key='depth' is not a parameter of the study (its parameters: cell.variant, train.lr)"),
    (["--study", "toy", "--baseline", "lstm"], "rnnlab.importance: error: --baseline='lstm' is not a group of the study (its groups: vanilla, NP, NFG)"),
    (["--study", "toy", "--top", "0"], "rnnlab.importance: error: --top=0.0 is out of range (allowed: 0 < top <= 1)"),
    (["--study", "toy", "--correction", "bh"], "rnnlab.importance: error: --correction='bh' is not allowed (allowed: holm, bonferroni, none)"),
])
def test_bad_input_is_one_line_naming_the_option(tmp_path, capsys, argv, message):
    storage = _variant_study(tmp_path, n_per=2)
    assert I.main(["--storage", storage, *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_sweep_summary_without_scikit_learn_warns_and_still_writes_its_results(tmp_path, monkeypatch, capsys):
    from rnnlab.sweep import summarize

    study = _study(4, lambda p: p["x"], {"x": optuna.distributions.FloatDistribution(0, 1)})
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    result = summarize(study, ["val_loss"], tmp_path)
    assert "importance" not in result and result["best_value"] == min(t.value for t in study.trials)
    assert (tmp_path / "optimization_results.yaml").exists() and (tmp_path / "history_val_loss.png").exists()
    assert "no fANOVA importances: scikit-learn is not installed" in capsys.readouterr().err
    monkeypatch.undo()
    assert "val_loss/x" in summarize(study, ["val_loss"], tmp_path / "with")["importance"]
