"Assemble nbs/tutorials/ablation.ipynb."
import json, uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def md(s): return ('markdown', s.strip('\n'), {})
def cc(s, tags=None): return ('code', s.strip('\n'), {'tags': tags} if tags else {})

cells = [
md('''# The ablation study (and its papermill job)

> Which parts of the attention-consistent method change the answers, the mask or the alignment? Nine trained variants and a baseline over several seeds on synthetic pairs whose changes and poses are known.'''),
md('''The paper ablates three parts on MIMIC with one run each: stage-1 freezing of the image encoder, the DINO-inspired
auxiliary objectives, and the mask. The synthetic benchmark adds what MIMIC lacks, ground truth for *where* each
pair changed and *how* its main film was moved, so here we can ask more of each variant and repeat it over seeds:

| variant | what changes | what the ground truth checks |
|---|---|---|
| full | the `tiny` preset as trained by `diffvqa train` from `diffvqa pretrain`'s encoders | the reference row |
| no mask | M ≡ 1 | mask AUROC 0.5 and pointing at chance: is the full method's M any better? |
| prior only | λ ≡ 1, M = U (the DINO prior) | does the prior alone point at changes? |
| adaptive only | λ ≡ 0, M = F (the learned mask) | does the learned mask alone? |
| no registration | Θ ≡ I | corner error against the true pose without alignment |
| no auxiliary losses | α_mask = α_pred = α_gram = α_koleo = 0 | the paper's auxiliary-objective claim (the preset's answer-structure term α_changes stays on) |
| no stage-1 freezing | φ trains from epoch 1 (same total epochs) | the paper's freezing claim |
| no pretraining | all encoders start random | what pretraining on the training films buys |
| question only | films zeroed before the model sees them | what the questions alone answer; the image-control drop must vanish |
| most frequent answer | the most frequent training answer per question type | the floor |

Every column is the mean ± standard deviation over seeds, and every variant's difference from the full method comes
with a paired bootstrap 95% interval over test pairs (the same resample for both, seed differences averaged; see
the `ablation` chapter). The columns: difference-finding F1; CIDEr, METEOR, BLEU-4 and ROUGE-L on difference
questions; closed-question accuracy; the image-control drop (own films minus another pair's films, on closed
accuracy and on finding F1); the mask's pointing game and AUROC against the change masks; the registration's mean
corner error against the true pose.

This notebook calls `diffvqa.ablation.run_ablation`, which trains with the same `diffvqa.train.train` and scores
with the same `diffvqa.evaluate.evaluate_run` as the command line. Its **default parameters are the quick mode**
(40 pairs at 64 px, two seeds, one training step per epoch): it checks the machinery in `make test` and measures
nothing. The full study, whose report is committed as [ablation.md](ablation.md), is:

```bash
papermill nbs/tutorials/ablation.ipynb /tmp/ablation-run.ipynb -p quick False -p out /work/exp/ablation_full
```

(every parameter below can be given with `-p`; lists with `-y "seeds: [0, 1, 2]"`). The study is resumable: a
variant and seed whose evaluation is on disk is skipped, so the same command continues an interrupted study.'''),
cc('''quick = True                 # True: QUICK's sizes for every parameter left at None (the CI check); False: the full study
out = None                   # work folder (None: a temporary one in quick mode, ablation_out otherwise)
n_pairs = None               # synthetic pairs (data size)
image_size = None            # film side in pixels (128: the tiny preset; smaller shrinks its encoders)
seeds = None                 # training and pretraining seeds, e.g. [0, 1, 2]
variants = None              # names from diffvqa.ablation.VARIANTS and 'most frequent answer' (None: all)
epochs = None                # training epochs in all
epochs_frozen = None         # stage-1 epochs among them
max_train_questions = None   # training questions per epoch
pretrain_epochs = None       # `diffvqa pretrain` epochs
bootstrap = None             # bootstrap resamples''', tags=['parameters']),
cc('''import tempfile
import time
from dataclasses import asdict, fields

import pandas as pd
from IPython.display import Image, Markdown, display

from diffvqa.ablation import COLUMNS, AblationConfig, resolve_config, run_ablation'''),
md('''The parameters become an `AblationConfig` (one field per parameter, defined once in the library), and the command
that reproduces this run is recorded in the report.'''),
cc('''given = dict(quick=quick, out=out or (tempfile.mkdtemp(prefix='diffvqa-ablation-') if quick else 'ablation_out'), n_pairs=n_pairs,
             image_size=image_size, seeds=tuple(seeds) if seeds is not None else None, variants=tuple(variants) if variants is not None else None,
             epochs=epochs, epochs_frozen=epochs_frozen, max_train_questions=max_train_questions, pretrain_epochs=pretrain_epochs,
             bootstrap=bootstrap)
cfg = resolve_config(AblationConfig(**{k: v for k, v in given.items() if v is not None}))
command = 'papermill nbs/tutorials/ablation.ipynb OUT.ipynb ' + ' '.join(
    f'-p {k} {v}' if not isinstance(v, tuple) else f'-y "{k}: {list(v)}"' for k, v in given.items() if v is not None)
print(command)
pd.Series(asdict(cfg))'''),
md('''## Run

One line per finished run (a finished run found on disk says so). `ablation.md`, `ablation.json` and `ablation.png`
are rewritten after every run, so an interrupted study still leaves a (partial) report.'''),
cc('''t0 = time.time()
res = run_ablation(cfg, command=command)
print(f'{time.time() - t0:.0f} s; complete: {res.complete}')'''),
md('''## The table

Mean ± standard deviation over seeds, then each variant's difference from the full method with its paired 95%
bootstrap interval (* where it excludes 0).'''),
cc('''mean = pd.DataFrame({v: {COLUMNS[k]: r['mean'][k] for k in COLUMNS} for v, r in res.rows.items()}).T
mean.round(3)'''),
cc('''diff = pd.DataFrame({v: {COLUMNS[k]: '{:+.3f} [{:+.3f}, {:+.3f}]'.format(*r['vs_full'][k]) for k in COLUMNS}
                     for v, r in res.rows.items() if 'vs_full' in r}).T
diff'''),
cc('''display(Image(filename=str(res.paths['png'])))'''),
md('''## What the ablation says

The report closes with a verdict on each of the paper's three claims, computed from the intervals (a claim *holds*
when removing the part lowers some answer measure with an interval that excludes 0 and raises none). In quick mode
these verdicts mean nothing; the committed full run is in [ablation.md](ablation.md).'''),
cc('''md = res.paths['md'].read_text()
display(Markdown(md[md.index("## The paper's ablation claims"):]))'''),
cc('''# the machinery's checks: every variant over every seed, every column present, the full method's values finite
assert res.complete and set(res.rows) == set(cfg.variants)
assert all(len(r['seeds']) == len(cfg.seeds) for r in res.rows.values())
assert all(set(r['vs_full']) == set(COLUMNS) for v, r in res.rows.items() if v != 'full')
assert all(pd.notna(res.rows['full']['mean'][k]) for k in ('f1', 'CIDEr', 'closed', 'auroc', 'corner'))
assert res.rows['no mask']['mean']['auroc'] == 0.5 if 'no mask' in res.rows else True   # M ≡ 1 ranks no pixel above another'''),
]

nb = {'cells': [], 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
      'nbformat': 4, 'nbformat_minor': 5}
for kind, s, meta in cells:
    c = {'cell_type': kind, 'id': uuid.uuid4().hex[:8], 'metadata': meta, 'source': s.splitlines(keepends=True)}
    if kind == 'code': c |= {'execution_count': None, 'outputs': []}
    nb['cells'].append(c)
path = ROOT/'nbs'/'tutorials'/'ablation.ipynb'
if path.exists():
    old = json.loads(path.read_text())['cells']
    for c, o in zip(nb['cells'], old): c['id'] = o['id']
path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
print(len(nb['cells']), 'cells')
