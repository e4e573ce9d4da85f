"""Pairs per second: reading the prepared cache vs decoding JPEGs on every step.

Builds a small fake MIMIC tree with full-size JPEGs, prepares a cache at --size px, then measures
  * JPEG pipeline: per pair, decode two full-resolution JPEGs and resize them (what a loader without a cache does),
    naive (full decode) and in JPEG draft mode (what `prepare` itself does);
  * cached pipeline: PairDataset items (two memmap rows -> float tensors, tokens) through a torch DataLoader with
    0 and --workers worker processes, with and without training augmentation.
Prints figures and ratios; asserts nothing. Target context: >= 1000 pairs/s at 384 px with 16 workers on a GPU node.

    python benchmarks/bench_data.py [--size 384] [--jpeg-side 2500] [--workers 2] [--pairs 600]
"""
import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import numpy as np
import torch
from PIL import Image

from diffvqa.core import ModelConfig
from diffvqa import data as D
from diffvqa import loaders as L
from diffvqa.testing import make_fake_mimic


def jpeg_pairs_per_s(paths: list[Path], size: int, n_pairs: int, draft: bool) -> float:
    "Decode two JPEGs per pair and fit them to size x size."
    t = time.perf_counter()
    for i in range(n_pairs):
        for p in (paths[(2 * i) % len(paths)], paths[(2 * i + 1) % len(paths)]):
            if draft: D.load_image(p, size)
            else:
                with Image.open(p) as im: D.fit_image(im.convert('L'), size)
    return n_pairs / (time.perf_counter() - t)


def cached_pairs_per_s(ds: L.PairDataset, n_pairs: int, workers: int, bs: int = 16) -> float:
    "Iterate n_pairs random items through a DataLoader with padding collate."
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=n_pairs, generator=torch.Generator().manual_seed(0))
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=workers,
                                     collate_fn=partial(L.collate_pairs, pad_id=ds.pad_id),
                                     persistent_workers=False, prefetch_factor=4 if workers else None)
    t = time.perf_counter()
    seen = sum(len(b) for b in dl)
    return seen / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', type=int, default=384, help='cache side in pixels')
    ap.add_argument('--jpeg-side', type=int, default=2500, help='height of the fake full-resolution JPEGs')
    ap.add_argument('--workers', type=int, default=2, help='DataLoader / prepare worker processes')
    ap.add_argument('--pairs', type=int, default=2000, help='pairs per cached measurement')
    ap.add_argument('--jpeg-pairs', type=int, default=12, help='pairs per JPEG measurement')
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        fake = make_fake_mimic(tmp/'mimic', n_subjects=4, traps=False, seed=0, jpeg_side=a.jpeg_side)
        print(f'fake tree with {a.jpeg_side}px-tall JPEGs written in {time.perf_counter() - t:.1f}s')
        t = time.perf_counter()
        cache_dir = D.prepare(fake.root, tmp/'cache', size=a.size, workers=a.workers, progress=False)
        cache = D.PairCache(cache_dir)
        n_img = cache.meta['shape'][0]
        print(f'prepare: {n_img} images at {a.size}px with {a.workers} workers in {time.perf_counter() - t:.2f}s '
              f'({n_img / (time.perf_counter() - t):.1f} images/s)')
        paths = [fake.root/p for p in cache.images.path]
        naive = jpeg_pairs_per_s(paths, a.size, a.jpeg_pairs, draft=False)
        draft = jpeg_pairs_per_s(paths, a.size, a.jpeg_pairs, draft=True)
        print(f'JPEG decode + resize, 1 process: naive {naive:.1f} pairs/s, draft mode {draft:.1f} pairs/s')
        tok = L.get_tokenizer(cache, ModelConfig(tokenizer='bpe', bpe_vocab_size=300))
        plain = L.PairDataset(cache, tok, 'train', question_types=None, augment=False)
        aug = L.PairDataset(cache, tok, 'train', question_types=None, augment=True)
        rows = np.random.default_rng(0).integers(0, n_img, size=(a.pairs, 2))
        t = time.perf_counter()
        for i, j in rows: cache.image(i); cache.image(j)
        raw = a.pairs / (time.perf_counter() - t)
        print(f'raw memmap reads (two rows, no tensors): {raw:.0f} pairs/s')
        res = {}
        for w in sorted({0, a.workers}):
            for name, ds in (('plain', plain), ('augmented', aug)):
                res[name, w] = cached_pairs_per_s(ds, a.pairs, w)
                print(f'cached {name:9s} items, DataLoader workers={w}: {res[name, w]:.0f} pairs/s')
        dls = L.get_dataloaders(cache, tok, bs=16, bs_valid=16, question_types=None, device='cpu')
        t, seen = time.perf_counter(), 0
        while seen < a.pairs: seen += sum(len(b[0]) for b in dls.train)
        print(f'fastai train loader (uint8 batches, float+augment in after_batch on the device), workers=0: '
              f'{seen / (time.perf_counter() - t):.0f} pairs/s')
        best_plain = max(v for (n, _), v in res.items() if n == 'plain')
        best_aug = max(v for (n, _), v in res.items() if n == 'augmented')
        print(f'ratio cached/JPEG (naive decode): plain {best_plain / naive:.0f}x, augmented {best_aug / naive:.0f}x')
        print(f'ratio cached/JPEG (draft decode): plain {best_plain / draft:.0f}x, augmented {best_aug / draft:.0f}x')
        print(f'per worker at {a.size}px: plain {res["plain", 0]:.0f} pairs/s, augmented {res["augmented", 0]:.0f} pairs/s; '
              f'16 workers need >= {1000 / 16:.0f} pairs/s each for 1000 pairs/s')
        print('note: this cache fits in the page cache; a full-size cache (about 150 KB per image at 384px) reads from disk')


if __name__ == '__main__':
    main()
