#!/usr/bin/env python3
"""medfed's imaging training speed against PyTorch's, in one run.

Measures, interleaved (medfed, PyTorch, medfed, PyTorch; the median of
each), on one-channel inputs:

- `small` at 64x64: conv3x3 8-16-32, ReLU, 2x2 max pooling, global max
  pooling, linear; 256 images;
- `resnet18` at 64x64 (64 images) and 128x128 (32 images): torchvision's
  ResNet-18 with one input channel, GroupNorm(32) for BatchNorm and one
  logit, written out here block for block (no torchvision needed);

all with BCE with logits and AdamW:

- training at batch 32, images/s;
- DP-SGD: per-example gradients of Poisson-sampled batches (rate 1/steps,
  `steps` steps: the image count expected), each clipped to norm 1,
  summed, Gaussian noise added, one optimiser step — in PyTorch with
  `torch.func` vmap per-sample gradients, the way Opacus computes them
  (medfed: rows for `small`, ghost clipping for `resnet18`);
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
import sys, time, statistics, torch, torch.nn as nn, torch.nn.functional as F
from torch.func import functional_call, vmap, grad
threads, arch, SIZE, IMAGES, STEPS = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
BATCH = 32
torch.set_num_threads(threads)
torch.manual_seed(1)

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

class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.GroupNorm(32, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.GroupNorm(32, cout)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(32, cout))
    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))

class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.GroupNorm(32, 64)
        layers, cin = [], 64
        for i, w in enumerate([64, 128, 256, 512]):
            layers.append(nn.Sequential(Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, 1)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3))).squeeze(1)

model = Small() if arch == "small" else ResNet18()
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

def images_per_s(f, repeats=5):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return IMAGES / statistics.median(times)

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


# (arch, side, images, DP-SGD steps, medfed's label): the bench's cases.
CASES = [
    ("small", 64, 256, 8, "cnn"),
    ("resnet18", 64, 64, 2, "resnet18"),
    ("resnet18", 128, 32, 1, "resnet18"),
]


def medfed():
    """{(arch, side): {"train", "dpsgd", "matmul"}} from one run of the bench."""
    out = subprocess.run(
        ["cargo", "bench", "--bench", "cnn_training"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    figures = {}
    for arch, side, _, _, label in CASES:
        case = figures.setdefault((arch, side), {})
        for what, key in [("training", "train"), ("dp-sgd", "dpsgd")]:
            line = f"{label} {what} {side}x{side}"
            m = re.search(re.escape(line) + r": (\d+) images/s.*candle matmul 512: ([\d.]+) GFLOP/s", out)
            if not m:
                sys.exit(f"no '{line}' line in cargo bench's output:\n{out}")
            case[key] = float(m.group(1))
            case["matmul"] = float(m.group(2))
    return figures


def pytorch(python, threads):
    """The same figures from PyTorch, one process per case."""
    figures = {}
    for arch, side, images, steps, _ in CASES:
        out = subprocess.run(
            [python, "-c", TORCH_BENCH, str(threads), arch, str(side), str(images), str(steps)],
            check=True, capture_output=True, text=True,
        ).stdout
        case = figures.setdefault((arch, side), {})
        for line in out.splitlines():
            key, value = line.split(" ", 1)
            case[key] = value if key == "version" else float(value)
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
    med = lambda runs, case, key: statistics.median(run[case][key] for run in runs)
    version = theirs[0][("small", 64)]["version"]
    print(f"{threads} threads, PyTorch {version}, medians of {args.rounds} interleaved runs")
    print(f"{'':<40}{'medfed':>10}{'PyTorch':>10}{'ratio':>8}")
    for arch, side, _, _, _ in CASES:
        case = (arch, side)
        for key, label in [("train", "training, batch 32 (img/s)"), ("dpsgd", "DP-SGD per-example (img/s)")]:
            a, b = med(ours, case, key), med(theirs, case, key)
            print(f"{arch + f' {side}x{side} ' + label:<40}{a:>10.1f}{b:>10.1f}{a / b:>8.2f}")
    a, b = med(ours, ("small", 64), "matmul"), med(theirs, ("small", 64), "matmul")
    print(f"{'matmul 512 (GFLOP/s)':<40}{a:>10.0f}{b:>10.0f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
