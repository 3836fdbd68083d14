"""Run by tests/test_code_equivalence.py with one version of identity_study first on the path: trains the small
configurations it is given (in one process, as a campaign lane trains) and writes what each computed, exactly."""
import hashlib
import json
import sys
from pathlib import Path

import identity_study
from identity_study.records import CHECKPOINT, code_fingerprint, read_checkpoint
from identity_study.train import train

out, run_dir, configurations = Path(sys.argv[1]), sys.argv[2], json.loads(Path(sys.argv[3]).read_text())


def exact(values) -> list:
    return [float(v).hex() for v in values]     # hex keeps every bit; NaN compares as the string 'nan'


result = dict(package=str(Path(identity_study.__file__).resolve().parent), code=code_fingerprint(), runs={})
for name, params in configurations.items():
    cut = params.pop("cut_at", None)
    if cut:      # stopped (resumably) and resumed by a second call, as a lane cut at a session's end is
        train(**params, run_dir=run_dir, stop_after=cut)
    record = train(**params, run_dir=run_dir)
    weights = read_checkpoint(record.path / CHECKPOINT)["model"]
    digest = hashlib.sha256()
    for key, tensor in weights.items():
        digest.update(key.encode() + tensor.cpu().contiguous().numpy().tobytes())
    metrics = record.metrics.drop(columns=["seconds", "images_per_second"], errors="ignore")
    result["runs"][name] = dict(run_id=record.path.name, status=record.status, weights=digest.hexdigest(),
                                summary=exact([record.summary["final_test_error"], record.summary["final_train_loss"]]),
                                metrics={c: exact(metrics[c]) for c in metrics.columns})
out.write_text(json.dumps(result, indent=1))
