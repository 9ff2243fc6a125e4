#!/usr/bin/env python3
"""EfficientNet-Lite0 as an ONNX graph, built with onnx.helper from Spotter's converted weights.

The graph is the network that `models/src/efficientnet.rs` runs, up to the same output: the
1280-channel head feature map `(1, 1280, H/32, W/32)` of a `(1, 3, H, W)` input normalised as
`(x - 127) / 128`. Batch norm is folded into each convolution (as candle does at load time),
ReLU6 is `Clip(0, 6)`, and every convolution pads like TensorFlow's SAME (`SAME_UPPER`: the odd
extra pixel after), which is the convention `models/reference` settled for this checkpoint. The
architecture tables come from that reference script, so there is one description of Lite0 in
Python, not two.

Usage: python lite0_onnx.py WEIGHTS.safetensors OUT.onnx   (normally run by bench_ort.py)
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from effnet_lite0_ref import BN_EPS, HEAD_OUT, STEM_OUT, block_configs  # noqa: E402

# ORT 1.2x supports opset 21; 17 is enough for everything used here and widely readable.
OPSET = 17
INPUT = "input"
OUTPUT = "features"


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.w = weights
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.used: set[str] = set()
        # ReLU6 bounds, shared by every Clip
        self.lo = self._const("relu6_min", np.array(0.0, np.float32))
        self.hi = self._const("relu6_max", np.array(6.0, np.float32))

    def get(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.w[name].astype(np.float64)

    def _const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def folded_conv(self, x: str, conv: str, bn: str, stride: int, group: int, relu6: bool, name: str) -> str:
        """Conv with batch norm folded into weight and bias, then optionally ReLU6."""
        w = self.get(f"{conv}.weight")
        scale = self.get(f"{bn}.weight") / np.sqrt(self.get(f"{bn}.running_var") + BN_EPS)
        shift = self.get(f"{bn}.bias") - self.get(f"{bn}.running_mean") * scale
        w_name = self._const(f"{name}.w", (w * scale[:, None, None, None]).astype(np.float32))
        b_name = self._const(f"{name}.b", shift.astype(np.float32))
        k = w.shape[-1]
        y = f"{name}.conv"
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], group=group)
        if k > 1:
            attrs["auto_pad"] = "SAME_UPPER"
        self.nodes.append(helper.make_node("Conv", [x, w_name, b_name], [y], name=y, **attrs))
        if not relu6:
            return y
        out = f"{name}.relu6"
        self.nodes.append(helper.make_node("Clip", [y, self.lo, self.hi], [out], name=out))
        return out


def build_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The Lite0 backbone to the head's feature map; H and W are free (multiples of 32)."""
    g = _Graph(weights)
    x = g.folded_conv(INPUT, "_conv_stem", "_bn0", 2, 1, True, "stem")
    for i, c in enumerate(block_configs()):
        pre = f"_blocks.{i}"
        inp = x
        mid = c["cin"] * c["e"]
        if c["e"] != 1:
            x = g.folded_conv(x, f"{pre}._expand_conv", f"{pre}._bn0", 1, 1, True, f"b{i}.expand")
        x = g.folded_conv(x, f"{pre}._depthwise_conv", f"{pre}._bn1", c["s"], mid, True, f"b{i}.dw")
        x = g.folded_conv(x, f"{pre}._project_conv", f"{pre}._bn2", 1, 1, False, f"b{i}.project")
        if c["s"] == 1 and c["cin"] == c["cout"]:
            y = f"b{i}.add"
            g.nodes.append(helper.make_node("Add", [x, inp], [y], name=y))
            x = y
    x = g.folded_conv(x, "_conv_head", "_bn1", 1, 1, True, "head")
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT], name=OUTPUT))

    # every backbone tensor must have been used: a silently skipped layer would still "run"
    unused = sorted(k for k in weights if k not in g.used and not k.startswith("_fc.") and "num_batches" not in k)
    if unused:
        raise ValueError(f"weights the graph did not use: {unused}")
    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0_features",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, HEAD_OUT, "fh", "fw"])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spotter")
    # IR 8 keeps the file loadable by older runtimes; nothing here needs newer
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    assert weights["_conv_stem.weight"].shape[0] == STEM_OUT
    return model


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    model = build_model(load_file(sys.argv[1]))
    onnx.save(model, sys.argv[2])
    print(f"wrote {sys.argv[2]} ({len(model.graph.node)} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
