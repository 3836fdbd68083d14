"""Run by tests/test_gpu_path.py under torchrun, on the CPU with gloo. Modes:

bn OUT       every rank holds BN running statistics of its own (rank 1's far off); `Run.evaluate` must report the
             error of rank 0's model (the one a checkpoint keeps), which rank 0 also computes alone on the whole set
train RUNS   a small data-parallel run stopped early (stop_after), to be resumed by a different number of processes
batch OUT    the ranks' training batches gathered back into one global batch, which must be the one-process batch bit
             for bit (augmentation included), and a draw after each rank's seeding, which must differ between ranks
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from identity_study.data import make_source
from identity_study.models import build
from identity_study.params import resolve
from identity_study.train import Run, evaluate, seed_rank, train

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


def gathered(t: torch.Tensor) -> list:
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return parts


if mode == "batch":
    steps = range(3)
    shares = [batch for _, batch in zip(steps, make_source(p, "cpu", rank, world).batches(0))]
    seed_rank(p["seed"], rank, world)
    draws = gathered(torch.rand(8))
    # rank r holds the global batch's images r, r + world, ...: interleave the shares back into one batch
    rebuilt = [(torch.stack(gathered(x), 1).flatten(0, 1), torch.stack(gathered(y), 1).flatten()) for x, y in shares]
    if rank == 0:
        whole = [batch for _, batch in zip(steps, make_source(p, "cpu", 0, 1).batches(0))]
        (out / "batch.json").write_text(json.dumps(dict(
            share=list(shares[0][0].shape), whole=list(whole[0][0].shape),
            images_equal=[torch.equal(a[0], b[0]) for a, b in zip(rebuilt, whole)],
            labels_equal=[torch.equal(a[1], b[1]) for a, b in zip(rebuilt, whole)],
            draws_equal=torch.equal(draws[0], draws[1]))))
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(0)

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
