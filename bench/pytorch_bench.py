#!/usr/bin/env python3
"""PyTorch twin of `selfdistill bench`: same networks, batch, optimiser, KD loss, cases,
thread count and JSON schema (see src/bench.rs). Run through bench/compare.sh, or:

    python3 bench/pytorch_bench.py --threads 2 --batch 64 --json /tmp/pt.json
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEMA = 1
KD_TEMPERATURE = 4.0
KD_ALPHA = 0.5
LR = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
CLASSES = 10
POOL = 4
MODELS = ("cnn", "resnet20")
CASES = ("train", "train-kd", "infer")


class ConvBn(nn.Module):
    """conv3x3 (no bias) + BN; ReLU applied by the caller where the crate applies it."""

    def __init__(self, inp, out, stride):
        super().__init__()
        self.conv = nn.Conv2d(inp, out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out)

    def forward_linear(self, x):
        return self.bn(self.conv(x))

    def forward(self, x):
        return F.relu(self.forward_linear(x))


class Cnn(nn.Module):
    """src/model/cnn.rs: three conv-BN-ReLU stages (stride 1, 2, 2), global pool, linear."""

    def __init__(self, channels=3, width=32, classes=CLASSES):
        super().__init__()
        w = width
        self.c1 = ConvBn(channels, w, 1)
        self.c2 = ConvBn(w, 2 * w, 2)
        self.c3 = ConvBn(2 * w, 4 * w, 2)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x):
        x = self.c3(self.c2(self.c1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class BasicBlock(nn.Module):
    """src/model/resnet.rs: two conv3x3-BN, identity or 1x1 conv+BN projection."""

    def __init__(self, inp, out, stride):
        super().__init__()
        self.a = ConvBn(inp, out, stride)
        self.b = ConvBn(out, out, 1)
        self.shortcut = None
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.b.forward_linear(self.a(x)) + identity)


class ResNet(nn.Module):
    def __init__(self, depth=20, channels=3, width=16, classes=CLASSES):
        super().__init__()
        n = max((depth - 2) // 6, 1)
        w = width
        self.stem = ConvBn(channels, w, 1)
        blocks = []
        inp = w
        for stage, out in enumerate([w, 2 * w, 4 * w]):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(inp, out, stride))
                inp = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def build(model):
    return Cnn() if model == "cnn" else ResNet()


def kd_loss(student, teacher, targets, t, alpha):
    """src/distill/loss.rs: (1-a) CE + a T^2 KL(p_t || p_s), KL summed over classes,
    averaged over the batch."""
    ce = F.cross_entropy(student, targets)
    if teacher is None:
        return ce
    log_ps = F.log_softmax(student / t, dim=1)
    log_pt = F.log_softmax(teacher / t, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum() / student.shape[0]
    return ce * (1.0 - alpha) + kl * (alpha * t * t)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(device, args, model, case, batch):
    gen = torch.Generator().manual_seed(args.seed ^ 0xBE4C4)
    inputs = [
        (
            (torch.rand(batch, 3, 32, 32, generator=gen) * 2 - 1).to(device),
            torch.randint(0, CLASSES, (batch,), generator=gen).to(device),
        )
        for _ in range(POOL)
    ]
    torch.manual_seed(args.seed)
    student = build(model).to(device).train()
    teacher = None
    if case == "train-kd":
        torch.manual_seed(args.seed + 1)
        teacher = build(model).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    optim = torch.optim.SGD(
        student.parameters(), lr=LR, momentum=MOMENTUM, dampening=0.0, weight_decay=WEIGHT_DECAY
    )
    if case == "infer":
        student.eval()
    state = {"i": 0, "loss": None}
    # Per-step [loss, hits] kept on the device and read in one transfer every
    # --read-every steps (src/train/readback.rs: the crate's trainer and bench do the same).
    pending = []

    def drain():
        if pending:
            values = torch.cat(pending).tolist()
            pending.clear()
            state["loss"] = values[-2]

    def step():
        x, y = inputs[state["i"] % POOL]
        state["i"] += 1
        if case == "infer":
            with torch.no_grad():
                logits = student(x)
            logits.cpu()
            return
        logits = student(x)
        t_logits = None
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
        loss = kd_loss(logits, t_logits, y, KD_TEMPERATURE, KD_ALPHA)
        correct = (logits.detach().argmax(1) == y).sum()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        pending.append(torch.stack([loss.detach(), correct.to(loss.dtype)]))
        if len(pending) >= args.read_every:
            drain()

    for _ in range(args.warmup):
        step()
    drain()
    sync(device)
    reps, reps_steps = [], []
    for _ in range(args.reps):
        # At least --steps steps and --min-time seconds, whole steps (src/bench.rs timed_rep).
        start, n = time.perf_counter(), 0
        while True:
            step()
            n += 1
            if n >= args.steps and time.perf_counter() - start >= args.min_time:
                # The steps still queued on the device count (src/bench.rs timed_rep).
                drain()
                sync(device)
                elapsed = time.perf_counter() - start
                break
        reps.append(n / elapsed)
        reps_steps.append(n)
    sps = statistics.median(reps)
    return {
        "model": model,
        "case": case,
        "batch": batch,
        "steps_per_s": sps,
        "images_per_s": sps * batch,
        "reps_steps_per_s": reps,
        "reps_steps": reps_steps,
        "last_loss": state["loss"],
    }


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count() or 1,
        "os": f"{platform.system().lower()} {platform.machine()}",
    }


def parse_list(s, allowed, what):
    items = [p.strip() for p in s.split(",") if p.strip()]
    for p in items:
        if p not in allowed:
            sys.exit(f"error: unknown {what} {p!r}")
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--batch", default="64,128")
    ap.add_argument("--models", default="cnn,resnet20")
    ap.add_argument("--cases", default="train,train-kd,infer")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--read-every", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.steps < 1 or args.reps < 1:
        sys.exit("error: --steps and --reps must be at least 1")
    if args.read_every < 1:
        sys.exit("error: --read-every must be at least 1")
    if not 0 <= args.min_time <= 600:
        sys.exit(f"error: --min-time must be between 0 and 600 seconds, got {args.min_time}")
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    models = parse_list(args.models, MODELS, "model")
    cases = parse_list(args.cases, CASES, "case")
    if args.backend == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: --backend cuda but torch.cuda.is_available() is False")
        device = torch.device("cuda", 0)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    results = []
    for model in models:
        for batch in batches:
            for case in cases:
                r = run_case(device, args, model, case, batch)
                reps = " ".join(f"{v:.3f}" for v in r["reps_steps_per_s"])
                print(
                    f"{model:<10} {case:<9} {batch:>6} {r['steps_per_s']:>10.3f} "
                    f"{r['images_per_s']:>10.1f}  {reps}",
                    file=sys.stderr,
                )
                results.append(r)
    version = f"torch {torch.__version__}"
    if device.type == "cuda":
        version += f" (CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)})"
    report = {
        "schema": SCHEMA,
        "framework": "pytorch",
        "version": version,
        "backend": args.backend,
        "threads": torch.get_num_threads(),
        "machine": machine(),
        # glibc's allocator settings for this process (compare.sh sets them to the ones
        # selfdistill applies with mallopt); null: glibc's defaults.
        "allocator": {
            k: os.environ.get(k)
            for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")
        },
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "steps": args.steps,
        "min_rep_s": args.min_time,
        "warmup": args.warmup,
        "reps": args.reps,
        "read_every": args.read_every,
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    print(json.dumps(report) if not args.json else f"wrote {args.json}")


if __name__ == "__main__":
    main()
