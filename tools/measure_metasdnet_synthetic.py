"""Synthetic-set AUC / precision of a meta-trained narrow MetaSDNet, with or without DropGrad (CPU).

The tracker is the test-only ``metasdnet-e2e`` of tests/tracking/test_eval_trackers.py (tiny VGG-M,
random conv, fc4-6 adapted; balanced 16 + 16 support/query boxes; 64 candidates, no bbreg,
2-iteration online updates). track-train (the library's train()) on 40 synthetic sequences
(seed 1, 96x128, 60 frames; 4 held out for validation), 3 epochs x 20 steps x 4 tasks, Adam 1e-3;
then OPE (part 1's scorer) on 4 held-out sequences of seed 0 (first 25 frames of 60), against the
untrained initialisation and the static baseline.

Usage (repo root): OMP_NUM_THREADS=1 .venv/bin/python tools/measure_metasdnet_synthetic.py \
    --out runs/m --seed 0 --dropgrad gaussian      (or --dropgrad none)
"""
import argparse
import json
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
from dropgrad_tracking.data import Sequence, SyntheticConfig, ensure_synthetic
from dropgrad_tracking.evaluation import evaluate_tracker
from dropgrad_tracking.trackers import TrackerOptions, make_tracker, run_tracker
from dropgrad_tracking.trackers.metasdnet import (
    MetaSDNetDef,
    MetaSDNetOptions,
    register_metasdnet,
)
from dropgrad_tracking.training import TrackTrainConfig, train

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--dropgrad", default="gaussian", choices=("none", "binary", "gaussian"))
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--steps", type=int, default=20)
a = p.parse_args()
if a.epochs < 1 or a.steps < 1:
    p.error("--epochs and --steps must be >= 1")
out = Path(a.out)
NAME = "metasdnet-e2e"
opts = MetaSDNetOptions(n_candidates=64, n_pos_init=16, n_neg_init=16, n_bbreg=0, n_pos_update=8, n_neg_update=24,
                        update_iters=2, batch_pos=8, batch_neg=24, batch_neg_cand=48)
register_metasdnet(MetaSDNetDef(NAME, tiny=True, adapt_conv=False, n_support_pos=16, n_support_neg=16,
                                n_query_pos=16, n_query_neg=16, options=opts))
t0 = time.time()
cfg = TrackTrainConfig(tracker=NAME, synthetic_sequences=40, synthetic_frames=60, synthetic_height=96, synthetic_width=128,
                       val_sequences=4, val_tasks=2, epochs=a.epochs, steps_per_epoch=a.steps, tasks_per_batch=4,
                       outer_lr=1e-3, seed=a.seed, progress=False, dropgrad=a.dropgrad)
res = train(cfg, out / "run")
t1 = time.time()
full = ensure_synthetic(out / "eval", SyntheticConfig(4, 60, 96, 128, seed=0))
seqs = {n: Sequence(n, s.frames[:25], s.boxes[:25], s.attributes) for n, s in full.items()}
scores = {}
for label, options, name in [("trained", TrackerOptions(checkpoint=out / "run"), NAME),
                             ("untrained", TrackerOptions(), NAME), ("static", TrackerOptions(), "static")]:
    results = run_tracker(make_tracker(name, options), seqs, out / label, dataset="Synthetic", progress=False)
    ev = evaluate_tracker(label, results, seqs)
    scores[label] = {"auc": round(ev.overall.success_auc, 4), "p20": round(ev.overall.precision_20, 4)}
t2 = time.time()
print(json.dumps({"seed": a.seed, "dropgrad": res["dropgrad"], "train_wall_s": round(t1 - t0, 1),
                  "eval_wall_s": round(t2 - t1, 1), "val_loss": round(res["val_loss"], 4),
                  "val_loss_unadapted": round(res["val_loss_unadapted"], 4), **scores}))
