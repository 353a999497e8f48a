#!/usr/bin/env python3
"""medfed's imaging training speed against PyTorch's, in one run.

Measures, interleaved (medfed, PyTorch, medfed, PyTorch; the median of
each), the `small` CNN (conv3x3 8-16-32, ReLU, 2x2 max pooling, global max
pooling, linear, BCE with logits, AdamW) on 64x64 one-channel inputs:

- training at batch 32, images/s;
- DP-SGD: per-example gradients of Poisson-sampled batches (rate 1/8, 8
  steps: 256 images expected), each clipped to norm 1, summed, Gaussian
  noise added, one optimiser step — in PyTorch with `torch.func` vmap
  per-sample gradients, the way Opacus computes them;
- each library's 512x512 f32 matmul GFLOP/s (the ceiling on this CPU).

medfed's side is `cargo bench --bench cnn_training` (its printed lines);
PyTorch (CPU) runs from pip in a cached venv (~/.cache/medfed/venvs/
torch-cpu: the PyPI wheel, which brings CUDA libraries along, ~5 GB, and
runs on the CPU all the same) with `torch.set_num_threads` equal to
medfed's thread count (all cores). SYNTHETIC random inputs on both sides.

Usage: scripts/imaging_speed.py [--rounds 2]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(os.path.expanduser("~"), ".cache", "medfed", "venvs", "torch-cpu")
TORCH = "torch==2.15.0"

TORCH_BENCH = r'''
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
from torch.func import functional_call, vmap, grad
threads = int(sys.argv[1])
torch.set_num_threads(threads)
torch.manual_seed(1)
IMAGES, SIZE, BATCH, STEPS = 256, 64, 32, 8

class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 1)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.amax(F.relu(self.conv3(x)), dim=(2, 3))
        return self.fc(x).squeeze(1)

model = Small()
opt = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=1e-4)
X = torch.rand(IMAGES, 1, SIZE, SIZE)
Y = (torch.rand(IMAGES) > 0.5).float()

def train_epoch():
    perm = torch.randperm(IMAGES)
    for i in range(0, IMAGES, BATCH):
        idx = perm[i:i + BATCH]
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(X[idx]), Y[idx]).backward()
        opt.step()

def example_loss(params, buffers, x, y):
    out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
    return F.binary_cross_entropy_with_logits(out, y.unsqueeze(0))

per_example = vmap(grad(example_loss), in_dims=(None, None, 0, 0))

def dp_sgd():
    for _ in range(STEPS):
        idx = (torch.rand(IMAGES) < 1.0 / STEPS).nonzero().squeeze(1)
        params = {k: v.detach() for k, v in model.named_parameters()}
        grads = per_example(params, {}, X[idx], Y[idx])
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
        scale = (1.0 / (norms + 1e-12)).clamp(max=1.0)
        opt.zero_grad()
        for name, p in model.named_parameters():
            g = torch.einsum("b,b...->...", scale, grads[name])
            p.grad = (g + torch.randn_like(g)) / (IMAGES / STEPS)
        opt.step()

def images_per_s(f, repeats=7):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return IMAGES / statistics.median(times)

import statistics
a, b = torch.randn(512, 512), torch.randn(512, 512)
for _ in range(20): a @ b
t = time.perf_counter()
for _ in range(200): a @ b
matmul = 200 * 2 * 512 ** 3 / (time.perf_counter() - t) / 1e9
print(f"train {images_per_s(train_epoch):.1f}")
print(f"dpsgd {images_per_s(dp_sgd):.1f}")
print(f"matmul {matmul:.2f}")
print(f"version {torch.__version__}")
'''


def torch_python():
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        print(f"making {VENV} with {TORCH} (once; ~5 GB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", TORCH, "numpy"], check=True)
    return python


def medfed():
    out = subprocess.run(
        ["cargo", "bench", "--bench", "cnn_training"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    figures = {}
    for label, key in [("cnn training 64x64", "train"), ("cnn dp-sgd 64x64", "dpsgd")]:
        m = re.search(re.escape(label) + r": (\d+) images/s.*candle matmul 512: ([\d.]+) GFLOP/s", out)
        if not m:
            sys.exit(f"no '{label}' line in cargo bench's output:\n{out}")
        figures[key] = float(m.group(1))
        figures["matmul"] = float(m.group(2))
    return figures


def pytorch(python, threads):
    out = subprocess.run(
        [python, "-c", TORCH_BENCH, str(threads)], check=True, capture_output=True, text=True
    ).stdout
    figures = {}
    for line in out.splitlines():
        key, value = line.split(" ", 1)
        figures[key] = value if key == "version" else float(value)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    python = torch_python()
    threads = os.cpu_count() or 1
    ours, theirs = [], []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: medfed ...", file=sys.stderr)
        ours.append(medfed())
        print(f"round {r + 1}/{args.rounds}: PyTorch ...", file=sys.stderr)
        theirs.append(pytorch(python, threads))
    med = lambda runs, key: statistics.median(run[key] for run in runs)
    print(f"small CNN, 64x64, {threads} threads, PyTorch {theirs[0]['version']}, "
          f"medians of {args.rounds} interleaved runs")
    print(f"{'':<28}{'medfed':>12}{'PyTorch':>12}{'ratio':>8}")
    for key, label in [("train", "training, batch 32 (img/s)"), ("dpsgd", "DP-SGD per-example (img/s)"),
                       ("matmul", "matmul 512 (GFLOP/s)")]:
        a, b = med(ours, key), med(theirs, key)
        print(f"{label:<28}{a:>12.0f}{b:>12.0f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
