"""Trains chainfold's position model: probability that an Aave-style position is liquidated
(its health factor crosses 1) within the next 30 days, learned from real hourly price paths.

Setup (see MODEL_CARD.md for why):
- Positions: one collateral asset (each Aave V2 collateral with an hourly USD price series in
  ../shared/data/aave-v2-eth-bhemen/usd_prices) against USDC debt, opened at 00:00 UTC of every
  day, at initial health factors on a fixed grid.
- Path: with fixed balances the health factor moves with the collateral/debt price ratio R:
  HF(t) = HF(0) * R(t) / R(0). Label = min over the next 720 hours of HF(t) < 1.
- Features (computable live from the oracle prices): log HF, the ratio's 24 h and 7 d returns,
  hourly log-return volatility over 7 d and 30 d, drawdown from the 30 d high.
- Time split: positions opened in 2021 train; opened in 2022 or later (and 30 days before the
  data ends) test, which holds the May-June 2022 crash.
- Baseline: logistic regression on log HF alone ("current health factor alone").

Writes: position_model.onnx, reference.json (a batch of feature rows with onnxruntime's
probabilities, for the Rust equality test), metrics.json. Deterministic: fixed seeds, one thread.

Usage: python train.py --data-dir ../../../shared/data --out .
"""

import argparse
import csv
import gzip
import hashlib
import json
import math
import os

import numpy as np

HOURS_30D = 720
HF_GRID = [1.02, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0, 2.5, 3.0]
FEATURES = ["log_hf", "ret_24h", "ret_7d", "vol_7d", "vol_30d", "drawdown_30d", "distance_sigma_30d"]
SPLIT = 1640995200  # 2022-01-01T00:00:00Z
# Stablecoin collateral against USDC debt has no price path to speak of: left out.
STABLECOINS = {"USDC", "USDT", "DAI", "TUSD", "BUSD", "SUSD", "GUSD", "USDP", "FEI", "FRAX", "LUSD", "RAI", "UST"}


def hourly_prices(path):
    """Prices on an hourly grid (unix hour -> price), forward-filled from the last quote."""
    with gzip.open(path, "rt") as f:
        rows = [(int(r["timestamp"]) // 1000, float(r["USD_price"])) for r in csv.DictReader(f)]
    rows.sort()
    first, last = rows[0][0] // 3600 + 1, rows[-1][0] // 3600
    out = np.full(last - first + 1, np.nan)
    j = 0
    current = np.nan
    for i, hour in enumerate(range(first, last + 1)):
        while j < len(rows) and rows[j][0] <= hour * 3600:
            current = rows[j][1]
            j += 1
        out[i] = current
    return first, out


def collateral_assets(data_dir):
    """Aave V2 collateral symbols with their liquidation threshold, from tokens.csv."""
    path = os.path.join(data_dir, "aave-v2-eth-liquidations-rpi", "tokens.csv")
    assets = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            lt = float(r["reserveLiquidationThreshold"] or 0)
            if r["usageAsCollateralEnabled"] == "True" and lt > 0:
                assets[r["symbol"]] = lt / 10000
    return assets


def features_at(ratio, i):
    """The model's features for a position opened at hour index i (needs 720 h of history)."""
    window = ratio[i - HOURS_30D : i + 1]
    if np.isnan(window).any():
        return None
    logr = np.diff(np.log(window))
    return [
        ratio[i] / ratio[i - 24] - 1.0,
        ratio[i] / ratio[i - 168] - 1.0,
        float(np.std(logr[-168:], ddof=1)),
        float(np.std(logr, ddof=1)),
        ratio[i] / np.max(window) - 1.0,
    ]


def with_distance(log_hf, base):
    """Features of one position: log HF, the price features, and the distance to liquidation in
    30-day standard deviations (log HF / (hourly vol x sqrt(720))), a Merton-style distance."""
    vol_30d = base[3]
    distance = log_hf / (vol_30d * math.sqrt(HOURS_30D)) if vol_30d > 0 else 50.0
    return [log_hf] + base + [min(distance, 50.0)]


def build(data_dir):
    prices_dir = os.path.join(data_dir, "aave-v2-eth-bhemen", "usd_prices")
    usdc_first, usdc = hourly_prices(os.path.join(prices_dir, "USDC_usd.csv.gz"))
    rows, labels, opened, assets_used = [], [], [], []
    for symbol in sorted(collateral_assets(data_dir)):
        path = os.path.join(prices_dir, f"{symbol}_usd.csv.gz")
        if not os.path.exists(path) or symbol in STABLECOINS:
            continue
        first, prices = hourly_prices(path)
        start, end = max(first, usdc_first), min(first + len(prices), usdc_first + len(usdc))
        p = prices[start - first : end - first]
        d = usdc[start - usdc_first : end - usdc_first]
        ratio = p / d
        assets_used.append(symbol)
        for i in range(HOURS_30D, len(ratio) - HOURS_30D):
            hour = start + i
            if hour % 24 != 0:
                continue
            base = features_at(ratio, i)
            future = ratio[i + 1 : i + 1 + HOURS_30D]
            if base is None or np.isnan(future).any():
                continue
            worst = float(np.min(future) / ratio[i])
            for hf in HF_GRID:
                rows.append(with_distance(math.log(hf), base))
                labels.append(1 if hf * worst < 1.0 else 0)
                opened.append(hour * 3600)
    return (
        np.asarray(rows, dtype=np.float32),
        np.asarray(labels, dtype=np.int64),
        np.asarray(opened),
        assets_used,
    )


class Ratios:
    """Collateral/USDC price ratios on the hourly grid, per symbol, for validation rows."""

    def __init__(self, data_dir):
        self.dir = os.path.join(data_dir, "aave-v2-eth-bhemen", "usd_prices")
        self.usdc = hourly_prices(os.path.join(self.dir, "USDC_usd.csv.gz"))
        self.cache = {}

    def features(self, symbol, unix, hf):
        if symbol not in self.cache:
            path = os.path.join(self.dir, f"{symbol}_usd.csv.gz")
            if not os.path.exists(path):
                return None
            self.cache[symbol] = hourly_prices(path)
        (first, p), (ufirst, u) = self.cache[symbol], self.usdc
        start, end = max(first, ufirst), min(first + len(p), ufirst + len(u))
        ratio = p[start - first : end - first] / u[start - ufirst : end - ufirst]
        i = unix // 3600 - start
        if i < HOURS_30D or i >= len(ratio):
            return None
        base = features_at(ratio, i)
        return None if base is None else with_distance(math.log(hf), base)


def validation_rows(data_dir, ratios):
    """Real accounts before they became liquidatable: rows with HF >= 1 in the 30 days before
    the first row with HF < 1. Cred sample (collateral WETH, stablecoin debt) and the 10 bhemen
    bad-debt accounts (their largest collateral by USD)."""
    out = []
    cred = os.path.join(data_dir, "aave-v2-eth-hf-cred-sample", "0x01acb3804ba9c42111c6e9c127831eb486ca1ac7.csv")
    import datetime

    def unix_of(text):
        return int(datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp())

    with open(cred) as f:
        rows = [(unix_of(r["block_timestamp"]), float(r["HF"] or 0), float(r["total_debt_eth"] or 0)) for r in csv.DictReader(f)]
    out.extend(_before_first_breach("cred:0x01acb380", "WETH", rows, ratios))
    details = os.path.join(data_dir, "aave-v2-eth-bhemen", "user_details_v2")
    for name in sorted(os.listdir(details)):
        with open(os.path.join(details, name)) as f:
            recs = list(csv.DictReader(f))
        coll = [c[: -len("_collateral (in USD)")] for c in recs[0] if c.endswith("_collateral (in USD)")]
        main_asset = max(coll, key=lambda s: max(float(r[f"{s}_collateral (in USD)"] or 0) for r in recs))
        rows = [(int(r["timestamp"]), float(r["healthFactor"] or 0), float(r["totalDebt"] or 0)) for r in recs]
        out.extend(_before_first_breach("bhemen:" + name[:10], main_asset, rows, ratios))
    return out


def _before_first_breach(account, symbol, rows, ratios):
    breach = next((t for t, hf, debt in rows if debt > 0 and hf < 1.0), None)
    if breach is None:
        return []
    picked = []
    for t, hf, debt in rows:
        if debt > 0 and hf >= 1.0 and breach - 30 * 86400 <= t < breach:
            x = ratios.features(symbol, t, hf)
            if x is not None:
                picked.append((account, symbol, t, hf, x))
    return picked


# Which features the model sees (indices into FEATURES). Momentum and drawdown are left out: they
# learn the 2021 bull market and hurt on 2022 (see MODEL_CARD.md, "what did not work").
USED = [0, 3, 4, 6]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="../../../shared/data")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()

    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
    from skl2onnx import to_onnx
    import onnxruntime as ort

    os.makedirs(args.out, exist_ok=True)
    X, y, opened, assets = build(args.data_dir)
    train, test = opened < SPLIT, opened >= SPLIT
    model = GradientBoostingClassifier(
        n_estimators=200, max_depth=3, learning_rate=0.05, subsample=1.0, random_state=7
    )
    X = X[:, USED]
    model.fit(X[train], y[train])
    baseline = LogisticRegression()
    baseline.fit(X[train][:, :1], y[train])

    p_model = model.predict_proba(X[test])[:, 1]
    p_base = baseline.predict_proba(X[test][:, :1])[:, 1]
    metrics = {
        "rows": {"train": int(train.sum()), "test": int(test.sum())},
        "positive_rate": {"train": float(y[train].mean()), "test": float(y[test].mean())},
        "assets": assets,
        "model": {
            "auc": float(roc_auc_score(y[test], p_model)),
            "pr_auc": float(average_precision_score(y[test], p_model)),
            "brier": float(brier_score_loss(y[test], p_model)),
        },
        "baseline_hf_alone": {
            "auc": float(roc_auc_score(y[test], p_base)),
            "pr_auc": float(average_precision_score(y[test], p_base)),
            "brier": float(brier_score_loss(y[test], p_base)),
        },
    }

    onx = to_onnx(
        model,
        X[:1],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.producer_version = "chainfold-train"
    # skl2onnx lists the opsets in set order (string hashing varies per process): sort them so
    # the file is the same bytes on every run.
    opsets = sorted(onx.opset_import, key=lambda o: o.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(opsets)
    path = os.path.join(args.out, "position_model.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    metrics["model_sha256"] = digest

    # Reference batch: every 97th test row, with onnxruntime's probabilities.
    # One intra-op thread, as the Rust worker runs it: the tree ensemble sums in a fixed order.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    batch = X[test][::97][:256]
    probs = session.run(["probabilities"], {"X": batch})[0][:, 1]
    skl = model.predict_proba(batch)[:, 1]
    metrics["onnx_vs_sklearn_max_abs_diff"] = float(np.max(np.abs(probs - skl)))
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(
            {
                "features": [FEATURES[i] for i in USED],
                "rows": batch.tolist(),
                "probabilities": [float(p) for p in probs],
            },
            f,
        )
    # Real accounts, scored before they became liquidatable (all of them did within 30 days).
    validation = validation_rows(args.data_dir, Ratios(args.data_dir))
    if validation:
        V = np.asarray([v[4] for v in validation], dtype=np.float32)[:, USED]
        pv = session.run(["probabilities"], {"X": V})[0][:, 1]
        pb = baseline.predict_proba(V[:, :1])[:, 1]
        metrics["validation_real_accounts"] = {
            "rows": len(validation),
            "accounts": sorted({v[0] for v in validation}),
            "model_mean_probability": float(pv.mean()),
            "baseline_mean_probability": float(pb.mean()),
            "model_share_above_0_5": float((pv > 0.5).mean()),
            "baseline_share_above_0_5": float((pb > 0.5).mean()),
            "per_row": [
                {"account": v[0], "collateral": v[1], "time": v[2], "hf": v[3], "model": float(a), "baseline": float(b)}
                for v, a, b in zip(validation, pv, pb)
            ],
        }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, sort_keys=True)
    print(json.dumps(metrics, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
