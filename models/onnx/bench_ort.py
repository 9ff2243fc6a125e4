#!/usr/bin/env python3
"""Candle against ONNX Runtime on the same network, weights, input and thread count, in one run.

`make bench-ort` runs this. It makes (once) a virtual environment under `.setup/ort-venv` with
onnx, onnxruntime, numpy and safetensors from PyPI and re-runs itself there; builds the ONNX graph
of EfficientNet-Lite0 from `models/weights/efficientnet-lite0.safetensors` (lite0_onnx.py);
checks that candle and ONNX Runtime give the same feature map for the same input; then times
both, alternating in rounds so that load from other processes hits both sides alike, and prints
`candle_ms ort_ms ratio` per input size (and the median of the per-round ratios, whose pairs
share whatever load the machine had at the time), with candle's whole per-frame recognition time
(forward, regional descriptors, shortlist, cell similarities and geometric verification, as the
agent runs them: models/benches/frame.rs).

Usage: python3 models/onnx/bench_ort.py [--threads 2] [--runs 20] [--warmup 5] [--rounds 3]
                                        [--sizes 768x448,512x288,384x224,224x224] [--models-only]
                                        [--profile]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
VENV = os.path.join(ROOT, ".setup", "ort-venv")
WORK = os.path.join(ROOT, ".setup", "ort")
# the same override the Rust benches and tests read
WEIGHTS = os.environ.get("SPOTTER_MODEL") or os.path.join(ROOT, "models", "weights", "efficientnet-lite0.safetensors")
# pinned so that a rerun next month measures the same runtime
REQUIREMENTS = ["onnx==1.23.2", "onnxruntime==1.32.0", "numpy==2.4.6", "safetensors==0.8.0"]
# float32 sums in a different order: the head's ReLU6 outputs agree to ~1e-5; a wrong padding
# or a missed layer moves them by more than 0.1
TOLERANCE = 1e-3


def log(msg: str) -> None:
    print(f"bench-ort: {msg}", file=sys.stderr, flush=True)


def ensure_venv() -> None:
    """Re-executes this script inside .setup/ort-venv, making the environment first if needed."""
    python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    stamp = os.path.join(VENV, "spotter-requirements.sha256")
    want = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()
    have = open(stamp).read().strip() if os.path.exists(stamp) else ""
    if have != want:
        log(f"making {os.path.relpath(VENV, ROOT)} with {' '.join(REQUIREMENTS)}")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
            check=True,
        )
        with open(stamp, "w") as f:
            f.write(want + "\n")
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])


def candle_binary(models_only: bool) -> str:
    """Path of the `frame` bench binary, from the same build as `make build` (so nothing is
    built twice); `--keep-going` so that a broken crate elsewhere does not block the model's.
    With `models_only`, only the bench is built: quicker in a target directory of one's own
    (`CARGO_TARGET_DIR`, which cargo reads), where it would not share `make build`'s artifacts."""
    if models_only:
        cmd = ["cargo", "build", "-p", "spotter-models", "--bench", "frame", "--message-format=json-render-diagnostics"]
    else:
        cmd = ["cargo", "build", "--workspace", "--all-targets", "--keep-going", "--message-format=json-render-diagnostics"]
    log("building (" + " ".join(cmd[:4]) + ")")
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        log("the workspace has build errors (above); measuring the model's bench all the same")
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        target = msg.get("target") or {}
        if (
            msg.get("reason") == "compiler-artifact"
            and target.get("name") == "frame"
            and "bench" in target.get("kind", [])
            and msg.get("executable")
        ):
            return msg["executable"]
    sys.exit("bench-ort: cargo built no `frame` bench binary (models/benches/frame.rs)")


def median(v: list[float]) -> float:
    s = sorted(v)
    return s[len(s) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads for both runtimes (default: 2, this box's cores)")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per size and round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    ap.add_argument("--rounds", type=int, default=3, help="candle, then ORT, this many times")
    # 768x448: the agent's analysis size (default_width/height in agent/src/config.rs); 512x288
    # its previous one
    ap.add_argument("--sizes", default="768x448,512x288,384x224,224x224", help="WxH,WxH (multiples of 32)")
    ap.add_argument("--models-only", action="store_true", help="build only models' frame bench, not the workspace")
    ap.add_argument("--profile", action="store_true",
                    help="then time each block in both runtimes at the first size (where candle spends its time)")
    args = ap.parse_args()
    ensure_venv()

    import numpy as np
    import onnx
    import onnxruntime as ort
    from safetensors.numpy import load_file

    sys.path.insert(0, HERE)
    from lite0_onnx import INPUT, OUTPUT, build_model

    if not os.path.exists(WEIGHTS):
        sys.exit(f"bench-ort: {WEIGHTS} is missing: run `make setup`")
    os.makedirs(WORK, exist_ok=True)
    model_path = os.path.join(WORK, "efficientnet-lite0-features.onnx")
    onnx.save(build_model(load_file(WEIGHTS)), model_path)

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    inputs = {}
    for w, h in sizes:
        # a frame of random pixels, normalised as models/src/preprocess.rs does
        px = rng.integers(0, 256, size=(1, 3, h, w)).astype(np.float32)
        x = ((px - 127.0) / 128.0).astype(np.float32)
        x.tofile(os.path.join(WORK, f"input-{w}x{h}.f32"))
        inputs[(w, h)] = x

    binary = candle_binary(args.models_only)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])

    # same answer first: otherwise the ratio compares two different computations
    diffs = {}
    candle = {s: {"forward": [], "frame": []} for s in sizes}
    onnxrt = {s: [] for s in sizes}
    for round_ in range(args.rounds):
        cmd = [
            binary, "--bench", "--io-dir", WORK, "--sizes", args.sizes,
            "--warmup", str(args.warmup), "--runs", str(args.runs),
        ]
        res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
        report = json.loads(res.stdout.strip().splitlines()[-1])
        for entry, s in zip(report["sizes"], sizes):
            candle[s]["forward"].append(entry["forward_ms"])
            candle[s]["frame"].append(entry["frame_ms"])
        for s in sizes:
            x = inputs[s]
            (y,) = session.run([OUTPUT], {INPUT: x})
            if round_ == 0:
                ours = np.fromfile(os.path.join(WORK, f"candle-{s[0]}x{s[1]}.f32"), dtype=np.float32)
                diffs[s] = float(np.max(np.abs(ours.reshape(y.shape) - y)))
            for _ in range(args.warmup):
                session.run([OUTPUT], {INPUT: x})
            t = []
            for _ in range(args.runs):
                start = time.perf_counter()
                session.run([OUTPUT], {INPUT: x})
                t.append((time.perf_counter() - start) * 1000.0)
            onnxrt[s].append(median(t))

    print(
        f"EfficientNet-Lite0 to the 1280-channel head: candle {report['threads']} threads, "
        f"ONNX Runtime {ort.__version__} intra_op_num_threads={args.threads} sequential; "
        f"median of {args.runs} runs, median over {args.rounds} alternating rounds"
    )
    print(f"{'size':>8} {'candle_ms':>10} {'ort_ms':>8} {'ratio':>6} {'paired':>6} {'round_ratios':>13} "
          f"{'max_abs_diff':>13} {'candle_frame_ms':>16}")
    results = []
    worst = 0.0
    for s in sizes:
        c = median(candle[s]["forward"])
        o = median(onnxrt[s])
        f = median(candle[s]["frame"])
        worst = max(worst, diffs[s])
        # each round's candle time over the ORT time measured right after it: load that drifts
        # over the run moves both sides of a pair alike
        per_round = sorted(a / b for a, b in zip(candle[s]["forward"], onnxrt[s]))
        paired = median(per_round)
        spread = f"{per_round[0]:.2f}-{per_round[-1]:.2f}"
        print(f"{s[0]:>4}x{s[1]:<3} {c:>10.2f} {o:>8.2f} {c / o:>6.3f} {paired:>6.3f} {spread:>13} "
              f"{diffs[s]:>13.2e} {f:>16.2f}")
        results.append(
            dict(size=f"{s[0]}x{s[1]}", candle_ms=c, ort_ms=o, ratio=c / o, paired_ratio=paired,
                 round_ratios=per_round, max_abs_diff=diffs[s], candle_frame_ms=f)
        )
    print("(ratio: median candle over median ORT; paired: the median of each round's ratio; "
          "round_ratios: the lowest and highest of those)")
    print(f"(candle_frame_ms: the agent's whole per-frame recognition: preprocess, forward with the "
          f"mid-level tap, regional descriptors against {report['catalog_photos']} reference photos, "
          f"then cell similarities and geometric verification of {report['shortlist']} shortlisted "
          f"products, 9 reference views each: models/src/matching.rs)")
    with open(os.path.join(WORK, "result.json"), "w") as fh:
        json.dump(dict(threads=args.threads, runs=args.runs, rounds=args.rounds, ort=ort.__version__, sizes=results),
                  fh, indent=1)
    if args.profile:
        block_profile(binary, env, opts, model_path, sizes[0], inputs[sizes[0]], args)
    if worst > TOLERANCE:
        log(f"candle and ONNX Runtime differ by up to {worst:.2e} (> {TOLERANCE}): the graphs are not the same network")
        return 1
    return 0


def block_profile(binary, env, opts, model_path, size, x, args) -> None:
    """Each block's time in both runtimes at one size, side by side.

    candle: `EfficientNetLite0::features_timed` (timers between the blocks; block 0 includes the
    stem, which it runs fused with). ORT: its own profiler's per-node kernel times (nodes are named
    after their block by lite0_onnx.py), median over the runs, summed per block."""
    import re

    import onnxruntime as ort
    from lite0_onnx import INPUT, OUTPUT

    w, h = size
    cmd = [binary, "--bench", "--blocks", "--io-dir", WORK, "--sizes", f"{w}x{h}",
           "--warmup", str(args.warmup), "--runs", str(args.runs)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
    candle = json.loads(res.stdout.strip().splitlines()[-1])["sizes"][0]["part_ms"]

    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(WORK, "ort-profile")
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    for _ in range(args.warmup + args.runs):
        session.run([OUTPUT], {INPUT: x})
    trace = session.end_profiling()
    with open(trace) as fh:
        events = json.load(fh)
    os.remove(trace)
    per_node: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1000.0)
    blocks = len(candle) - 2
    parts = [f"block {i}" for i in range(blocks)] + ["head", "output"]
    ort_ms = [0.0] * len(parts)
    for name, times in per_node.items():
        m = re.match(r"b(\d+)\.", name)
        # the stem is counted in block 0, as candle runs it; ORT fuses the head's convolution into
        # the graph's output node; the layout reorders after it are the output
        if m:
            at = int(m.group(1))
        elif name.startswith("stem"):
            at = 0
        elif name.startswith(("head", OUTPUT)) and "Reorder" not in name:
            at = blocks
        else:
            at = blocks + 1
        ort_ms[at] += median(times[args.warmup:] or times)
    print(f"per block at {w}x{h}, ms (block 0 includes the stem; output: back to (C, H, W), which candle's head writes itself)")
    print(f"{'part':>9} {'candle_ms':>10} {'ort_ms':>8}")
    for part, c, o in zip(parts, candle, ort_ms):
        print(f"{part:>9} {c:>10.2f} {o:>8.2f}")
    print(f"{'total':>9} {sum(candle):>10.2f} {sum(ort_ms):>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
