"""Does the trained model read the films? The `tiny` preset on >= 2,000 synthetic pairs, three seeds, one table.

For each seed: `diffvqa pretrain` on the training films (kept in the user's cache, keyed by the films and settings),
`diffvqa train` from those encoders, `diffvqa evaluate` on the test split with both controls (another pair's films,
blank films). The table gives, as mean ± standard deviation over the seeds (and each seed's value):

* difference-finding F1 with the pair's own films, with another pair's films, with blank films;
* exact-match accuracy of the closed question types (own / another pair's films);
* the shared mask M (and its parts U, F) against the ground-truth change masks: pointing game (and chance), AUROC,
  with M's two controls (M against another pair's change mask; the mean training change mask, which reads no film);
* registration against the true pose: mean corner error, the same with no registration, their ratio, det A range.

It is a benchmark, not a test: it prints and writes `learning_report.json`, and asserts nothing. On 2 CPU cores the
defaults take about an hour; every size is a flag.

    python benchmarks/learning_report.py [--n-pairs 2000] [--seeds 0 1 2] [--mixed-precision no|bf16] [--work DIR] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

import numpy as np
import torch

from diffvqa.core import PretrainConfig, quiet_import_warnings

quiet_import_warnings()  # before the imports that pull in timm and fastai

from diffvqa.data import prepare
from diffvqa.metrics import MASK_CONTROLS, learning_summary
from diffvqa.evaluate import evaluate_run
from diffvqa.pretrain import PRECISIONS, cached_pretrain
from diffvqa.synth import synthesize
from diffvqa.templates import QUESTION_TYPES
from diffvqa.train import train


def run_seed(cache: Path, work: Path, seed: int, args: argparse.Namespace) -> dict:
    "Pretrain, train and evaluate one seed; return the evaluation's learning summary and timings."
    t0 = time.time()
    pre, reused = cached_pretrain(cache, 'tiny', PretrainConfig(epochs=args.pretrain_epochs, prior_grounded_epochs=args.pretrain_epochs // 2,
                                                              epochs_prior=max(1, args.pretrain_epochs // 5),
                                                              epochs_registration=2 * args.pretrain_epochs // 3, seed=seed,
                                                              mixed_precision=args.mixed_precision), progress=False)
    t1 = time.time()
    run = work/f'run-seed{seed}'
    train(cache, run, preset='tiny', pretrained=pre, seed=seed, overwrite=True, progress=False, verbose=False,
          epochs_frozen=args.epochs_frozen, epochs_unfrozen=args.epochs_unfrozen, question_types=QUESTION_TYPES,
          max_train_questions=args.max_train_questions)
    t2 = time.time()
    ev = evaluate_run(run, cache, split='test', question_types=QUESTION_TYPES, out=work/f'eval-seed{seed}', progress=False)
    s = learning_summary(ev.metrics)
    s['cider_difference'] = ev.metrics['headline'].get('CIDEr')
    s['seconds'] = dict(pretrain=round(t1 - t0, 1), pretrain_reused=reused, train=round(t2 - t1, 1), evaluate=round(time.time() - t2, 1))
    s['pretrain_precision'] = json.loads((pre/'pretrained.json').read_text()).get('precision', 'float32')
    return s


def _cells(vals: list[float]) -> str:
    v = np.array(vals, dtype=float)
    each = ' / '.join(f'{x:.3f}' for x in v)
    return f'{np.nanmean(v):.3f} ± {np.nanstd(v):.3f} ({each})'


def table(results: list[dict]) -> str:
    "Markdown: one row per measure, mean ± std over seeds and each seed's value."
    rows = [('difference finding F1, own films', [r['difference_f1']['own'] for r in results]),
            ("difference finding F1, another pair's films", [r['difference_f1']['other'] for r in results]),
            ('difference finding F1, blank films', [r['difference_f1']['blank'] for r in results]),
            ('difference CIDEr, own films', [r['cider_difference'] for r in results])]
    if 'difference_f1_decoder' in results[0]:  # tiny writes difference answers from the change readout: the decoder's own beside them
        rows[3:3] = [("difference finding F1, the decoder's own answers, own films", [r['difference_f1_decoder']['own'] for r in results]),
                     ("difference finding F1, the decoder's own answers, another pair's films", [r['difference_f1_decoder']['other'] for r in results])]
    for t in results[0]['closed_accuracy']:
        rows += [(f'{t} accuracy, own films', [r['closed_accuracy'][t]['own'] for r in results]),
                 (f"{t} accuracy, another pair's films", [r['closed_accuracy'][t]['other'] for r in results])]
    for p in results[0].get('mask', {}):
        name = f'mask control, {MASK_CONTROLS[p]}' if p in MASK_CONTROLS else f'mask {p}'
        rows += [(f'{name}: pointing game', [r['mask'][p]['pointing_game'] for r in results]),
                 (f'{name}: pointing chance', [r['mask'][p]['chance_pointing_game'] for r in results]),
                 (f'{name}: AUROC', [r['mask'][p]['auroc'] for r in results])]
    if 'registration' in results[0]:
        for k, name in (('corner_error_px', 'registration corner error (px)'), ('corner_error_unregistered_px', 'no registration (px)'),
                        ('ratio', 'registration / none'), ('det_min', 'det A min'), ('det_max', 'det A max')):
            rows.append((name, [r['registration'][k] for r in results]))
    return '\n'.join(['| measure | mean ± std (each seed) |', '|---|---|'] + [f'| {n} | {_cells(v)} |' for n, v in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-pairs', type=int, default=2000, help='synthetic image pairs (at least 2,000 for the issue\'s benchmark)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='seeds of pretraining and training')
    p.add_argument('--data-seed', type=int, default=1, help='seed of the synthetic data (one data set for all seeds)')
    p.add_argument('--pretrain-epochs', type=int, default=12, help='image-encoder epochs of diffvqa pretrain (others scale with it)')
    p.add_argument('--epochs-frozen', type=int, default=4, help='stage 1 epochs')
    p.add_argument('--epochs-unfrozen', type=int, default=2, help='stage 2 epochs')
    p.add_argument('--max-train-questions', type=int, default=8000, help='training questions per epoch (a seeded sample)')
    p.add_argument('--mixed-precision', choices=PRECISIONS, default=PretrainConfig().mixed_precision, help="pretraining's number format (PretrainConfig.mixed_precision; 'bf16' pays on CPUs with AMX / AVX512-BF16)")
    p.add_argument('--threads', type=int, default=2, help='torch threads')
    p.add_argument('--work', type=Path, default=None, help='folder for data, runs and the report (default: a temporary one)')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix='diffvqa-learning-'))
    t0 = time.time()
    if not (work/'cache'/'meta.json').is_file():
        synthesize(work/'data', args.n_pairs, size=128, seed=args.data_seed, workers=2, overwrite=True, progress=False)
        prepare(work/'data', work/'cache', size=128, workers=2, progress=False)
    t_data = time.time() - t0
    results = []
    for seed in args.seeds:
        results.append(run_seed(work/'cache', work, seed, args))
        print(f'seed {seed}: ' + json.dumps({k: results[-1][k] for k in ('difference_f1', 'seconds', 'pretrain_precision')}), flush=True)
    out = dict(args={k: str(v) for k, v in vars(args).items()}, seconds_data=round(t_data, 1),
               seconds_total=round(time.time() - t0, 1), results=results)
    (work/'learning_report.json').write_text(json.dumps(out, indent=1, default=float))
    print(f'\n{args.n_pairs} synthetic pairs, seeds {args.seeds}, {out["seconds_total"] / 60:.1f} min on {args.threads} threads '
          f'(data {t_data:.0f} s); work folder {work}\n')
    print(table(results))


if __name__ == '__main__':
    main()
