"""Trains chainfold's swap anomaly model: an IsolationForest over features of each recorded swap
(`dex-swaps-mev-inspect/swaps.csv`, 10,000 real mainnet swaps), unsupervised.

Features, computed causally in replay order (block, transaction position, trace address), the
same way `chainfold risk` computes them on the stream (scoring/src/anomaly.rs):
- size: log10(amount_in / median of the previous (at most 100) amount_in of the same pool and
  input token); 0 with fewer than 3 previous swaps;
- legs: swaps in the same transaction (multi-hop trades, arbitrage, sandwiches);
- pools: distinct pools the transaction touched;
- position: transaction position / (highest position in the block + 1) (front-runs sit on top).

Writes anomaly_model.onnx, reference.json (feature rows with onnxruntime's scores and labels,
for the Rust equality test) and metrics.json (share flagged, each feature's median and MAD for
the "top contributing features" of an alert). Deterministic: fixed seed, one thread.

Usage: python anomaly.py --data-dir ../../../shared/data --out ../models/pool-anomaly-v1
"""

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import os

import numpy as np

FEATURES = ["size", "legs", "pools", "position"]
HISTORY = 100


def read_swaps(data_dir):
    base = os.path.join(data_dir, "dex-swaps-mev-inspect", "swaps.csv")
    if os.path.exists(base):
        text = open(base).read()
    else:
        text = gzip.open(base + ".gz", "rt").read()
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        if r["error"]:
            continue
        trace = [int(x) for x in r["trace_address"].strip("[]").split(",") if x.strip()]
        rows.append(
            (
                int(float(r["block_number"])),
                int(float(r["transaction_position"])),
                trace,
                r["transaction_hash"],
                r["contract_address"].lower(),
                r["token_in_address"].lower(),
                float(r["token_in_amount"]),
            )
        )
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0


def features(rows):
    legs, pools, top = {}, {}, {}
    for block, pos, _, tx, pool, _, _ in rows:
        legs[tx] = legs.get(tx, 0) + 1
        pools.setdefault(tx, set()).add(pool)
        top[block] = max(top.get(block, 0), pos)
    seen = {}
    out = []
    for block, pos, _, tx, pool, token, amount in rows:
        previous = seen.setdefault((pool, token), [])
        if len(previous) >= 3 and amount > 0:
            m = median(previous)
            size = math.log10(amount / m) if m > 0 else 0.0
        else:
            size = 0.0
        previous.append(amount)
        if len(previous) > HISTORY:
            previous.pop(0)
        out.append([size, float(legs[tx]), float(len(pools[tx])), pos / (top[block] + 1.0)])
    return np.asarray(out, dtype=np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="../../../shared/data")
    parser.add_argument("--out", default="../models/pool-anomaly-v1")
    args = parser.parse_args()

    from sklearn.ensemble import IsolationForest
    from skl2onnx import to_onnx
    import onnxruntime as ort

    os.makedirs(args.out, exist_ok=True)
    X = features(read_swaps(args.data_dir))
    model = IsolationForest(n_estimators=50, max_samples=256, contamination=0.01, random_state=0)
    model.fit(X)
    onx = to_onnx(model, X[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    onx.producer_version = "chainfold-train"
    opsets = sorted(onx.opset_import, key=lambda o: o.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(opsets)
    path = os.path.join(args.out, "anomaly_model.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    labels, scores = session.run(names, {"X": X})
    scores = scores.reshape(-1)
    batch = np.concatenate([X[::53][:128], X[labels.reshape(-1) == -1][:32]])
    ref_labels, ref_scores = session.run(names, {"X": batch})
    med = np.median(X, axis=0)
    mad = np.median(np.abs(X - med), axis=0)
    metrics = {
        "rows": int(len(X)),
        "features": FEATURES,
        "outputs": names,
        "flagged": int((labels.reshape(-1) == -1).sum()),
        "flagged_share": float((labels.reshape(-1) == -1).mean()),
        "sklearn_vs_onnx_max_abs_diff": float(
            np.max(np.abs(model.decision_function(X) - scores))
        ),
        "feature_median": [float(v) for v in med],
        "feature_mad": [float(v) for v in mad],
        "model_sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
    }
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(
            {
                "features": FEATURES,
                "rows": batch.tolist(),
                "labels": [int(v) for v in ref_labels.reshape(-1)],
                "scores": [float(v) for v in ref_scores.reshape(-1)],
            },
            f,
        )
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, sort_keys=True)
    print(json.dumps(metrics, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
