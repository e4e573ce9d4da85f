"""Evidence for the training recipe (issue 6): the `tiny` preset trained on the synthetic benchmark on this CPU for
about ten minutes, against the most-frequent-answer-per-question-type baseline, on the same validation questions.

Prints validation CIDEr (and BLEU-1, METEOR, ROUGE-L) of the best epoch and of the baseline, the epoch times and each
loss term's trajectory. It prints and never asserts.

    python benchmarks/train_report.py [--minutes 10] [--n-pairs 400] [--threads 2] [--work DIR]
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

import torch

from diffvqa.core import get_preset, seed_everything
from diffvqa.data import PairCache, get_dataloaders, get_tokenizer, prepare
from diffvqa.evaluate import caption_metrics, fit_majority_baseline, majority_baseline_predictions
from diffvqa.losses import LOSS_TERMS, DiffVQALoss
from diffvqa.model import DiffVQA
from diffvqa.train import train, validation_subset


def seconds_per_question(cache: Path, cfg, steps: int = 3) -> float:
    "Wall time of one training step per question (forward + backward + AdamW), measured on a few batches."
    tok = get_tokenizer(cache, cfg.model)
    dls = get_dataloaders(cache, tok, bs=cfg.train.bs, bs_valid=cfg.train.bs_valid, question_types=cfg.train.question_types,
                          max_question_len=cfg.model.max_question_len, max_answer_len=cfg.model.max_answer_len, device='cpu')
    seed_everything(0)
    model = DiffVQA(cfg.model, tok)
    model.freeze_image_encoder(True)
    loss = DiffVQALoss(cfg.loss, pad_id=tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    it = iter(dls.train)
    times = []
    for i in range(steps + 1):
        b = next(it)
        t0 = time.perf_counter()
        opt.zero_grad(); loss(model(*b[:6]), b[6]).backward(); opt.step()
        if i: times.append((time.perf_counter() - t0) / len(b[6]))
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--minutes', type=float, default=10.0, help='training budget (the number of questions is fitted to it)')
    p.add_argument('--n-pairs', type=int, default=400, help='synthetic image pairs to generate')
    p.add_argument('--threads', type=int, default=2, help='torch threads')
    p.add_argument('--work', type=Path, default=None, help='folder for the data and the run (default: a temporary one)')
    p.add_argument('--seed', type=int, default=0, help='seed of the synthetic data')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix='diffvqa-train-report-'))
    cfg = get_preset('tiny')
    size = cfg.model.image_size
    print(f'work folder: {work}; torch threads: {torch.get_num_threads()}; preset tiny at {size}px')

    t0 = time.time()
    if not (work/'synth'/'mimic_pair_questions.csv').is_file():
        from diffvqa.synth import synthesize
        synthesize(work/'synth', n_pairs=args.n_pairs, size=size, seed=args.seed, workers=1, progress=False)
    t_synth = time.time() - t0
    t0 = time.time()
    if not (work/'cache'/'meta.json').is_file(): prepare(work/'synth', work/'cache', size=size, progress=False)
    cache = PairCache(work/'cache')
    print(f'synthetic data: {args.n_pairs} pairs in {t_synth:.0f}s, cache in {time.time() - t0:.0f}s; splits {cache.meta["splits"]}')
    qt = list(cfg.train.question_types)
    n_train = len(cache.select('train', qt))
    n_val = len(cache.select('val', qt))

    # fit the number of training questions to the budget: 4 epochs of training plus about 25% for validation
    spq = seconds_per_question(cache.path, cfg)
    epochs = cfg.train.epochs_frozen + cfg.train.epochs_unfrozen
    fit = int(0.75 * args.minutes * 60 / (epochs * spq))
    n_q = max(cfg.train.bs * 2, min(n_train, fit))
    print(f'one training step costs {spq * 1000:.0f} ms per question; training on {n_q} of {n_train} {"/".join(qt)} '
          f'questions for {cfg.train.epochs_frozen} + {cfg.train.epochs_unfrozen} epochs (batch {cfg.train.bs}); '
          f'{min(n_val, cfg.train.val_subset)} of {n_val} validation questions answered per epoch')

    run = work/'run'
    t0 = time.time()
    res = train(cache.path, run, preset='tiny', max_train_questions=n_q if n_q < n_train else None,
                overwrite=True, progress=False, verbose=True)
    wall = time.time() - t0

    # the baseline on the same validation questions
    from diffvqa.tokenizer import load_tokenizer
    sub = validation_subset(cache.path, load_tokenizer(run/'tokenizer'), cfg)
    q = sub.dataset.q.iloc[list(sub.indices)]
    base = fit_majority_baseline(cache.select('train', qt).assign(split='train'))
    base_pred = majority_baseline_predictions(base, q)
    bm = caption_metrics(base_pred, [a.strip() for a in q.answer])

    h = res.history
    best = next(r for r in h if r['epoch'] == res.best_epoch) if res.best_epoch else None
    print(f'\ntraining wall time {wall / 60:.1f} min for {res.epochs_done} epochs')
    print('\nvalidation subset (same questions for both):')
    print(f'{"":38s} {"CIDEr":>7s} {"BLEU-1":>7s} {"METEOR":>7s} {"ROUGE-L":>7s}')
    if best:
        print(f'{"tiny model, best epoch " + str(res.best_epoch):38s} {best["cider"]:7.3f} {best["bleu1"]:7.3f} {best["meteor"]:7.3f} {best["rouge_l"]:7.3f}')
    print(f'{"most frequent answer per question type":38s} {bm["CIDEr"]:7.3f} {bm["BLEU-1"]:7.3f} {bm["METEOR"]:7.3f} {bm["ROUGE-L"]:7.3f}')
    if best and bm['CIDEr'] > 0: print(f'CIDEr ratio model / baseline: {best["cider"] / bm["CIDEr"]:.2f}')
    print(f'baseline answers: {base}')

    print('\nper epoch:')
    print(f'{"epoch":>5s} {"stage":>5s} {"lambda":>7s} {"time s":>7s} {"train":>8s} {"valid":>8s} {"CIDEr":>7s}')
    for r in h:
        print(f'{r["epoch"]:5d} {r["stage"]:5d} {r["lambda"]:7.3f} {r["epoch_time_s"]:7.1f} {r["train_loss"]:8.4f} {r["valid_loss"]:8.4f} {r["cider"]:7.3f}')
    print('\nloss terms per epoch (train mean / valid mean, unweighted):')
    for t in LOSS_TERMS:
        traj = '  '.join(f'{r[f"train_{t}"]:.4g}/{r[f"valid_{t}"]:.4g}' for r in h)
        print(f'{t:>10s}: {traj}')
    if res.best_dir:
        from diffvqa.data import collate_pairs
        model = DiffVQA.from_pretrained(res.best_dir)
        b = collate_pairs([sub[i] for i in range(min(4, len(sub)))], model.pad_id)
        g = model.generate(b.main, b.ref, b.question_ids, b.question_mask)
        print('\nbest model on the first validation questions:')
        for ref, pred in zip(b.answer, g.texts): print(f'  reference: {ref.strip()}\n  generated: {pred}')
    if res.best_dir:
        # does the model use the images? answer the validation questions again with another pair's films
        from diffvqa.evaluate import evaluate_run
        ev = evaluate_run(run, cache.path, split='val', question_types=qt, out=work/'eval-val', image_control=True, progress=False)
        own, other = ev.metrics['overall'], ev.metrics['image_control']['overall']
        print(f'\nimage control on all {len(ev.predictions)} validation questions: CIDEr {own["CIDEr"]:.3f} with their own images, '
              f'{other["CIDEr"]:.3f} with another pair\'s images '
              f'({(ev.predictions.prediction != ev.predictions.prediction_other_images).mean():.1%} of answers change)')
    print(f'\nrun folder: {run}')


if __name__ == '__main__':
    main()
