"""How well does the `tiny` preset's registration align? Its CNN pretrained on known warps, on >= 2,000 synthetic pairs.

The `tiny` preset keeps the registration CNN as `diffvqa pretrain` leaves it (`registration_trainable=False`), so the
trained model's Θ is the pretrained one: this benchmark pretrains only that part (same settings and seeds as
`learning_report.py`) and scores it on the test split against the true pose, beside no registration at all. It prints
one table (mean ± sd over seeds) and writes `registration_report.json`; it asserts nothing.

    python benchmarks/registration_report.py [--n-pairs 2000] [--seeds 0 1 2] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np
import torch

from diffvqa.core import PretrainConfig, get_preset, seed_everything
from diffvqa.data import PairCache, prepare
from diffvqa.evaluate import _images_of
from diffvqa.groundtruth import load_ground_truth, true_theta
from diffvqa.pretrain import holdout_mask, pretrain_registration, training_films
from diffvqa.registration import corner_error
from diffvqa.synth import synthesize


def test_pairs(cache: PairCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    "Main and reference films [P,1,S,S] of the test split's pairs, and their true Θ [P,2,3]."
    q = cache.questions
    pairs = q[q.split == 'test'].drop_duplicates(['study_id', 'ref_id'])
    main, ref = _images_of(cache, list(zip(pairs.main_row, pairs.ref_row)))
    gt = load_ground_truth(cache)
    tt = np.stack([true_theta(gt, s, r) for s, r in zip(pairs.study_id, pairs.ref_id)])
    return main, ref, torch.tensor(tt, dtype=torch.float32)


def run_seed(cache: PairCache, seed: int, epochs: int) -> dict:
    "Pretrain the registration CNN for one seed (as `diffvqa pretrain` does) and score it on the test pairs."
    cfg = PretrainConfig(epochs_registration=epochs, seed=seed)
    seed_everything(seed)
    films = training_films(cache)
    held = holdout_mask(films, cfg.holdout, seed)
    t = time.time()
    reg, rep = pretrain_registration(cache, films, np.flatnonzero(~held), np.flatnonzero(held), get_preset('tiny').model, cfg, progress=False)
    main, ref, tt = test_pairs(cache)
    with torch.no_grad(): th = reg.predict_theta(main, ref)
    err, err0 = corner_error(th, tt, cache.size), corner_error(torch.eye(2, 3).expand(len(tt), 2, 3), tt, cache.size)
    det = torch.linalg.det(th[:, :, :2])
    return dict(seed=seed, n_pairs=len(tt), corner_error_px=float(err.mean()), none_px=float(err0.mean()),
                ratio=float(err.mean() / err0.mean()), det_min=float(det.min()), det_max=float(det.max()),
                heldout_known_warps=rep, seconds=round(time.time() - t, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-pairs', type=int, default=2000, help='synthetic image pairs')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='pretraining seeds')
    p.add_argument('--data-seed', type=int, default=1, help='seed of the synthetic data (as learning_report.py)')
    p.add_argument('--pretrain-epochs', type=int, default=12, help="learning_report.py's --pretrain-epochs (registration: 2/3 of it)")
    p.add_argument('--threads', type=int, default=1, help='torch threads')
    p.add_argument('--work', type=Path, default=None, help='folder for data and the report (default: a temporary one)')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix='diffvqa-registration-'))
    t0 = time.time()
    if not (work/'cache'/'meta.json').is_file():
        synthesize(work/'data', args.n_pairs, size=get_preset('tiny').model.image_size, seed=args.data_seed, workers=2, overwrite=True, progress=False)
        prepare(work/'data', work/'cache', size=get_preset('tiny').model.image_size, workers=2, progress=False)
    cache = PairCache(work/'cache')
    rows = [run_seed(cache, s, 2 * args.pretrain_epochs // 3) for s in args.seeds]
    ms = lambda k: f"{np.mean([r[k] for r in rows]):.2f} ± {np.std([r[k] for r in rows], ddof=1) if len(rows) > 1 else 0:.2f}"
    print(f"{args.n_pairs} pairs, {rows[0]['n_pairs']} test pairs, seeds {args.seeds}, {(time.time() - t0) / 60:.1f} min")
    print('| registration | corner error (px) | no registration (px) | ratio | det A range |\n|---|---|---|---|---|')
    print(f"| pretrained CNN (tiny) | {ms('corner_error_px')} | {ms('none_px')} | {ms('ratio')} | "
          f"{min(r['det_min'] for r in rows):.3f}–{max(r['det_max'] for r in rows):.3f} |")
    (work/'registration_report.json').write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, seeds=rows), indent=1))
    print(f'written: {work/"registration_report.json"}')


if __name__ == '__main__':
    main()
