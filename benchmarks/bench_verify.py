"""How long `verify` takes on a ResNet-50-shaped set of BN layers, next to the bare F.batch_norm calls it needs.

The layers have torchvision resnet50's shapes, written down from the architecture (He et al. 2016,
Table 1; torchvision.models.resnet.Bottleneck with expansion 4): the stem conv 7×7 3→64 + BN, then
stages of 3, 4, 6 and 3 bottlenecks of widths 64, 128, 256, 512 (conv 1×1 → BN, conv 3×3 → BN,
conv 1×1 to 4×width → BN; the first block of each stage adds a 1×1 downsample conv → BN).
That is 53 BN layers with 26,560 channels. Parameters are seeded random values in float32; no
download, no file: the layers are built in memory, so this times verify's numerics, not loading.

    python benchmarks/bench_verify.py            # 5 repeats
    python benchmarks/bench_verify.py --repeat 9

Prints medians of wall and CPU time (CPU is steadier on a shared machine), verify / bare, and the
issue-8 goal ratio (torch import + verify) / (torch import + bare calls), whose target is ≤ 2.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def resnet50_convs() -> list[tuple[str, tuple[int, ...]]]:
    """(BN name, producer conv weight shape) for the 53 conv → BN pairs of ResNet-50, in forward order."""
    pairs = [("bn1", (64, 3, 7, 7))]
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        out = width * 4
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            pairs += [(f"{p}.bn1", (width, in_ch, 1, 1)), (f"{p}.bn2", (width, width, 3, 3)),
                      (f"{p}.bn3", (out, width, 1, 1))]
            if b == 0:
                pairs.append((f"{p}.downsample.1", (out, in_ch, 1, 1)))
            in_ch = out
    return pairs


def build_layers(seed: int = 0):
    """The 53 BNLayers with producers, float32, seeded."""
    from bninspect.checkpoint import TensorRef
    from bninspect.layers import BNLayer, Producer

    rng = np.random.default_rng(seed)
    layers = []
    for name, wshape in resnet50_convs():
        c = wshape[0]
        f32 = lambda a: TensorRef.from_array(a.astype(np.float32))  # noqa: E731
        tensors = {"weight": f32(rng.normal(1, 0.2, c)), "bias": f32(rng.normal(0, 0.2, c)),
                   "running_mean": f32(rng.normal(0, 1, c)), "running_var": f32(np.exp(rng.normal(0, 1, c)))}
        conv = name.rsplit(".", 1)[0] + (".conv" + name[-1] if name[-3:-1] == "bn" else ".0")
        producer = Producer(conv, conv, "conv", "conv2d", c, wshape[1], 1, f32(rng.normal(0, 0.05, wshape)), None)
        layers.append(BNLayer(name, name, "BatchNorm2d", "producer", c, tensors, 1e-5, "default", 0.1, "default",
                              producer=producer))
    return layers


def time_import(repeat: int) -> tuple[float, float]:
    """Medians of a fresh `python -c "import torch"`: (wall s, CPU s of the child, user + system)."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for the bare calls (0 = torch's default); verify itself runs on one. "
                         "With 2 threads on the loaded 2-core machine the 53 bare calls took anywhere from 1 ms to 1.5 s")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)

    from bninspect.services.verify import verify_layers

    layers = build_layers()
    assert len(layers) == 53, len(layers)

    # the bare calls: one eval-mode F.batch_norm per layer on verify's default input (batch 2, 4×4)
    inputs = []
    for layer in layers:
        t = {k: torch.from_numpy(layer.tensors[k].numpy()) for k in ("running_mean", "running_var", "weight", "bias")}
        inputs.append((torch.randn(2, layer.channels, 4, 4), t))

    def bare():
        with torch.no_grad():
            for x, t in inputs:
                F.batch_norm(x, t["running_mean"], t["running_var"], t["weight"], t["bias"], False, 0.0, 1e-5)

    def run_verify():
        results, _ = verify_layers(layers, ["cpu"])
        assert all(r.passed for r in results)

    bare(), run_verify()  # warm-up: first-call allocations and lazy imports
    timings = {}
    for label, fn in (("bare F.batch_norm × 53", bare), ("verify (service)", run_verify)):
        walls, cpus = [], []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        timings[label] = (statistics.median(walls), statistics.median(cpus))
    timings = {"import torch (fresh process)": time_import(max(3, args.repeat // 2)), **timings}
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.1f}, ResNet-50 shapes: 53 BN layers, "
          f"{sum(l.channels for l in layers)} channels, medians of {args.repeat}")
    print(f"{'what':34s} {'wall s':>9s} {'CPU s':>9s}")
    for label, (wall, cpu) in timings.items():
        print(f"{label:34s} {wall:9.3f} {cpu:9.3f}")
    (iw, ic), (bw, bc), (vw, vc) = timings.values()
    print(f"verify / bare calls: {vw / bw:.0f}× wall")
    # CPU time is the steadier measure on a loaded machine, where waiting inflates the import's wall time
    print(f"(import + verify) / (import + bare): {(iw + vw) / (iw + bw):.2f}× wall, {(ic + vc) / (ic + bc):.2f}× CPU "
          "(issue 8 goal: ≤ 2)")

if __name__ == "__main__":
    main()
