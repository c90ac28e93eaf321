"""A generator as an ONNX graph: G plus the uint8 post-processing, traced with a dynamic batch axis.

``export_onnx`` is the one tracing path (also used by training/classifier.py through ``quiet_exporter`` and
``rename_batch_dim``); ``ExportError`` is the error of every step of an export.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch

EXAMPLE_BATCH = 3               # torch.export specialises sizes 0 and 1; trace with a batch that is neither


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that failed a check (nothing was written)."""


class ImageGenerator(torch.nn.Module):
    """G plus the post-processing the service would otherwise do: [-1, 1] NCHW float -> uint8 NHWC.

    The rounding is exactly core.imaging.to_uint8: clip(floor((x + 1) * 127.5 + 0.5), 0, 255).
    """

    def __init__(self, generator: torch.nn.Module, conditional: bool):
        super().__init__()
        self.generator, self.conditional = generator, conditional

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        x = self.generator(z, label if self.conditional else None).float()       # [N, C, H, W] in [-1, 1]
        x = torch.clamp(torch.floor((x + 1.0) * 127.5 + 0.5), 0.0, 255.0)
        return x.to(torch.uint8).permute(0, 2, 3, 1)                           # [N, H, W, C] uint8


@contextlib.contextmanager
def quiet_exporter():
    """torch.onnx prints progress to stdout and warns about its own internals; keep stdout for the CLI's result."""
    noisy = ["torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript"]
    old = {n: logging.getLogger(n).level for n in noisy}
    buf = io.StringIO()
    try:
        for n in noisy:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*opset.*")
            yield buf
    finally:
        for n, level in old.items():
            logging.getLogger(n).setLevel(level)


def rename_batch_dim(model, name: str = "batch") -> None:
    """Give the symbolic batch dimension one readable name in every input, output and value_info."""
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    if not first.dim_param:
        raise ExportError(f"the exported graph has a fixed batch size ({first.dim_value}); expected a dynamic axis")
    old = first.dim_param
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = name


def export_onnx(generator: torch.nn.Module, latent_dim: int, num_classes: int, opset: int):
    """Trace the wrapped generator and return an onnx.ModelProto (checked, dynamic batch axis named "batch").

    Exporter choice (torch 2.13): torch.export.export(strict=True) -> torch.onnx.export(ExportedProgram, dynamo=True).
    - The legacy TorchScript exporter (dynamo=False) is deprecated ("will be removed") and *traces* the nets'
      ``.view(len(z), ...)`` into a constant, so the model only runs at the traced batch size; it also leaves
      BatchNormalization nodes unfolded.
    - The dynamo exporter on its own uses non-strict torch.export, where ``len(z)`` turns the symbolic batch
      into an int and specialises it (torch.onnx then silently emits a fixed batch). Strict torch.export traces
      bytecode with dynamo, which keeps ``len(z)`` symbolic, so we build the ExportedProgram ourselves.
    - The result is clean: eval-mode BatchNorm folded into Gemm/ConvTranspose by the ONNX optimiser, Embedding
      as Gather, then Tanh, the rounding ops, Cast and Transpose. Its native opset is 18; a lower --opset is
      converted by onnx's version converter and verified below.
    """
    import onnx

    wrapper = ImageGenerator(generator.eval(), num_classes > 0).eval()
    z = torch.randn(EXAMPLE_BATCH, latent_dim, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch")
    if num_classes:
        args = (z, torch.arange(EXAMPLE_BATCH, dtype=torch.int64) % num_classes)
        names, dynamic = ["z", "label"], {"z": {0: batch}, "label": {0: batch}}
    else:
        args, names, dynamic = (z,), ["z"], {"z": {0: batch}}
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=True)
            onnx_program = torch.onnx.export(program, args, dynamo=True, opset_version=opset, input_names=names,
                                             output_names=["image"], optimize=True, verify=False, report=False)
        model = onnx_program.model_proto
    except Exception as exc:  # torch raises many types from tracing/translation
        first = (str(exc).strip().splitlines() or [""])[0][:500]
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {first})") from exc
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ExportError(f"--opset {opset}: the exporter produced opset {got} (its native opset is 18; "
                          "the conversion to the requested opset failed); choose a higher --opset (18 always works)")
    rename_batch_dim(model)
    model.producer_name = "gan-service training/onnx_export.py"
    model.doc_string = "GAN generator: z[, label] -> uint8 NHWC"
    onnx.checker.check_model(model, full_check=True)
    return model
