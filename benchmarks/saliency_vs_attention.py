"""The saliency-guided variant beside the attention-consistent model: both trained the same way on one synthetic cache, one table.

Both models start from the same `diffvqa pretrain` encoders (kept in the user's cache, keyed by the films and the
settings) and train with the same schedule, seed and questions; they differ only in where the shared mask M comes
from: `tiny` (DINO prior + adaptive mask, M = λU + (1-λ)F) or `saliency-tiny` (keyword Grad-CAM, two passes at
inference). Each is evaluated on the test split with the image control (another pair's films), and
`metrics.comparison_table` prints one row per model: difference-finding F1, caption metrics of the difference
questions, the image-control F1, and M's pointing game (with chance) and AUROC against the ground-truth change masks.

It is a benchmark, not a test: it prints the table, writes `comparison.md` and `comparison.json`, asserts nothing.

    python benchmarks/saliency_vs_attention.py [--data CACHE | --n-pairs 600] [--work DIR] [--epochs-frozen 2] ...
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

import torch

from diffvqa.core import PretrainConfig
from diffvqa.data import prepare
from diffvqa.evaluate import evaluate_run
from diffvqa.metrics import comparison_table
from diffvqa.pretrain import cached_pretrain
from diffvqa.synth import synthesize
from diffvqa.train import train

MODELS = {'attention-consistent (tiny)': 'tiny', 'saliency-guided (saliency-tiny)': 'saliency-tiny'}


def pretrain_config(epochs: int, seed: int) -> PretrainConfig:
    "The demo's proportions: the encoder's epochs as given, the prior and the registration scaled with them."
    return PretrainConfig(epochs=epochs, prior_grounded_epochs=max(1, epochs // 2), epochs_prior=max(1, epochs // 5),
                          epochs_registration=max(1, 2 * epochs // 3), seed=seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', type=Path, default=None, help='a prepared 128 px cache with change masks (default: synthesise one)')
    p.add_argument('--n-pairs', type=int, default=600, help='synthetic pairs when --data is not given')
    p.add_argument('--pretrain-epochs', type=int, default=15, help='image-encoder epochs of diffvqa pretrain (the demo\'s default)')
    p.add_argument('--epochs-frozen', type=int, default=2, help='stage 1 epochs')
    p.add_argument('--epochs-unfrozen', type=int, default=2, help='stage 2 epochs')
    p.add_argument('--max-train-questions', type=int, default=None, help='training questions per epoch (a seeded sample; default all)')
    p.add_argument('--test-limit', type=int, default=None, help='test questions answered (default all)')
    p.add_argument('--seed', type=int, default=0, help='seed of pretraining and training')
    p.add_argument('--threads', type=int, default=2, help='torch threads')
    p.add_argument('--work', type=Path, default=None, help='folder for data, runs and the table (default: a temporary one)')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix='diffvqa-saliency-'))
    t0 = time.time()
    cache = args.data
    if cache is None:
        cache = work/'cache'
        if not (cache/'meta.json').is_file():
            synthesize(work/'data', args.n_pairs, size=128, seed=1, workers=2, overwrite=True, progress=False)
            prepare(work/'data', cache, size=128, workers=2, progress=False)
    pre, reused = cached_pretrain(cache, 'tiny', pretrain_config(args.pretrain_epochs, args.seed), progress=False)
    seconds = dict(data_and_pretrain=round(time.time() - t0, 1), pretrain_reused=reused)
    results = {}
    for name, preset in MODELS.items():
        t = time.time()
        run = work/f'run-{preset}'
        train(cache, run, preset=preset, pretrained=pre, seed=args.seed, overwrite=True, progress=False, verbose=False,
              epochs_frozen=args.epochs_frozen, epochs_unfrozen=args.epochs_unfrozen, max_train_questions=args.max_train_questions)
        t_train = time.time() - t
        ev = evaluate_run(run, cache, split='test', out=work/f'eval-{preset}', limit=args.test_limit, question_only=False, progress=False)
        results[name] = ev.metrics
        seconds[preset] = dict(train=round(t_train, 1), evaluate=round(time.time() - t - t_train, 1))
        print(f'{name}: {json.dumps(seconds[preset])}', flush=True)
    md = comparison_table(results)
    (work/'comparison.md').write_text(md + '\n')
    (work/'comparison.json').write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, seconds=seconds,
                                                        metrics=results), indent=1, default=float))
    print(f'\ncache {cache}, seed {args.seed}, {(time.time() - t0) / 60:.1f} min on {args.threads} threads; work folder {work}\n')
    print(md)


if __name__ == '__main__':
    main()
