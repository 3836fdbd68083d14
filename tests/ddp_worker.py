"Run by tests/test_train.py under torchrun: one small data-parallel run; each rank dumps what train() returned."
import json
import os
import sys

from identity_study.train import train

run_dir, out_dir = sys.argv[1], sys.argv[2]
record = train(unit="preact", depth=20, dataset="synthetic", iterations=6, eval_every=3, batch_size=16,
               train_subset=256, precision="fp32", channels_last=False, deterministic=True, progress=False,
               device="cpu", run_dir=run_dir)
rank = int(os.environ["RANK"])
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump(dict(status=record.status, metrics=record.metrics.drop(columns=["seconds", "images_per_second"])
                   .to_dict("list"), world=int(os.environ["WORLD_SIZE"])), f)
