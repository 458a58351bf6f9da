"""Why customers fall into their segment: a LightGBM surrogate on the original columns + SHAP.

The classifier learns the segment labels from the customer's own columns (not
the encoded space), so SHAP speaks of age, job, balance... Categorical columns
use LightGBM's native categorical splits. Accuracy is cross-validated with early
stopping on a slice of each training fold; SHAP (TreeExplainer) runs on a seeded
sample of rows.

Past the scale threshold on a Dask cluster, `surrogate_dask` trains the classifier
with LightGBM's Dask interface on every row but a seeded holdout (the table split
into one partition per worker, the workers training one model together), measures
accuracy on the holdout, and explains the same seeded SHAP sample with the trained
booster brought back to this process.

The surrogate's accuracy alone does not say segments follow simple rules: `rule_tree` fits a
depth-3 decision tree on the same columns, cross-validates it against the majority baseline and
writes its leaves as rules in words; "simple rules" is claimed only where it reaches 90%.
`shap_direction` says which way each column pushes each segment.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from .features import sample_rows


def model_frame(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    X = frame.copy()
    for c in categorical:
        X[c] = X[c].astype("category")
    return X


def _lgbm_params(seed: int, threads: int) -> dict:
    """The surrogate's settings, shared by the in-process and the Dask classifier."""
    return dict(learning_rate=0.1, num_leaves=31, min_child_samples=10, random_state=seed, n_jobs=threads,
                deterministic=True, force_row_wise=True, verbose=-1)


def _classifier(n_classes: int, seed: int, threads: int):
    import lightgbm as lgb

    return lgb.LGBMClassifier(n_estimators=300, objective="multiclass" if n_classes > 2 else "binary",
                              **_lgbm_params(seed, threads))


def _fit(X, y, seed, threads):
    import lightgbm as lgb

    n_classes = len(np.unique(y))
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 else None
    Xtr, Xval, ytr, yval = train_test_split(X, y, test_size=0.1, random_state=seed, stratify=strat)
    clf = _classifier(n_classes, seed, threads)
    clf.fit(Xtr, ytr, eval_X=(Xval,), eval_y=(yval,), callbacks=[lgb.early_stopping(15, verbose=False)])
    return clf


def surrogate(frame: pd.DataFrame, labels: np.ndarray, categorical: list[str], seed: int = 0,
              folds: int = 3, max_rows: int = 20000, shap_sample: int = 2000, threads: int = 1) -> dict:
    """Cross-validated accuracy of LightGBM predicting the segment, and SHAP on a sample.

    Returns a dict with accuracy facts, mean |SHAP| per (segment, feature) and the
    per-row SHAP values of the sample (rows are indices into `frame`).
    """
    X = model_frame(frame, categorical)
    y = np.asarray(labels, dtype=np.int64)
    n = len(X)
    rows = sample_rows(n, max_rows, seed, strata=y)  # CV on a stratified sample past max_rows
    Xs, ys = X.iloc[rows].reset_index(drop=True), y[rows]
    min_count = np.bincount(ys)[np.bincount(ys) > 0].min()
    k_folds = int(max(2, min(folds, min_count)))
    accs, iters = [], []
    skf = StratifiedKFold(n_splits=k_folds, shuffle=True, random_state=seed)
    for tr, te in skf.split(Xs, ys):
        clf = _fit(Xs.iloc[tr], ys[tr], seed, threads)
        accs.append(float((clf.predict(Xs.iloc[te]) == ys[te]).mean()))
        iters.append(int(clf.best_iteration_ or clf.n_estimators))
    final = _fit(Xs, ys, seed, threads)
    out = _explain(final, X, y, list(frame.columns), shap_sample, seed)
    out.update(accuracy=float(np.mean(accs)), accuracy_folds=accs, folds=k_folds, cv_rows=int(len(rows)),
               best_iterations=iters, engine="lightgbm", validation="cross-validation")
    return out


def class_booster(booster, c: int):
    """The trees of class `c` of a multiclass LightGBM booster, as a booster of their own.

    A multiclass booster grows one tree per class each round (tree i belongs to class i mod K) and
    the classes' raw scores are sums over their own trees, so class c's SHAP values (TreeSHAP, which
    LightGBM computes for `pred_contrib` and shap's TreeExplainer calls) are those of its trees alone:
    explaining each row for its own segment costs 1/K of explaining it for all K. Built by keeping
    class c's trees in LightGBM's text model (numbered anew, one class); the values are the same
    numbers (tests/test_explain.py compares them with the full model's).
    """
    import lightgbm as lgb

    text = booster.model_to_string()
    k = int(re.search(r"(?m)^num_tree_per_iteration=(\d+)$", text).group(1))
    head, rest = text.split("\nTree=0\n", 1)
    trees, tail = ("Tree=0\n" + rest).split("end of trees", 1)
    blocks = [b for b in re.split(r"(?m)^(?=Tree=\d+\n)", trees) if b.strip()]
    mine = [re.sub(r"\ATree=\d+", f"Tree={j}", b) for j, b in enumerate(blocks[c::k])]
    for pattern, repl in ((r"(?m)^num_class=\d+$", "num_class=1"),
                          (r"(?m)^num_tree_per_iteration=\d+$", "num_tree_per_iteration=1"),
                          (r"(?m)^objective=.*$", "objective=regression"),  # raw scores: what SHAP explains
                          (r"(?m)^tree_sizes=.*\n", "")):  # sizes of the full model's trees
        head = re.sub(pattern, repl, head)
    return lgb.Booster(model_str=head + "\n" + "".join(mine) + "end of trees" + tail)


def _explain(final, X: pd.DataFrame, y: np.ndarray, features: list[str], shap_sample: int, seed: int) -> dict:
    """Mean |SHAP| per (segment, feature) and per-row SHAP values on a seeded, stratified sample.

    Each row is explained for its own segment (the log-odds of that segment), which is all the report
    uses: with more than two segments, each segment's rows by that segment's trees (`class_booster`)."""
    import shap

    n = len(X)
    srows = sample_rows(n, shap_sample, seed + 1, strata=y)
    classes = list(final.classes_)
    ys_shap = y[srows]
    Xs = X.iloc[srows]
    own = np.zeros((len(srows), len(features)))
    per_segment = {}
    if len(classes) <= 2:  # one output, the log-odds of class 1; class 0's are its negative
        sv = np.asarray(shap.TreeExplainer(final).shap_values(Xs))
        if sv.ndim == 3:  # (rows, features, 2) in some shap versions
            sv = sv[:, :, -1]
        for ci, c in enumerate(classes):
            sign = 1.0 if ci == len(classes) - 1 else -1.0
            members = ys_shap == c
            own[members] = sign * sv[members]
            vals = np.abs(sv[members] if members.any() else sv)
            per_segment[int(c)] = {f: float(vals[:, j].mean()) for j, f in enumerate(features)}
    else:
        booster = final.booster_
        for ci, c in enumerate(classes):
            members = ys_shap == c
            expl = shap.TreeExplainer(class_booster(booster, ci))
            vals = np.asarray(expl.shap_values(Xs[members] if members.any() else Xs))
            if members.any():
                own[members] = vals
            per_segment[int(c)] = {f: float(np.abs(vals[:, j]).mean()) for j, f in enumerate(features)}
    overall = {f: float(np.abs(own[:, j]).mean()) for j, f in enumerate(features)}
    rows_frame = pd.DataFrame({"row": srows, "segment": ys_shap})
    for j, f in enumerate(features):
        rows_frame[f"shap_{f}"] = own[:, j]
    return {"shap_rows": int(len(srows)), "mean_abs_shap": per_segment, "mean_abs_shap_overall": overall,
            "shap_sample": rows_frame, "model": final}


def surrogate_dask(frame: pd.DataFrame, labels: np.ndarray, categorical: list[str], scheduler: str, seed: int = 0,
                   holdout: int = 20000, rounds: int = 100, shap_sample: int = 2000, threads: int = 1) -> dict:
    """The surrogate trained by LightGBM's Dask interface on the cluster at `scheduler` (see module doc).

    Trainings of several cells take turns (a cluster-wide lock): LightGBM's Dask training
    needs every worker holding data at once, and two interleaved trainings could each wait
    for a worker the other holds.
    """
    import dask.dataframe as dd
    import lightgbm as lgb
    from distributed import Client, Lock

    X = model_frame(frame, categorical)
    y = np.asarray(labels, dtype=np.int64)
    n = len(X)
    test = sample_rows(n, min(holdout, max(1, n // 5)), seed, strata=y)
    train = np.ones(n, dtype=bool)
    train[test] = False
    with Client(scheduler) as client:  # the default client of this (kernel) process: Lock uses it
        workers = len(client.scheduler_info()["workers"])
        part = X[train].assign(__segment=y[train])
        ddf = dd.from_pandas(part, npartitions=max(1, workers)).persist()
        clf = lgb.DaskLGBMClassifier(client=client, n_estimators=rounds, **_lgbm_params(seed, threads))
        with Lock("segreport-lightgbm"):
            clf.fit(ddf.drop(columns="__segment"), ddf["__segment"])
        final = clf.to_local()
        del ddf
    acc = float((final.predict(X.iloc[test]) == y[test]).mean())
    out = _explain(final, X, y, list(frame.columns), shap_sample, seed)
    out.update(accuracy=acc, accuracy_folds=[acc], folds=1, cv_rows=int(train.sum()), holdout_rows=int(len(test)),
               best_iterations=[rounds], engine="lightgbm.dask", validation="holdout", dask_workers=workers)
    return out


# --------------------------------------------------------------------------------------------
# an honest surrogate: the majority baseline, a shallow rule tree, and SHAP with its direction

SIMPLE_RULES_ACCURACY = 0.9  # "simple rules" only where a depth-3 tree reproduces this share of rows


def majority_baseline(labels: np.ndarray) -> dict:
    """The accuracy of always guessing the largest segment: what any classifier must beat.
    Returns accuracy, segment."""
    y = np.asarray(labels)
    values, counts = np.unique(y, return_counts=True)
    i = int(np.argmax(counts))
    return {"accuracy": float(counts[i] / len(y)), "segment": int(values[i])}


def _tree_frame(frame: pd.DataFrame, categorical: list[str]) -> tuple[pd.DataFrame, dict]:
    """Numeric columns as they are, categories one-hot (one 0/1 column per level, names kept)."""
    cols, dummies = {}, {}
    for c in frame.columns:
        if c in categorical:
            values = frame[c].astype(str)
            for lv in sorted(values.unique()):
                name = f"{c}={lv}"
                cols[name] = (values == lv).to_numpy(np.float64)
                dummies[name] = (c, lv)
        else:
            cols[c] = frame[c].to_numpy(np.float64)
    return pd.DataFrame(cols), dummies


def rule_tree(frame: pd.DataFrame, labels: np.ndarray, categorical: list[str], max_depth: int = 3, seed: int = 0,
              folds: int = 5, max_rows: int = 20000, min_leaf: int = 20) -> dict:
    """How far simple rules go: a shallow decision tree on the customers' own columns.

    A scikit-learn DecisionTreeClassifier (depth `max_depth`, leaves of at least `min_leaf`
    rows) learns the segments from the numeric columns and one-hot categories; its accuracy is
    stratified `folds`-fold cross-validated on a seeded sample of at most `max_rows` rows, then it
    is refitted on the sample and each leaf is written as a rule: "age < 31 and marital = single".
    Thresholds are the roundest numbers that split the observed values as the tree does; category
    conditions name levels ("job in {retired, student}"; "housing = no" where one level remains).

    Returns accuracy (CV mean), accuracy_folds, folds, baseline (majority_baseline), simple_rules
    (accuracy >= 0.9), max_depth, rows, rules [{segment, conditions [{column, op, value}] (op "<"
    or ">=" with a number, "in" with a list of levels), text, rows, purity (share of the leaf's
    rows in its segment), coverage (share of the segment's rows that reach the leaf)}],
    by_segment {segment: "rule or rule"}, model (the fitted tree) and features (its columns).
    `predict_rules(result["rules"], frame)` applies the rules in words.
    """
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    y_all = np.asarray(labels, dtype=np.int64)
    rows = sample_rows(len(y_all), max_rows, seed, strata=y_all)
    sub = frame.iloc[rows].reset_index(drop=True)
    X, dummies = _tree_frame(sub, categorical)
    y = y_all[rows]
    counts = np.bincount(y)
    k_folds = int(max(2, min(folds, counts[counts > 0].min())))
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=min_leaf, random_state=seed)
    accs = cross_val_score(tree, X, y, cv=StratifiedKFold(k_folds, shuffle=True, random_state=seed))
    tree.fit(X, y)
    levels = {c: sorted(sub[c].astype(str).unique()) for c in categorical if c in sub.columns}
    rules = _tree_rules(tree, X, y, dummies, levels)
    by_segment: dict[int, list[str]] = {}
    for r in rules:
        by_segment.setdefault(r["segment"], []).append(r["text"])
    acc = float(np.mean(accs))
    return {"accuracy": acc, "accuracy_folds": [float(a) for a in accs], "folds": k_folds,
            "baseline": majority_baseline(y), "simple_rules": acc >= SIMPLE_RULES_ACCURACY,
            "max_depth": max_depth, "rows": int(len(rows)), "rules": rules,
            "by_segment": {s: " or ".join(f"({t})" if len(v) > 1 else t for t in v) for s, v in by_segment.items()},
            "model": tree, "features": list(X.columns)}


def _tree_rules(tree, X: pd.DataFrame, y: np.ndarray, dummies: dict, levels: dict) -> list[dict]:
    t = tree.tree_
    names = list(X.columns)
    cuts: dict[tuple[str, float], float] = {}

    def cut(f: str, thr: float) -> float:
        if (f, thr) not in cuts:
            x = X[f].to_numpy(np.float64)
            left = x.astype(np.float32) <= thr  # the tree compares float32 values
            lo = float(x[left].max()) if left.any() else thr
            hi = float(x[~left].min()) if (~left).any() else thr
            cuts[(f, thr)] = _readable_cut(lo, hi)
        return cuts[(f, thr)]

    out = []
    reach = tree.decision_path(X).tocsc()

    def one_class(node: int) -> int | None:
        """The class every leaf under `node` predicts, or None: such a subtree is one rule, since its
        splits change no prediction (the tree grows them for purity, a reader needs none of them)."""
        if t.children_left[node] == -1:
            return int(np.argmax(t.value[node][0]))
        a, b = one_class(t.children_left[node]), one_class(t.children_right[node])
        return a if a is not None and a == b else None

    def walk(node: int, path: list):
        cls = one_class(node)
        if cls is not None:
            seg = int(tree.classes_[cls])
            members = reach[:, node].toarray().ravel().astype(bool)
            conds = _conditions(path, dummies, levels)
            out.append({"segment": seg, "conditions": conds, "text": _rule_text(conds),
                        "rows": int(members.sum()),
                        "purity": float((y[members] == seg).mean()) if members.any() else None,
                        "coverage": float((members & (y == seg)).sum() / max(1, int((y == seg).sum())))})
            return
        f, thr = names[t.feature[node]], float(t.threshold[node])
        walk(t.children_left[node], path + [(f, "<", thr, cut(f, thr))])
        walk(t.children_right[node], path + [(f, ">=", thr, cut(f, thr))])

    walk(0, [])
    return out


def _conditions(path: list, dummies: dict, levels: dict) -> list[dict]:
    """A leaf's path as at most two bounds per numeric column and one level set per category."""
    lower, upper, allowed, banned, order = {}, {}, {}, {}, []
    for f, op, _, c in path:
        if f in dummies:
            col, lv = dummies[f]
            (allowed if op == ">=" else banned).setdefault(col, set()).add(lv)
            f = col
        elif op == ">=":
            lower[f] = max(lower.get(f, -np.inf), c)
        else:
            upper[f] = min(upper.get(f, np.inf), c)
        if f not in order:
            order.append(f)
    conds = []
    for f in order:
        if f in allowed or f in banned:
            pool = allowed.get(f) or set(levels[f])
            conds.append({"column": f, "op": "in", "value": sorted(pool - banned.get(f, set()))})
            continue
        if f in lower:
            conds.append({"column": f, "op": ">=", "value": lower[f]})
        if f in upper:
            conds.append({"column": f, "op": "<", "value": upper[f]})
    return conds


def _readable_cut(lo: float, hi: float) -> float:
    """The roundest number r with lo < r <= hi: "x < r" then splits the observed values exactly as
    the tree's threshold does (lo and hi are the observed values on either side of it)."""
    if hi <= lo:
        return hi
    top = int(math.floor(math.log10(max(abs(lo), abs(hi), hi - lo)))) + 1
    for d in range(top, -13, -1):
        step = 10.0 ** d
        r = (math.floor(lo / step) + 1) * step
        if lo < r <= hi:
            r = round(r, max(0, -d))
            if lo < r <= hi:
                return float(r)
    return float(hi)


def _fmt_num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.12g}"


def _rule_text(conds: list[dict]) -> str:
    parts = []
    for c in conds:
        if c["op"] == "in":
            v = c["value"]
            parts.append(f"{c['column']} = {v[0]}" if len(v) == 1 else f"{c['column']} in {{{', '.join(v)}}}")
        else:
            parts.append(f"{c['column']} {c['op']} {_fmt_num(c['value'])}")
    return " and ".join(parts) or "every customer"


def predict_rules(rules: list[dict], frame: pd.DataFrame) -> np.ndarray:
    """The segment of each row by the first rule (from rule_tree) whose conditions it meets; -1
    where none does (a level the tree never saw, for example)."""
    out = np.full(len(frame), -1, dtype=np.int64)
    for r in rules:
        hit = np.ones(len(frame), dtype=bool)
        for c in r["conditions"]:
            if c["op"] == "in":
                hit &= frame[c["column"]].astype(str).isin(c["value"]).to_numpy()
            else:
                x = frame[c["column"]].to_numpy(np.float64)
                hit &= (x < c["value"]) if c["op"] == "<" else (x >= c["value"])
        out[hit & (out < 0)] = r["segment"]
    return out


def shap_direction(shap_sample: pd.DataFrame, frame: pd.DataFrame, numeric: list[str], categorical: list[str],
                   min_rows: int = 20, min_corr: float = 0.1) -> dict:
    """Which way each column pushes each segment, from the surrogate's SHAP sample.

    shap_sample: surrogate()["shap_sample"] (row, segment, shap_<column>: the SHAP value of each
    row's own segment). Within a segment's sampled rows:
    numeric: the Spearman correlation between the column's value and its SHAP value; "higher"
             (higher values push towards the segment) when >= min_corr, "lower" when <= -min_corr,
             else "mixed";
    category: the mean SHAP per level (levels with at least 5 rows); levels pushing towards the
             segment (mean > 0) and away from it, strongest first.
    Returns {segment: {column: {kind, direction | towards/away, corr | mean_shap {level: value},
    rows}}}; segments with fewer than min_rows sampled rows are left out.
    """
    from scipy.stats import spearmanr

    out: dict = {}
    for seg, part in shap_sample.groupby("segment"):
        if len(part) < min_rows:
            continue
        vals = frame.iloc[part["row"].to_numpy()]
        res = {}
        for c in numeric:
            col = f"shap_{c}"
            if col not in part:
                continue
            x = vals[c].to_numpy(np.float64)
            s = part[col].to_numpy(np.float64)
            if np.ptp(x) == 0 or np.ptp(s) == 0:
                rho = 0.0
            else:
                rho = float(spearmanr(x, s).statistic)
            res[c] = {"kind": "numeric", "corr": rho, "rows": int(len(part)),
                      "direction": "higher" if rho >= min_corr else "lower" if rho <= -min_corr else "mixed"}
        for c in categorical:
            col = f"shap_{c}"
            if col not in part:
                continue
            g = pd.DataFrame({"level": vals[c].astype(str).to_numpy(), "shap": part[col].to_numpy()})
            stats = g.groupby("level")["shap"].agg(["mean", "size"])
            stats = stats[stats["size"] >= 5].sort_values("mean", ascending=False)
            means = {str(lv): float(m) for lv, m in stats["mean"].items()}
            res[c] = {"kind": "category", "mean_shap": means, "rows": int(len(part)),
                      "towards": [lv for lv, m in means.items() if m > 0],
                      "away": [lv for lv, m in sorted(means.items(), key=lambda kv: kv[1]) if m < 0]}
        out[int(seg)] = res
    return out
