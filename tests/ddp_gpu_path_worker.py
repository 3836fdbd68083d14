"""Run by tests/test_gpu_path.py under torchrun, on the CPU with gloo. Modes:

bn OUT       every rank holds BN running statistics of its own (rank 1's far off); `Run.evaluate` must report the
             error of rank 0's model (the one a checkpoint keeps), which rank 0 also computes alone on the whole set
train RUNS   a small data-parallel run stopped early (stop_after), to be resumed by a different number of processes
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from identity_study.data import make_source
from identity_study.models import build
from identity_study.params import resolve
from identity_study.train import Run, evaluate, train

mode, out = sys.argv[1], Path(sys.argv[2])
SMALL = dict(unit="preact", depth=20, dataset="synthetic", batch_size=16, train_subset=256, eval_subset=None,
             final_eval_subset=None, progress=False, device="cpu", precision="fp32", channels_last=False,
             deterministic=True, threads=1)

if mode == "train":
    record = train(**SMALL, iterations=12, eval_every=4, run_dir=str(out), stop_after=6)
    assert not dist.is_initialized(), "train() left its process group behind"
    sys.exit(0)

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
p, spec = resolve(**SMALL, iterations=4, run_dir=str(out))
torch.manual_seed(0)
model = build(spec).eval()
bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
for bn in bns:              # statistics as after training, identical on every rank so far
    bn.running_mean.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
if rank == 1:               # rank 1's own statistics, as its shard of the last batches would leave them
    for bn in bns:
        bn.running_mean.add_(3.0)
        bn.running_var.mul_(0.05)
saved = {k: v.clone() for k, v in model.state_dict().items()} if rank == 0 else None

source = make_source(p, "cpu", rank, world)
own = evaluate(model, source.eval_batches(True)[0], lambda: torch.autocast("cpu", enabled=False), "cpu", world)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
run = Run(p, model, optimizer, source, out, "cpu", rank, world, log=lambda *a: None)
reported = run.evaluate(final=True)

result = dict(rank=rank, reported=reported, without_sync=own)
if rank == 0:               # the saved model (rank 0's weights and buffers), alone, on the whole evaluation set
    alone = build(spec)
    alone.load_state_dict(saved)
    whole = make_source(p, "cpu", 0, 1)
    result["saved_model"] = evaluate(alone, whole.eval_batches(True)[0],
                                     lambda: torch.autocast("cpu", enabled=False), "cpu", 1)
(out / f"bn{rank}.json").write_text(json.dumps(result))
dist.barrier()              # neither rank closes its connections while the other may still use them
dist.destroy_process_group()
