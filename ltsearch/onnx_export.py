"""A ticket as an ONNX model, and the check that onnxruntime computes what PyTorch computes.

The network is exported in eval mode (BatchNorm on its running statistics, as the evaluate stage measures
test accuracy) with its masks multiplied in: the pruned weights are zeros in the graph's initializers, where
a sparsity-aware runtime or a compressor can use them. The exporter is `torch.onnx.export(dynamo=True)`
(it needs the onnxscript package); BatchNorm after a convolution is folded into it by the exporter's
optimiser, which keeps the zeros. The graph has one input `input` (float32, [batch, *input_shape], the batch
size free) and one output `logits`; the model's metadata_props say what the input must be (shape,
normalisation) and which ticket it is.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ltsearch.errors import ConfigError
from ltsearch.masking import without_masks

OPSET = 18
INPUT, OUTPUT = "input", "logits"
EXTRA = "export"  # the ltsearch extra that installs what ONNX export needs
NEEDS = ("onnx", "onnxscript", "onnxruntime")


def missing_packages() -> list[str]:
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def require_extra(what: str = "--format onnx") -> None:
    """Refuse, before any work, when the packages ONNX export needs are not installed, naming the command."""
    missing = missing_packages()
    if missing:
        raise ConfigError(f"{what} needs the {', '.join(missing)} package{'s' if len(missing) > 1 else ''}, which "
                          f"{'are' if len(missing) > 1 else 'is'} not installed: pip install 'ltsearch[{EXTRA}]'")


def to_onnx(model: nn.Module, input_shape: tuple[int, ...], metadata: dict[str, str] | None = None) -> bytes:
    """The serialised ONNX model of `model` (masks multiplied in, eval mode, on the CPU) for inputs of shape
    [batch, *input_shape]."""
    require_extra("ONNX export")
    net = without_masks(model).cpu().eval()
    example = torch.zeros(2, *input_shape)  # a batch of 2: a batch of 1 would be specialised to 1
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch},), opset_version=OPSET, verbose=False)
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def session(data: bytes, threads: int = 0, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Any:
    """An onnxruntime session of a serialised model (`threads` > 0: that many intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(data, sess_options=options, providers=list(providers))


@dataclass
class OnnxCheck:
    """onnxruntime against PyTorch on the same samples: the largest logit difference and both accuracies."""

    samples: int
    max_abs_diff: float
    torch_acc: float
    onnx_acc: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.torch_acc == self.onnx_acc

    def line(self) -> str:
        return (f"onnxruntime on {self.samples} test samples: largest logit difference from PyTorch "
                f"{self.max_abs_diff:.2g} (tolerance {self.tolerance:g}), accuracy {self.onnx_acc:.4f} "
                f"(PyTorch {self.torch_acc:.4f})")


def check(data: bytes, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], tolerance: float = 1e-4
          ) -> OnnxCheck:
    """Run the ONNX model in onnxruntime and `model` (eval mode, CPU) on the same labelled batches."""
    net = without_masks(model).cpu().eval()
    runtime = session(data)
    samples, worst, right_torch, right_onnx = 0, 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            x, y = x.cpu().float().contiguous(), y.cpu()
            expected = net(x)
            got = torch.from_numpy(runtime.run([OUTPUT], {INPUT: x.numpy()})[0])
            diff = float((got - expected).abs().max())
            worst = max(worst, diff if math.isfinite(diff) else math.inf)  # a NaN is no agreement
            right_torch += int((expected.argmax(1) == y).sum())
            right_onnx += int((got.argmax(1) == y).sum())
            samples += int(y.numel())
    if not samples:
        raise ConfigError("the ONNX check got no test samples")
    return OnnxCheck(samples, worst, right_torch / samples, right_onnx / samples, tolerance)
