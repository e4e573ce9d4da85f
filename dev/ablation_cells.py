#%% export
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from diffvqa.core import (DiffVQAError, ExperimentConfig, add_config_args, apply_overrides, atomic_write, config_overrides,
                          get_preset, git_commit, package_versions)
from diffvqa.templates import CLOSED_ANSWERS, QUESTION_TYPES, normalize_answer

#%% export
VARIANTS: dict[str, dict[str, Any]] = {
    'full': {},                                                     # the method as the tiny preset trains it
    'no mask': {'model.mask_source': 'none'},                       # M ≡ 1: both films enter φ unmasked
    'prior only': {'train.lambda_start': 1.0, 'train.lambda_end': 1.0},    # λ ≡ 1: M = U, the DINO prior alone
    'adaptive only': {'train.lambda_start': 0.0, 'train.lambda_end': 0.0}, # λ ≡ 0: M = F, the learned mask alone
    'no registration': {'model.registration': False},               # Θ ≡ I: the main film is not aligned
    'no auxiliary losses': {'loss.alpha_mask': 0.0, 'loss.alpha_pred': 0.0, 'loss.alpha_gram': 0.0, 'loss.alpha_koleo': 0.0},
    'no stage-1 freezing': {'epochs_frozen': 0},                    # φ trains from the first epoch (same total epochs)
    'no pretraining': {'pretrained': False},                        # φ, prior and registration start from random weights
    'question only': {'model.blank_films': True},                   # films zeroed before any part: the question alone
}
BASELINE: str = 'most frequent answer'  # not trained: the most frequent training answer per question type

#%% export
@dataclass
class AblationConfig:
    "Every setting of the ablation study; the defaults are the full study (about 75 min on 2 CPU cores), `quick` the CI check."
    out: str = 'ablation_out'            # work folder: data, cache, runs, evaluations, ablation.md/json/png
    n_pairs: int = 2000                  # synthetic (reference, main) pairs
    image_size: int = 128                # film side in pixels (128: the tiny preset; smaller shrinks its encoders)
    data_seed: int = 1                   # seed of the synthetic data (one data set for every run)
    seeds: tuple[int, ...] = (0, 1, 2)   # training (and pretraining) seeds
    variants: tuple[str, ...] = (*VARIANTS, BASELINE)  # rows of the table (names of VARIANTS, and the baseline)
    epochs: int = 4                      # training epochs in all (both stages)
    epochs_frozen: int = 2               # stage-1 epochs among them (φ frozen)
    max_train_questions: int | None = 768  # training questions per epoch (a seeded sample; None, or 0 on the command line: all)
    val_subset: int = 32                 # validation questions answered for CIDEr model selection each epoch
    pretrain_epochs: int = 12            # image-encoder epochs of `diffvqa pretrain` (prior and registration in proportion)
    test_limit: int | None = None        # test questions answered (None: all)
    bootstrap: int = 2000                # paired bootstrap resamples of the test pairs
    threads: int = 2                     # torch threads
    workers: int = 2                     # synth / prepare processes
    quick: bool = False                  # the CI check: QUICK's sizes for every setting left at its default

QUICK: dict[str, Any] = dict(n_pairs=40, image_size=64, seeds=(0, 1), epochs=2, epochs_frozen=1, max_train_questions=16,
                             val_subset=2, pretrain_epochs=1, bootstrap=200)

def resolve_config(cfg: AblationConfig, # as given (flags or notebook parameters)
                  ) -> AblationConfig:
    "The settings a study runs with: QUICK's sizes where `quick` and a field is at its default; bad values are one-line errors."
    d = AblationConfig()
    if cfg.quick: cfg = replace(cfg, **{k: v for k, v in QUICK.items() if getattr(cfg, k) == getattr(d, k)})
    cfg = replace(cfg, seeds=tuple(int(s) for s in cfg.seeds), variants=tuple(cfg.variants))
    bad = [v for v in cfg.variants if v not in VARIANTS and v != BASELINE]
    if bad: raise DiffVQAError(f"--variants: unknown {bad} (choose from {', '.join(map(repr, [*VARIANTS, BASELINE]))})")
    if 'full' not in cfg.variants: raise DiffVQAError("--variants: the study compares with 'full'; include it")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds): raise DiffVQAError(f'--seeds: give distinct seeds, got {cfg.seeds}')
    if not 0 <= cfg.epochs_frozen <= cfg.epochs or cfg.epochs < 1:
        raise DiffVQAError(f'--epochs-frozen {cfg.epochs_frozen} / --epochs {cfg.epochs}: need 0 <= frozen <= epochs and epochs >= 1')
    if cfg.image_size % 32 or cfg.image_size < 32: raise DiffVQAError(f'--image-size: a multiple of 32, at least 32, not {cfg.image_size}')
    for k in ('n_pairs', 'bootstrap', 'threads', 'workers', 'val_subset'):
        if getattr(cfg, k) < 1: raise DiffVQAError(f"--{k.replace('_', '-')}: must be >= 1, not {getattr(cfg, k)}")
    if cfg.n_pairs < 12: raise DiffVQAError(f'--n-pairs: at least 12 pairs fill three splits, not {cfg.n_pairs}')
    return cfg

#%% export
def base_config(image_size: int = 128, # film side; the tiny preset's 128 or smaller
               ) -> ExperimentConfig:
    "The tiny preset, its encoders shrunk to `image_size` as `testing.small_config` does (training settings untouched)."
    cfg = get_preset('tiny')
    if image_size != cfg.model.image_size:
        from diffvqa.testing import small_config
        cfg.model = small_config(image_size).model
    return cfg

def variant_config(name: str, # a key of VARIANTS
                   cfg: AblationConfig, # the study's settings
                   seed: int, # the run's seed
                  ) -> tuple[ExperimentConfig, bool]:
    "The ExperimentConfig one variant trains with, and whether it starts from pretrained encoders."
    if name not in VARIANTS: raise DiffVQAError(f'variant: unknown {name!r}')
    exp, run = base_config(cfg.image_size), dict(epochs_frozen=cfg.epochs_frozen, pretrained=True)
    for key, value in VARIANTS[name].items():
        if '.' in key:
            section, field_name = key.split('.', 1)
            apply_overrides(getattr(exp, section), {field_name: value})
        elif key in run: run[key] = value
        else: raise DiffVQAError(f'VARIANTS[{name!r}]: unknown setting {key!r}')
    exp.train.epochs_frozen, exp.train.epochs_unfrozen = run['epochs_frozen'], cfg.epochs - run['epochs_frozen']
    exp.train.question_types, exp.train.val_subset, exp.seed = QUESTION_TYPES, cfg.val_subset, seed
    return exp, bool(run['pretrained'])

#%% export
COLUMNS: dict[str, str] = {
    'f1': 'difference finding F1', 'CIDEr': 'CIDEr (difference)', 'METEOR': 'METEOR (difference)',
    'BLEU-4': 'BLEU-4 (difference)', 'ROUGE-L': 'ROUGE-L (difference)', 'closed': 'closed-question accuracy',
    'drop_closed': "image-control drop (closed accuracy)", 'drop_f1': "image-control drop (finding F1)",
    'pointing': 'mask pointing game', 'auroc': 'mask AUROC', 'corner': 'registration corner error (px)'}
LOWER_IS_BETTER: frozenset[str] = frozenset({'corner'})
_CAPTIONS = ('CIDEr', 'METEOR', 'BLEU-4', 'ROUGE-L')
_CLOSED = frozenset(normalize_answer(a) for a in CLOSED_ANSWERS)

def columns_of(metrics: dict[str, Any], # evaluate_run's metrics (with the image control)
              ) -> dict[str, float]:
    "The table's columns for one evaluated run (NaN where the run has no such measure)."
    nan = float('nan')
    f1 = lambda m: ((m or {}).get('difference_findings') or {}).get('all', {}).get('f1', nan)
    acc = lambda m: (m or {}).get('closed', {}).get('accuracy', nan)
    cap = (metrics.get('by_type') or {}).get('difference', {})
    other = metrics.get('image_control')
    return {'f1': f1(metrics), **{k: cap.get(k, nan) for k in _CAPTIONS}, 'closed': acc(metrics),
            'drop_closed': acc(metrics) - acc(other), 'drop_f1': f1(metrics) - f1(other),
            'pointing': (metrics.get('localisation') or {}).get('pointing_game', nan),
            'auroc': (metrics.get('localisation') or {}).get('auroc', nan),
            'corner': (metrics.get('registration') or {}).get('corner_error_px', nan)}

#%% export
def sentence_scores(predictions: Sequence[str], # generated answers
                    references: Sequence[str], # reference answers, same order
                   ) -> pd.DataFrame:
    "Per-answer BLEU-4, METEOR, ROUGE-L and CIDEr-D (pycocoevalcap after its PTB tokenizer): [N, 4]; the bootstrap resamples these."
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from diffvqa.metrics import meteor_scorer, ptb_tokenize
    if not len(predictions): return pd.DataFrame(columns=list(_CAPTIONS), dtype=float)
    tok = ptb_tokenize(list(predictions) + list(references))
    n = len(predictions)
    res, gts = {i: [tok[i]] for i in range(n)}, {i: [tok[n + i]] for i in range(n)}
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[1][3]
    return pd.DataFrame({'CIDEr': Cider().compute_score(gts, res)[1], 'METEOR': meteor_scorer().compute_score(gts, res)[1],
                         'BLEU-4': bleu, 'ROUGE-L': Rouge().compute_score(gts, res)[1]}, dtype=float)

def _counts(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    "[N,3] finding tp, fp, fn of each difference answer (as `metrics.difference_scores` counts them)."
    from diffvqa.metrics import difference_scores
    out = [difference_scores([p], [r])['all'] for p, r in zip(predictions, references)]
    return np.array([[d['tp'], d['fp'], d['fn']] for d in out], dtype=float).reshape(-1, 3)

#%% export
UNIT_COLUMNS: tuple[str, ...] = ('tp', 'fp', 'fn', 'tp_o', 'fp_o', 'fn_o', 'n_closed', 'ok', 'ok_o', 'n_diff',
                                 *_CAPTIONS, 'pointing', 'auroc', 'corner')

def pair_units(predictions: pd.DataFrame, # predictions.csv of one run (prediction_other_images: the image control)
               maps: dict | None = None, # (study_id, ref_id) -> {'M', 'theta'} from `evaluate_run` (None: no mask/pose)
               cache: Any = None, # the PairCache (for the change masks and true poses)
              ) -> pd.DataFrame:
    "One row per test pair: the sums its questions add to each column's statistic, and its mask and pose scores."
    df = predictions.reset_index(drop=True)
    other = df['prediction_other_images'] if 'prediction_other_images' in df else df['prediction']
    diff, ref = (df.question_type == 'difference').to_numpy(), df.answer.fillna('').astype(str)
    u = pd.DataFrame(0.0, index=df.index, columns=[c for c in UNIT_COLUMNS if c not in ('pointing', 'auroc', 'corner')])
    u.loc[diff, ['tp', 'fp', 'fn']] = _counts(df.prediction[diff].fillna('').astype(str).tolist(), ref[diff].tolist())
    u.loc[diff, ['tp_o', 'fp_o', 'fn_o']] = _counts(other[diff].fillna('').astype(str).tolist(), ref[diff].tolist())
    closed, norm = ref.map(normalize_answer).isin(_CLOSED).to_numpy(), ref.map(normalize_answer)
    u['n_closed'], u['n_diff'] = closed.astype(float), diff.astype(float)
    u['ok'] = (closed & (df.prediction.fillna('').astype(str).map(normalize_answer) == norm)).astype(float)
    u['ok_o'] = (closed & (other.fillna('').astype(str).map(normalize_answer) == norm)).astype(float)
    u.loc[diff, list(_CAPTIONS)] = sentence_scores(df.prediction[diff].fillna('').astype(str).tolist(), ref[diff].tolist()).to_numpy()
    u['study_id'], u['ref_id'] = df.study_id.astype(int), df.ref_id.astype(int)
    pairs = u.groupby(['study_id', 'ref_id'], sort=True).sum().reset_index()
    pairs[['pointing', 'auroc', 'corner']] = np.nan
    if maps: pairs[['pointing', 'auroc', 'corner']] = [_pair_truth(maps.get((s, r)), cache, s, r) for s, r in zip(pairs.study_id, pairs.ref_id)]
    return pairs

def _pair_truth(m: dict | None, cache: Any, study_id: int, ref_id: int) -> tuple[float, float, float]:
    "Pointing hit and AUROC of M against the change mask, corner error (px) of Θ against the true pose; NaN where absent."
    import torch
    from diffvqa.groundtruth import load_ground_truth, true_theta
    from diffvqa.metrics import localisation_scores
    from diffvqa.registration import corner_error
    nan = float('nan')
    if m is None: return nan, nan, nan
    gt = cache.change_mask(study_id, ref_id)
    loc = localisation_scores(m['M'], gt) if gt is not None else None
    truth = load_ground_truth(cache)
    corner = nan
    if truth is not None and (study_id, ref_id) in truth.pairs.index:
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64)[None]
        corner = float(corner_error(t(m['theta']), t(true_theta(truth, study_id, ref_id)), cache.size)[0])
    return (loc['pointing_game'], loc['auroc'], corner) if loc else (nan, nan, corner)

#%% export
def unit_statistics(units: pd.DataFrame, # `pair_units` of one run: P rows
                    weights: np.ndarray | None = None, # [B,P] resample counts of each pair (None: each pair once)
                   ) -> dict[str, np.ndarray]:
    "Each column's statistic under pair weights: [B] per column (micro F1, accuracy, mean sentence score, mean per pair)."
    w = np.ones((1, len(units))) if weights is None else np.asarray(weights, float)
    s = lambda c: w @ units[c].to_numpy(float)
    with np.errstate(invalid='ignore', divide='ignore'):
        f1 = lambda tp, fp, fn: 2 * s(tp) / (2 * s(tp) + s(fp) + s(fn))
        out = {'f1': f1('tp', 'fp', 'fn'), **{k: s(k) / s('n_diff') for k in _CAPTIONS}, 'closed': s('ok') / s('n_closed')}
        out['drop_closed'], out['drop_f1'] = out['closed'] - s('ok_o') / s('n_closed'), out['f1'] - f1('tp_o', 'fp_o', 'fn_o')
        for k in ('pointing', 'auroc', 'corner'):
            x = units[k].to_numpy(float)
            have = ~np.isnan(x)
            out[k] = (w[:, have] @ x[have]) / w[:, have].sum(1) if have.any() else np.full(len(w), np.nan)
    return out

def paired_bootstrap(variant: Sequence[pd.DataFrame], # `pair_units` of the variant, one per seed
                     full: Sequence[pd.DataFrame], # `pair_units` of the full method, same seeds, same test pairs
                     n: int = 2000, # resamples
                     seed: int = 0, # seed of the resampling
                     level: float = 0.95, # interval coverage
                    ) -> dict[str, tuple[float, float, float]]:
    "Per column: (difference variant − full on the test set, lower, upper): test pairs resampled with replacement, the same draw for every seed, seed differences averaged."
    keys = [tuple(map(tuple, u[['study_id', 'ref_id']].to_numpy())) for u in (*variant, *full)]
    if len(set(keys)) != 1: raise DiffVQAError('paired_bootstrap: the runs were not evaluated on the same test pairs')
    P = len(full[0])
    w = np.random.default_rng(seed).multinomial(P, np.full(P, 1 / P), size=n).astype(float)
    point, boot = {}, {}
    for v, f in zip(variant, full):
        sv, sf, bv, bf = unit_statistics(v), unit_statistics(f), unit_statistics(v, w), unit_statistics(f, w)
        for k in sv:
            point.setdefault(k, []).append(sv[k][0] - sf[k][0])
            boot.setdefault(k, []).append(bv[k] - bf[k])
    a = (1 - level) / 2
    out = {}
    for k in point:
        b = np.nanmean(np.stack(boot[k]), 0) if not np.isnan(np.stack(boot[k])).all() else np.full(n, np.nan)
        lo, hi = (np.nanquantile(b, [a, 1 - a]) if not np.isnan(b).all() else (np.nan, np.nan))
        out[k] = (float(np.mean(point[k])), float(lo), float(hi))
    return out

#%% export
def prepare_data(cfg: AblationConfig, # the study's (resolved) settings
                ) -> Path:
    "The study's synthetic cache under OUT/cache, made once (kept when it already holds the same sizes)."
    from diffvqa.data import prepare
    from diffvqa.synth import synthesize
    out = Path(cfg.out)
    cache, stamp = out/'cache', dict(n_pairs=cfg.n_pairs, image_size=cfg.image_size, data_seed=cfg.data_seed)
    if (cache/'meta.json').is_file() and (out/'data.json').is_file() and json.loads((out/'data.json').read_text()) == stamp: return cache
    synthesize(out/'data', cfg.n_pairs, size=cfg.image_size, seed=cfg.data_seed, workers=cfg.workers, overwrite=True, progress=False)
    prepare(out/'data', cache, size=cfg.image_size, workers=cfg.workers, progress=False)
    atomic_write(out/'data.json', json.dumps(stamp))
    return cache

def pretrained_for(cache: Path, # the study's cache
                   cfg: AblationConfig, # the study's settings
                   seed: int, # pretraining seed (the run's)
                  ) -> Path:
    "`diffvqa pretrain` encoders for this seed: the user's cache at the tiny preset's size, OUT/pretrained-sSEED when shrunk."
    from diffvqa.demo import DemoConfig
    from diffvqa.pretrain import cached_pretrain, pretrain
    pcfg = DemoConfig(pretrain_epochs=cfg.pretrain_epochs, seed=seed).pretrain_config()
    if cfg.image_size == get_preset('tiny').model.image_size: return cached_pretrain(cache, 'tiny', pcfg, progress=False)[0]
    out = Path(cfg.out)/f'pretrained-s{seed}'
    if not (out/'pretrained.json').is_file(): pretrain(cache, out, 'tiny', pcfg, model_config=base_config(cfg.image_size).model, progress=False)
    return out

#%% export
def run_name(variant: str, seed: int) -> str: return f"{variant.replace(' ', '_')}-s{seed}"

def run_one(variant: str, # a key of VARIANTS
            seed: int, # the run's seed
            cache: Path, # the study's cache
            cfg: AblationConfig, # the study's settings
           ) -> dict[str, Any]:
    "Train (or resume) and evaluate one variant and seed; skipped when OUT/evals/NAME/units.csv exists. Returns its record."
    import torch
    from diffvqa.data import PairCache
    from diffvqa.evaluate import evaluate_run
    from diffvqa.train import train
    name = run_name(variant, seed)
    run, ev_dir = Path(cfg.out)/'runs'/name, Path(cfg.out)/'evals'/name
    if (ev_dir/'units.csv').is_file(): return json.loads((ev_dir/'record.json').read_text()) | {'skipped': True}
    torch.set_num_threads(cfg.threads)
    exp, use_pretrained = variant_config(variant, cfg, seed)
    t0 = time.time()
    if (run/'config.json').is_file(): train(resume=run, progress=False, verbose=False)
    else: train(cache, run, config=exp, pretrained=pretrained_for(cache, cfg, seed) if use_pretrained else None, seed=seed,
                max_train_questions=cfg.max_train_questions, overwrite=True, progress=False, verbose=False)
    t1 = time.time()
    ev = evaluate_run(run, cache, split='test', question_types=QUESTION_TYPES, out=ev_dir, limit=cfg.test_limit,
                      question_only=False, device='cpu', progress=False)
    units = pair_units(ev.predictions, ev.maps, PairCache(cache))
    record = dict(variant=variant, seed=seed, columns=columns_of(ev.metrics), seconds=dict(train=round(t1 - t0, 1), evaluate=round(time.time() - t1, 1)))
    if variant == 'full': record['baseline'] = _baseline(ev.predictions, PairCache(cache), ev.metrics)
    atomic_write(ev_dir/'record.json', json.dumps(record, indent=1, default=float))
    atomic_write(ev_dir/'units.csv', units.to_csv(index=False))   # written last: its presence marks the run done
    return record

def _baseline(predictions: pd.DataFrame, cache: Any, metrics: dict) -> dict[str, Any]:
    "The most-frequent-answer baseline on the same test questions: its columns and its per-pair units (as records)."
    from diffvqa.metrics import fit_majority_baseline, majority_baseline_predictions
    base = majority_baseline_predictions(fit_majority_baseline(cache.select('train', QUESTION_TYPES)), predictions)
    df = predictions.assign(prediction=base, prediction_other_images=base)
    cols = columns_of(metrics['baseline'] | {'image_control': metrics['baseline']})
    return dict(columns=cols, units=pair_units(df).to_dict('records'))

#%% export
def summarise(records: dict[tuple[str, int], dict], # (variant, seed) -> `run_one`'s record
              units: dict[tuple[str, int], pd.DataFrame], # (variant, seed) -> its `pair_units`
              cfg: AblationConfig, # the study's settings
             ) -> dict[str, Any]:
    "Per variant and column: each seed's value, mean ± sd over seeds, and the paired-bootstrap difference from full [95%]."
    import warnings
    seeds, rows = [s for s in cfg.seeds if ('full', s) in records], {}
    for v in cfg.variants:
        done = [s for s in seeds if (v, s) in records]
        if not done: continue
        vals = {k: [records[v, s]['columns'][k] for s in done] for k in COLUMNS}
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)
            row = {'seeds': done, 'values': vals, 'mean': {k: float(np.nanmean(x)) for k, x in vals.items()},
                   'sd': {k: float(np.nanstd(x, ddof=1)) if len(x) > 1 else float('nan') for k, x in vals.items()}}
            if v != 'full': row['vs_full'] = paired_bootstrap([units[v, s] for s in done], [units['full', s] for s in done], n=cfg.bootstrap)
        rows[v] = row
    return rows

def _pm(m: float, s: float, k: str) -> str:
    d = 2 if k == 'corner' else 3
    return '—' if math.isnan(m) else f'{m:.{d}f}' + ('' if math.isnan(s) else f' ± {s:.{d}f}')

def _ci(t: tuple[float, float, float] | None, k: str) -> str:
    if t is None or math.isnan(t[0]): return '—'
    d = 2 if k == 'corner' else 3
    star = ' *' if t[1] > 1e-12 or t[2] < -1e-12 else ''   # the interval excludes 0 (NaN compares False)
    return f'{t[0]:+.{d}f} [{t[1]:+.{d}f}, {t[2]:+.{d}f}]{star}'

def format_tables(rows: dict[str, Any], # from `summarise`
                 ) -> list[str]:
    "Markdown: the mean ± sd table and the difference-from-full table (one row per variant, one column per measure)."
    head = '| variant | seeds | ' + ' | '.join(COLUMNS.values()) + ' |'
    rule = '|---|---|' + '---|' * len(COLUMNS)
    seeds = lambda r: ' '.join(map(str, r['seeds']))
    a = [head, rule] + [f'| {v} | {seeds(r)} | ' + ' | '.join(_pm(r['mean'][k], r['sd'][k], k) for k in COLUMNS) + ' |' for v, r in rows.items()]
    b = [head, rule] + [f'| {v} | {seeds(r)} | ' + ' | '.join(_ci(r.get('vs_full', {}).get(k), k) for k in COLUMNS) + ' |'
                        for v, r in rows.items() if v != 'full']
    return ['### Mean ± standard deviation over seeds', '', *a, '', '### Difference from the full method, with its paired 95% bootstrap interval', '',
            '(variant − full on the same seeds and test pairs; * where the interval excludes 0)', '', *b]

#%% export
CLAIMS: tuple[tuple[str, str], ...] = (
    ('no stage-1 freezing', "freezing the image encoder in stage 1 helps"),
    ('no auxiliary losses', 'the DINO-inspired auxiliary objectives help'),
    ('no mask', 'the mask helps'))
_ANSWER_COLUMNS = ('f1', 'CIDEr', 'METEOR', 'BLEU-4', 'ROUGE-L', 'closed')

def claim_verdict(vs_full: dict[str, tuple[float, float, float]], # a variant's `paired_bootstrap` result
                 ) -> str:
    "'holds' (full better on some answer measure, worse on none), 'reversed', 'mixed' or 'not shown' (every interval holds 0)."
    better = [k for k in _ANSWER_COLUMNS if k in vs_full and vs_full[k][2] < -1e-12]   # variant below full: full better
    worse = [k for k in _ANSWER_COLUMNS if k in vs_full and vs_full[k][1] > 1e-12]
    return 'mixed' if better and worse else 'holds' if better else 'reversed' if worse else 'not shown'

def claims_section(rows: dict[str, Any], # from `summarise`
                  ) -> list[str]:
    "Markdown lines: for each of the paper's three ablation claims, the verdict here with the numbers behind it."
    out = ["## The paper's ablation claims, here", '',
           'A claim *holds* when removing the part lowers some answer measure (difference F1, CIDEr, METEOR, BLEU-4, '
           'ROUGE-L, closed accuracy) with a 95% interval that excludes 0 and raises none; *reversed* when removing it '
           'raises one; *not shown* when every interval contains 0 (no difference this study can see).', '']
    for variant, claim in CLAIMS:
        if variant not in rows or 'vs_full' not in rows[variant]: out.append(f'- {claim}: not run here.'); continue
        d = rows[variant]['vs_full']
        nums = '; '.join(f'{COLUMNS[k]} {_ci(d[k], k)}' for k in ('f1', 'CIDEr', 'closed'))
        extra = f"; mask AUROC {_ci(d['auroc'], 'auroc')}, pointing game {_ci(d['pointing'], 'pointing')}" if variant == 'no mask' else ''
        out.append(f"- **{claim}: {claim_verdict(d)}** (without it, minus full: {nums}{extra}).")
    return out

def plot_differences(rows: dict[str, Any], # from `summarise`
                     save: str | Path, # PNG path (written atomically)
                    ) -> Path:
    "One panel per column: each variant's difference from full with its 95% bootstrap interval (the one figure of the study)."
    import matplotlib
    import matplotlib.pyplot as plt
    from diffvqa.core import atomic_path
    names = [v for v in rows if v != 'full' and 'vs_full' in rows[v]]
    fig, axes = plt.subplots(3, 4, figsize=(15, 9.5), sharey=True)
    for ax, k in zip(axes.flat, COLUMNS):
        d = np.array([rows[v]['vs_full'][k] for v in names], float).reshape(-1, 3)
        y = np.arange(len(names))
        ok = ~np.isnan(d[:, 0])
        err = np.abs(d[ok][:, 1:] - d[ok][:, :1]).T if ok.any() else None
        ax.errorbar(d[ok, 0], y[ok], xerr=err, fmt='o', color='C0', capsize=3)
        ax.axvline(0, color='k', lw=0.8)
        ax.set_title(COLUMNS[k] + (' (lower is better)' if k in LOWER_IS_BETTER else ''), fontsize=9)
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
    axes.flat[-1].axis('off')
    fig.suptitle('variant − full method (mean over seeds), 95% paired bootstrap interval over test pairs')
    fig.tight_layout()
    with atomic_path(save) as tmp:
        fig.savefig(tmp, dpi=90, format='png')
    plt.close(fig)
    return Path(save)

#%% export
@dataclass
class AblationResult:
    "What `run_ablation` returns."
    out: Path                      # the work folder
    paths: dict[str, Path]         # ablation.md, ablation.json, ablation.png
    rows: dict[str, Any]           # from `summarise`
    complete: bool                 # every variant and seed finished

def _units(ev_dir: Path) -> pd.DataFrame: return pd.read_csv(ev_dir/'units.csv')

def collect(cfg: AblationConfig, # the study's settings
           ) -> tuple[dict, dict]:
    "Records and per-pair units of every finished run under OUT/evals (the baseline's taken from each seed's full run)."
    records, units = {}, {}
    for v in cfg.variants:
        for s in cfg.seeds:
            d = Path(cfg.out)/'evals'/run_name('full' if v == BASELINE else v, s)
            if not (d/'units.csv').is_file(): continue
            r = json.loads((d/'record.json').read_text())
            if v == BASELINE: records[v, s], units[v, s] = r['baseline'], pd.DataFrame(r['baseline']['units'])
            else: records[v, s], units[v, s] = r, _units(d)
    return records, units

def _header(cfg: AblationConfig, rows: dict, records: dict, command: str, wall: float) -> list[str]:
    "Title, status, command, sizes, versions and times of ablation.md."
    todo = [(v, s) for v in cfg.variants for s in cfg.seeds if (v, s) not in records]
    secs = sum(sum(r.get('seconds', {}).values()) for r in records.values())
    status = ('complete: every variant over every seed' if not todo else
              f'**partial**: {len(records)} of {len(records) + len(todo)} variant/seed runs done; missing ' + ', '.join(f'{v} (seed {s})' for v, s in todo))
    v = package_versions()
    return ['# Ablation study on the synthetic benchmark', '',
            f'Status: {status}.', '', '```bash', command, '```', '',
            f'Wall time of the invocation that wrote this file: {wall / 60:.1f} min; training and evaluation of the runs: '
            f'{secs / 60:.1f} min in all (each run is kept on disk, so a resumed study counts only the new ones here).', '',
            f'git commit {git_commit(Path(__file__).parent) if "__file__" in globals() else git_commit()}; Python {v["python"]}, torch {v["torch"]}, '
            f'numpy {v["numpy"]}, pycocoevalcap {v["pycocoevalcap"]}, diffvqa {v["diffvqa"]}; {v["platform"]}.', '',
            '```json', json.dumps(asdict(cfg), indent=None), '```', '']

def write_outputs(cfg: AblationConfig, # the study's settings
                  command: str, # the exact command that ran the study (recorded in ablation.md)
                  wall: float, # seconds this invocation has run
                  figure: bool = True, # also draw ablation.png (skipped between runs: it takes seconds)
                 ) -> AblationResult:
    "Summarise the finished runs and write ablation.json, ablation.md and ablation.png atomically."
    out = Path(cfg.out)
    records, units = collect(cfg)
    rows = summarise(records, units, cfg)
    complete = all((v, s) in records for v in cfg.variants for s in cfg.seeds)
    paths = {'json': out/'ablation.json', 'md': out/'ablation.md', 'png': out/'ablation.png'}
    if figure and rows.get('full') and len(rows) > 1: plot_differences(rows, paths['png'])
    atomic_write(paths['json'], json.dumps(dict(config=asdict(cfg), command=command, complete=complete, columns=COLUMNS,
                                                variants={v: VARIANTS.get(v, 'not trained') for v in cfg.variants},
                                                rows=rows, versions=package_versions()), indent=1, default=float))
    lines = _header(cfg, rows, records, command, wall) + format_tables(rows) + ['', '![difference from full](ablation.png)', '']
    atomic_write(paths['md'], '\n'.join(lines + claims_section(rows) + ['']))
    return AblationResult(out=out, paths=paths, rows=rows, complete=complete)

#%% export
def run_ablation(cfg: AblationConfig | None = None, # the settings (default: the full study)
                 command: str | None = None, # the command to record (default: the `python -m diffvqa.ablation` equivalent)
                ) -> AblationResult:
    "Run every variant over every seed (finished runs are skipped), then write the tables, the figure and the verdicts."
    t0 = time.time()
    cfg = resolve_config(cfg or AblationConfig())
    command = command or cli_command(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    cache = prepare_data(cfg)
    trained = [v for v in cfg.variants if v != BASELINE]
    for s in cfg.seeds:
        for v in trained:
            r = run_one(v, s, cache, cfg)
            c = r['columns']
            print(f"[ablation] {v}, seed {s}: F1 {c['f1']:.3f}, CIDEr {c['CIDEr']:.3f}, closed {c['closed']:.3f}, "
                  f"AUROC {c['auroc']:.3f}, corner {c['corner']:.2f} px " + ('(on disk)' if r.get('skipped') else
                  f"({r['seconds']['train']:.0f} s train, {r['seconds']['evaluate']:.0f} s evaluate)"), flush=True)
            write_outputs(cfg, command, time.time() - t0, figure=False)
    return write_outputs(cfg, command, time.time() - t0)

def cli_command(cfg: AblationConfig, # resolved settings
               ) -> str:
    "The `python -m diffvqa.ablation` command that runs these settings (every field that differs from the full study's defaults)."
    d, parts = AblationConfig(), ['python -m diffvqa.ablation']
    for f in fields(AblationConfig):
        v = getattr(cfg, f.name)
        if f.name == 'quick' or v == getattr(d, f.name): continue
        flag = '--' + f.name.replace('_', '-')
        parts.append(f"{flag} {' '.join(shlex.quote(str(x)) for x in v)}" if isinstance(v, tuple) else f'{flag} {shlex.quote(str(v))}')
    return ' '.join(parts)

#%% export
def main(argv: Sequence[str] | None = None, # command-line arguments (default: sys.argv[1:])
        ) -> int:
    "`python -m diffvqa.ablation [--quick] [--out DIR] [--seeds ...] ...`: run the study, print where the report is."
    p = argparse.ArgumentParser(prog='python -m diffvqa.ablation', description='The ablation study on synthetic pairs with ground truth.')
    add_config_args(p, AblationConfig)
    args = p.parse_args(argv)
    try:
        over = config_overrides(args, AblationConfig)
        no_cap = over.get('max_train_questions') == 0   # 0 on the command line: every training question
        cfg = apply_overrides(AblationConfig(), {k: v for k, v in over.items() if not (no_cap and k == 'max_train_questions')})
        r = run_ablation(replace(cfg, max_train_questions=None) if no_cap else cfg)
    except DiffVQAError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f"{'complete' if r.complete else 'partial'}: {r.paths['md'].resolve()}")
    return 0

#%% export eval
if __name__ == '__main__': sys.exit(main())
