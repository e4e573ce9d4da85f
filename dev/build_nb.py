"Assemble nbs/api/28_ablation.ipynb from dev/ablation_cells.py (export cells) and the prose below."
import json, re, uuid, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
src = (ROOT/'dev'/'ablation_cells.py').read_text()
blocks = [b.strip('\n') for b in re.split(r'^#%% export.*\n', src, flags=re.M) if b.strip()]
evalfalse = src.count('#%% export eval')
code = {i: b for i, b in enumerate(blocks)}

def md(s): return ('markdown', s.strip('\n'))
def cc(s): return ('code', s.strip('\n'))
def ex(i, extra=''):
    return ('code', ('#| export\n' + extra) + code[i])

cells = [
md('''# Ablation: which parts of the method matter, on ground truth

> The paper's ablation table rebuilt on the synthetic benchmark: nine trained variants and a baseline, several seeds, every column with its spread over seeds and a paired bootstrap interval against the full method.'''),
cc('#| default_exp ablation'),
cc('#| hide\nfrom fastcore.test import test_close, test_eq, test_fail'),
md('''The paper's second table removes one part of the method at a time (stage-1 freezing, the DINO-style auxiliary
objectives, the saliency mask) and reports one run of each on MIMIC. One run cannot tell a real difference from the
luck of a seed, and MIMIC has no ground truth for *where* something changed or *how* the films are misaligned. The
synthetic pairs of `diffvqa.synth` have both: a change mask per pair and the pose that was applied to the main film.
So here every variant is trained over several seeds on the same data and evaluated with the same functions the
command line uses (`diffvqa.train.train`, `diffvqa.evaluate.evaluate_run`), and each column is reported two ways:

* mean ± standard deviation over the seeds (how much a seed moves it);
* the difference from the full method with a **paired bootstrap** interval: the test pairs are resampled with
  replacement, the variant and the full method are scored on the *same* resample for the *same* seed, and the seed
  differences are averaged. Pairing removes the variation that both runs share (which test pairs are hard), so the
  interval is narrower than the two seed spreads would suggest, and it is the one to read for "does removing this
  part change anything".'''),
ex(0),
md('''## The variants

Each variant is one entry of `VARIANTS`: a dict of settings that differ from the full method. Keys with a dot set a
field of the run's `ExperimentConfig` (`model.mask_source`, `loss.alpha_mask`, `train.lambda_start`, ...); the two
plain keys are settings of the study itself: `epochs_frozen` (stage-1 epochs out of the same total) and
`pretrained` (start from `diffvqa pretrain`'s encoders or from random weights). Another variant is one more line.

| variant | what changes | what the ground truth checks |
|---|---|---|
| full | nothing: the `tiny` preset (M = λU + (1−λ)F, λ from 1 to 0.8, registration, four auxiliary losses, two stages) | — |
| no mask | M ≡ 1: both films reach φ unmasked | the mask columns fall to chance (a constant map: AUROC 0.5, pointing at the change's area) |
| prior only | λ ≡ 1: M = U, the DINO prior | is the prior, alone, where the changes are? |
| adaptive only | λ ≡ 0: M = F, the learned mask | does the learned mask find changes without the prior? |
| no registration | Θ ≡ I | corner error becomes the unregistered error: how much alignment buys |
| no auxiliary losses | α_mask = α_pred = α_gram = α_koleo = 0 (the preset's answer-structure term α_changes stays) | the paper's "DINO-inspired objectives" claim |
| no stage-1 freezing | φ trains from the first epoch | the paper's freezing claim |
| no pretraining | φ, the prior and the registration CNN start from random weights | what `diffvqa pretrain` contributes |
| question only | both films are zeros before any part sees them | how much the questions alone give (the image-control drop falls to 0) |
| most frequent answer | not trained: the most frequent training answer of each question type | the floor every column should beat |

`no stage-1 freezing` keeps the total number of epochs, so it trains φ for longer, not the other parts for less.'''),
ex(1),
md('''`AblationConfig` holds every setting of the study once; `python -m diffvqa.ablation` gets one flag per field and the
tutorial notebook one papermill parameter per field. Its defaults are the full study; `quick` swaps in `QUICK`'s
sizes (40 pairs at 64 px, two seeds, two epochs of 16 questions), which checks the machinery in a few minutes
and measures nothing.'''),
ex(2),
cc('''test_eq(resolve_config(AblationConfig(quick=True)).n_pairs, 40)
test_eq(resolve_config(AblationConfig(quick=True, n_pairs=40)).n_pairs, 40)   # a value given explicitly wins over QUICK
test_fail(lambda: resolve_config(AblationConfig(variants=('full', 'no masks'))), contains='--variants')
test_fail(lambda: resolve_config(AblationConfig(variants=('no mask',))), contains="'full'")
test_fail(lambda: resolve_config(AblationConfig(epochs=2, epochs_frozen=3)), contains='--epochs-frozen')'''),
md('''`variant_config` turns a variant's entry into the configuration `train` receives. The tiny preset is the starting
point; below 128 px its encoders are shrunk exactly as `testing.small_config` shrinks them.'''),
ex(3),
cc('''cfg = resolve_config(AblationConfig())
exp, pre = variant_config('no auxiliary losses', cfg, seed=1)
test_eq((exp.loss.alpha_mask, exp.loss.alpha_pred, exp.loss.alpha_gram, exp.loss.alpha_koleo, exp.seed), (0, 0, 0, 0, 1))
test_eq(exp.loss.alpha_changes, get_preset('tiny').loss.alpha_changes)
exp, _ = variant_config('no stage-1 freezing', cfg, 0)
test_eq((exp.train.epochs_frozen, exp.train.epochs_unfrozen), (0, cfg.epochs))
test_eq(variant_config('no pretraining', cfg, 0)[1], False)
test_eq(variant_config('prior only', cfg, 0)[0].train.lambda_end, 1.0)
test_eq(variant_config('full', resolve_config(AblationConfig(quick=True)), 0)[0].model.image_size, 64)'''),
md('''## Columns

`columns_of` reads one evaluation's `metrics.json` into the table's columns: the difference-finding F1 (micro, over
the added, removed and level-changed findings the answers name), four caption metrics on difference questions,
exact-match accuracy on closed questions (yes/no and view), the *image-control drop* (the same measure with the
pair's own films minus with another pair's films: how much the answers depend on the right films), the mask M against
the ground-truth change masks (pointing game: is M's peak inside the change; AUROC: does M rank changed pixels above
unchanged ones) and the registration's mean corner error against the true pose.'''),
ex(4),
md('''## The paired bootstrap

For the interval each test pair *p* is reduced to sums its questions contribute: finding true/false positives and
false negatives (with own and with another pair's films), closed questions answered and answered right, and the
sentence-level caption scores of its difference answers; plus its mask and pose scores. A bootstrap resample draws
*P* pairs with replacement, i.e. a count vector $w \\in \\mathbb{N}^P$ with $\\sum_p w_p = P$, and every statistic is
a ratio of weighted sums, e.g. the micro F1

$$F_1(w) = \\frac{2\\sum_p w_p\\,tp_p}{2\\sum_p w_p\\,tp_p + \\sum_p w_p\\,fp_p + \\sum_p w_p\\,fn_p},$$

so all resamples are one matrix product. For a variant $v$ and seeds $s = 1..S$ the resampled difference is
$\\Delta(w) = \\frac1S\\sum_s [T_{v,s}(w) - T_{\\text{full},s}(w)]$ with the same $w$ for every run, and the interval
is its 2.5 and 97.5 percentiles. F1, accuracy, the mask and pose columns are recomputed exactly; CIDEr-D and
ROUGE-L are means of per-answer scores already (CIDEr-D's document frequencies stay those of the whole test set);
for BLEU-4 and METEOR, whose corpus scores are not means, the difference and interval are of the mean per-answer
score, which is why that row of the difference table can differ slightly from the difference of the first table's means.'''),
ex(5),
ex(6),
ex(7),
md('''A hand check on three pairs: the weights [2, 1, 0] count pair 0 twice and drop pair 2.'''),
cc('''u = pd.DataFrame({'study_id': [1, 2, 3], 'ref_id': [0, 0, 0], 'tp': [1., 0, 2], 'fp': [0., 1, 0], 'fn': [1., 0, 0],
                  'tp_o': [0., 0, 1], 'fp_o': [1., 1, 0], 'fn_o': [2., 0, 1], 'n_closed': [2., 1, 1], 'ok': [2., 0, 1],
                  'ok_o': [1., 0, 0], 'n_diff': [1., 1, 1], 'CIDEr': [1., 0, 2], 'METEOR': [.5, 0, .5], 'BLEU-4': [0., 0, 1],
                  'ROUGE-L': [1., 0, 1], 'pointing': [1., np.nan, 0], 'auroc': [.9, np.nan, .5], 'corner': [1., 2, 3]})
st = unit_statistics(u, np.array([[2, 1, 0], [1, 1, 1]]))
test_close(st['f1'], [2*2 / (2*2 + 1 + 2), 2*3 / (2*3 + 1 + 1)])
test_close(st['closed'], [4 / 5, 3 / 4])
test_close(st['drop_closed'], [4/5 - 2/5, 3/4 - 1/4])
test_close(st['CIDEr'], [2 / 3, 1.0])
test_close(st['pointing'], [1.0, 0.5])     # the pair without a change mask (NaN) carries no weight
test_close(st['corner'], [4 / 3, 2.0])'''),
md('''Against the full method the bootstrap interval must contain the observed difference, and a variant identical to the
full method must give exactly zero; a difference that every pair shows is not covered by zero.'''),
cc('''b = paired_bootstrap([u], [u], n=200)
test_eq(b['f1'], (0.0, 0.0, 0.0))
better = u.assign(ok=u.n_closed)                       # every closed question right
b = paired_bootstrap([better], [u], n=500)
test_close(b['closed'][0], 1 - 3 / 4)
assert 0 < b['closed'][1] <= b['closed'][0] <= b['closed'][2]
test_fail(lambda: paired_bootstrap([u.iloc[:2]], [u]), contains='same test pairs')'''),
md('''## Running one variant, resumably

`run_one` trains a variant for one seed (or resumes its run folder after an interruption) and evaluates it on the
test split with the image control; `evaluate_run` writes `metrics.json` and `predictions.csv`, and the per-pair
units are written last, so their presence marks a finished run that a rerun skips. The data are made once per
study; pretrained encoders come from the user's cache (`cached_pretrain`, keyed by the films and settings) at the
preset's 128 px, or from the study folder when shrunk.'''),
ex(8),
ex(9),
md('''## Tables, verdicts and the figure'''),
ex(10),
ex(11),
cc('''rows = {'full': {'seeds': [0, 1], 'mean': {k: 0.5 for k in COLUMNS}, 'sd': {k: 0.01 for k in COLUMNS}},
        'no mask': {'seeds': [0, 1], 'mean': {k: 0.4 for k in COLUMNS}, 'sd': {k: float('nan') for k in COLUMNS},
                    'vs_full': {k: (-0.1, -0.2, -0.05) for k in COLUMNS}}}
t = format_tables(rows)
assert '| full | 0 1 | 0.500 ± 0.010 |' in '\\n'.join(t) and '| no mask | 0 1 | -0.100 [-0.200, -0.050] * |' in '\\n'.join(t)
test_eq(claim_verdict(rows['no mask']['vs_full']), 'holds')
test_eq(claim_verdict({k: (0.0, -0.1, 0.1) for k in COLUMNS}), 'not shown')
test_eq(claim_verdict({k: (0.2, 0.1, 0.3) for k in COLUMNS}), 'reversed')'''),
md('''## The study'''),
ex(12),
md('''From the shell (every field of `AblationConfig` is a flag; `--quick` is the CI check):

```bash
python -m diffvqa.ablation --out /tmp/ablation                # the full study (about 75 min on 2 cores)
python -m diffvqa.ablation --quick --out /tmp/ablation-quick  # about 2 min
```

The tutorial `nbs/tutorials/ablation.ipynb` runs the same `run_ablation` as a papermill job and shows the table.'''),
ex(13),
ex(14),
('code', '#| export\n#| eval: false\n' + code[15]),
cc('''#| hide
import tempfile
with tempfile.TemporaryDirectory() as d:
    test_eq(main(['--out', d, '--epochs', '0']), 2)   # a bad setting is one line on stderr and exit status 2'''),
]

nb = {'cells': [], 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
      'nbformat': 4, 'nbformat_minor': 5}
for kind, s in cells:
    c = {'cell_type': kind, 'id': uuid.uuid4().hex[:8], 'metadata': {}, 'source': s.splitlines(keepends=True)}
    if kind == 'code': c |= {'execution_count': None, 'outputs': []}
    nb['cells'].append(c)
path = ROOT/'nbs'/'api'/'28_ablation.ipynb'
if path.exists():   # keep cell ids stable across rebuilds
    old = json.loads(path.read_text())['cells']
    for c, o in zip(nb['cells'], old): c['id'] = o['id']
path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
print(len(blocks), 'export blocks;', len(nb['cells']), 'cells')
