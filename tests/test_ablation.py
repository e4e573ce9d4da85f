"The ablation study's pure parts: variant configurations, the paired bootstrap against a hand computation, the tables, resuming."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffvqa import ablation as ab
from diffvqa.core import DiffVQAError, get_preset


def _units(rng: np.random.Generator, n: int = 6) -> pd.DataFrame:
    "Per-pair sums of a made-up run on n test pairs."
    u = pd.DataFrame({'study_id': np.arange(n), 'ref_id': np.zeros(n, int)})
    for c in ('tp', 'fp', 'fn', 'tp_o', 'fp_o', 'fn_o'): u[c] = rng.integers(0, 3, n).astype(float)
    u['n_closed'] = rng.integers(1, 4, n).astype(float)
    u['ok'] = np.minimum(u.n_closed, rng.integers(0, 4, n)); u['ok_o'] = np.minimum(u.ok, rng.integers(0, 2, n))
    u['n_diff'] = 1.0
    for c in ('CIDEr', 'METEOR', 'BLEU-4', 'ROUGE-L', 'pointing', 'auroc', 'corner'): u[c] = rng.random(n)
    return u


def _f1(tp, fp, fn): return 2 * tp / (2 * tp + fp + fn)


def test_variants_set_the_intended_fields():
    cfg = ab.resolve_config(ab.AblationConfig(epochs=5, epochs_frozen=3))
    tiny = get_preset('tiny')
    got = {v: ab.variant_config(v, cfg, 7) for v in ab.VARIANTS}
    assert all(e.seed == 7 and e.train.epochs_frozen + e.train.epochs_unfrozen == 5 for e, _ in got.values())
    assert got['full'][0].train.epochs_frozen == 3 and got['full'][1] is True
    assert got['no mask'][0].model.mask_source == 'none' and tiny.model.mask_source == 'attention'
    assert (got['prior only'][0].train.lambda_start, got['prior only'][0].train.lambda_end) == (1.0, 1.0)
    assert (got['adaptive only'][0].train.lambda_start, got['adaptive only'][0].train.lambda_end) == (0.0, 0.0)
    assert got['no registration'][0].model.registration is False
    loss = got['no auxiliary losses'][0].loss
    assert (loss.alpha_mask, loss.alpha_pred, loss.alpha_gram, loss.alpha_koleo) == (0, 0, 0, 0)
    assert loss.alpha_changes == tiny.loss.alpha_changes > 0      # the preset's answer-structure term stays
    assert (got['no stage-1 freezing'][0].train.epochs_frozen, got['no stage-1 freezing'][0].train.epochs_unfrozen) == (0, 5)
    assert got['no pretraining'][1] is False and got['question only'][0].model.blank_films is True
    # every other field equals the full method's
    full = got['full'][0]
    for v, (e, _) in got.items():
        changed = {f'{s}.{k}' for s in ('model', 'loss', 'train') for k, x in vars(getattr(e, s)).items() if x != getattr(getattr(full, s), k)}
        want = {k for k in ab.VARIANTS[v] if '.' in k and ab.VARIANTS[v][k] != getattr(getattr(full, k.split('.')[0]), k.split('.')[1])}
        assert changed == want | ({'train.epochs_frozen', 'train.epochs_unfrozen'} if v == 'no stage-1 freezing' else set()), v


def test_a_new_variant_is_one_entry(monkeypatch):
    monkeypatch.setitem(ab.VARIANTS, 'saliency mask', {'model.mask_source': 'saliency'})
    cfg = ab.resolve_config(ab.AblationConfig(variants=('full', 'saliency mask')))
    assert ab.variant_config('saliency mask', cfg, 0)[0].model.mask_source == 'saliency'
    monkeypatch.setitem(ab.VARIANTS, 'typo', {'model.mask_sorce': 'x'})
    with pytest.raises(DiffVQAError, match='mask-sorce'): ab.variant_config('typo', cfg, 0)


def test_paired_bootstrap_matches_a_hand_computation():
    rng = np.random.default_rng(3)
    full, var = [_units(rng), _units(rng)], [_units(rng), _units(rng)]
    n = 50
    got = ab.paired_bootstrap(var, full, n=n, seed=11)
    P = len(full[0])
    g = np.random.default_rng(11)
    draws = g.multinomial(P, np.full(P, 1 / P), size=n)          # pairs drawn per resample
    picks = g.integers(0, len(full), size=(n, len(full)))         # seeds drawn per resample
    def boot(stat):   # expand each count vector into the resampled list of pairs, score the drawn seeds the plain way
        return [np.mean([stat(var[s], np.repeat(np.arange(P), w)) - stat(full[s], np.repeat(np.arange(P), w)) for s in pick])
                for w, pick in zip(draws, picks)]
    f1 = lambda u, idx: _f1(*(u.iloc[idx][['tp', 'fp', 'fn']].sum()))
    point = np.mean([f1(v, np.arange(P)) - f1(f, np.arange(P)) for v, f in zip(var, full)])
    assert got['f1'] == pytest.approx((point, *np.quantile(boot(f1), [0.025, 0.975])))
    acc = lambda u, idx: u.ok.iloc[idx].sum() / u.n_closed.iloc[idx].sum()
    assert got['closed'][1:] == pytest.approx(tuple(np.quantile(boot(acc), [0.025, 0.975])))
    # mean of per-pair scores, the same draws
    m = boot(lambda u, idx: u.auroc.iloc[idx].mean())
    assert got['auroc'][1:] == pytest.approx(tuple(np.quantile(m, [0.025, 0.975])))


def test_tables_and_verdicts():
    cols = list(ab.COLUMNS)
    rows = {'full': {'seeds': [0, 1, 2], 'mean': {k: 0.25 for k in cols} | {'corner': 5.0}, 'sd': {k: 0.05 for k in cols} | {'corner': 0.5}},
            'no mask': {'seeds': [0, 1, 2], 'mean': {k: 0.2 for k in cols} | {'auroc': float('nan')}, 'sd': {k: 0.01 for k in cols},
                        'vs_full': {k: (-0.05, -0.08, -0.01) for k in cols} | {'CIDEr': (0.01, -0.02, 0.04)}}}
    text = '\n'.join(ab.format_tables(rows))
    assert '| full | 0 1 2 | 0.250 ± 0.050 |' in text and '5.00 ± 0.50 |' in text
    assert '| no mask | 0 1 2 | -0.050 [-0.080, -0.010] * | +0.010 [-0.020, +0.040] |' in text
    assert text.count('| no mask |') == 2 and text.count('| full |') == 1
    assert ab.claim_verdict(rows['no mask']['vs_full']) == 'holds'
    claims = '\n'.join(ab.claims_section(rows))
    assert 'the mask helps: holds' in claims and 'freezing the image encoder in stage 1 helps: not run here' in claims


def test_resume_skips_finished_runs(tmp_path, monkeypatch):
    cfg = ab.resolve_config(ab.AblationConfig(out=str(tmp_path), seeds=(0,), variants=('full', 'no mask', ab.BASELINE)))
    rng = np.random.default_rng(0)
    cols = {k: 0.5 for k in ab.COLUMNS}
    for v in ('full', 'no mask'):
        d = tmp_path/'evals'/ab.run_name(v, 0)
        d.mkdir(parents=True)
        rec = dict(variant=v, seed=0, columns=cols, seconds={'train': 1.0, 'evaluate': 1.0})
        if v == 'full': rec['baseline'] = dict(columns=cols, units=_units(rng).to_dict('records'))
        (d/'record.json').write_text(json.dumps(rec))
        _units(rng).to_csv(d/'units.csv', index=False)
    def boom(*a, **k): raise AssertionError('a finished run was trained again')
    monkeypatch.setattr('diffvqa.train.train', boom)
    monkeypatch.setattr('diffvqa.evaluate.evaluate_run', boom)
    monkeypatch.setattr(ab, 'prepare_data', lambda cfg: tmp_path/'cache')
    r = ab.run_ablation(cfg, command='python -m diffvqa.ablation --test')
    assert r.complete and set(r.rows) == {'full', 'no mask', ab.BASELINE}
    md = r.paths['md'].read_text()
    assert 'Status: complete' in md and 'python -m diffvqa.ablation --test' in md and r.paths['png'].is_file()
    assert json.loads(r.paths['json'].read_text())['complete'] is True
    (tmp_path/'evals'/ab.run_name('no mask', 0)/'units.csv').unlink()   # an unfinished run: the report says partial
    r = ab.write_outputs(cfg, 'cmd', 1.0)
    assert not r.complete and '**partial**' in r.paths['md'].read_text() and 'no mask (seed 0)' in r.paths['md'].read_text()


def test_flags_cover_every_setting():
    import argparse
    from diffvqa.core import add_config_args
    p = argparse.ArgumentParser(); add_config_args(p, ab.AblationConfig)
    flags = {a.dest for a in p._actions}
    from dataclasses import fields
    assert {f.name for f in fields(ab.AblationConfig)} <= flags and 'quick' in flags
    assert ab.cli_command(ab.resolve_config(ab.AblationConfig(seeds=(4, 5, 6), out='x'))) == 'python -m diffvqa.ablation --out x --seeds 4 5 6'


def test_bad_settings_are_one_line(capsys, tmp_path):
    assert ab.main(['--out', str(tmp_path), '--variants', 'no mask']) == 2
    assert "'full'" in capsys.readouterr().err


def test_pretrained_folder_matches_a_copied_config(tmp_path):
    "apply_pretrained compares architectures whatever the key order of their dicts (a config copied through JSON sorts them)."
    from diffvqa.pretrain import PRETRAINED_FORMAT, _arch, apply_pretrained
    from diffvqa.train import copy_config
    cfg = ab.base_config(64)
    (tmp_path/'pretrained.json').write_text(json.dumps(dict(format=PRETRAINED_FORMAT, architecture=_arch(cfg.model), fields={})))
    assert apply_pretrained(copy_config(cfg).model, tmp_path).pretrained is True
