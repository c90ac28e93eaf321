"""The fp16 variant of an exported generator graph: fp16 weights and arithmetic up to the final Tanh, fp32 after,
and the graph's discrete choices (comparisons and what they read, e.g. a self-conditioned G's cluster) in fp32.

z stays a float32 input (cast inside the graph); the Tanh and the uint8 rounding run in fp32 (fp16's spacing of
0.125 near 255 would move pixels by a grey level at random). The generators use only type-generic ops (Gemm,
Conv, ConvTranspose, Relu, Gather, Concat, Reshape, Resize), so converting float initializers and constants is
enough, except Resize's roi and scales inputs, which ONNX types as float32 whatever the data (left as they are); the
checker's type inference rejects anything else that is not type-generic. (onnxruntime.transformers.float16 / onnxconverter-common's
converter was tried: with the tail blocked it casts back to fp16 between every blocked node and writes inconsistent
value_info.)
"""
from __future__ import annotations

import numpy as np

from gan_service.training.onnx_export import ExportError

COMPARISONS = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"}


def convert_fp16(model):
    """An onnx.ModelProto -> its fp16 copy (see the module docstring); the input model is not changed."""
    import onnx

    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    body, tail = _split_at_last_tanh(list(graph.node))
    tail_in = {i for n in tail for i in n.input}
    # the discrete choices (a self-conditioned G's cluster from z) stay fp32; everything else in the body is halved
    decisions = {id(n) for n in decision_nodes(body)}
    arithmetic = [n for n in body if id(n) not in decisions]
    keep_fp32 = {n.input[i] for n in body if n.op_type == "Resize" for i in (1, 2) if i < len(n.input)}
    _halve_initializers(graph, arithmetic, tail_in, keep_fp32)
    _halve_constants_and_casts(arithmetic, keep_fp32)
    head, bridge = _casts_around_body(arithmetic, tail, tail_in)
    del graph.node[:]
    graph.node.extend(head + body + bridge + tail)
    del graph.value_info[:]                    # stale float32 annotations; shapes are re-inferred
    try:
        onnx.checker.check_model(half, full_check=True)
    except Exception as exc:
        raise ExportError(f"fp16: the converted graph does not type-check ({exc}); export with --no-fp16") from exc
    return half


def _split_at_last_tanh(nodes: list) -> tuple[list, list]:
    """(nodes before the final Tanh, the Tanh and everything after it)."""
    tanh = [i for i, n in enumerate(nodes) if n.op_type == "Tanh"]
    if not tanh:
        raise ExportError("fp16: the graph has no final Tanh to split the fp16 body from the fp32 rounding")
    return nodes[:tanh[-1]], nodes[tanh[-1]:]


def decision_nodes(body: list) -> list:
    """The comparisons in the body and every body node they read from: the graph's discrete choices, such as a
    self-conditioned generator's cluster (training.nets.ClusterDrawingGenerator: Phi(z[:, -1]) against the
    clusters' cumulative frequencies). They stay fp32, reading the fp32 z: rounded to fp16, a latent near a boundary
    would pick the neighbouring cluster, a wholly different image rather than a grey level off."""
    producer = {o: n for n in body for o in n.output}
    found, stack = {}, [n for n in body if n.op_type in COMPARISONS]     # found: id -> node (protobufs don't hash)
    while stack:
        node = stack.pop()
        if id(node) not in found:
            found[id(node)] = node
            stack += [producer[i] for i in node.input if i in producer]
    return list(found.values())


def _halve_initializers(graph, body: list, tail_in: set[str], keep_fp32: set[str]) -> None:
    """Float weights read by the body become fp16 (but those in keep_fp32); one that the fp32 tail reads too gets
    an fp16 copy."""
    from onnx import TensorProto, numpy_helper

    body_in = {i for n in body for i in n.input}
    extra = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or init.name not in body_in or init.name in keep_fp32:
            continue
        arr = numpy_helper.to_array(init)
        arr16 = arr.astype(np.float16)
        if not np.isfinite(arr16).all():
            raise ExportError(f"fp16: weight {init.name!r} has values beyond the fp16 range "
                              f"(max |w| = {np.abs(arr).max():.4g}); export with --no-fp16")
        if init.name in tail_in:
            new_name = f"{init.name}__fp16"
            extra.append(numpy_helper.from_array(arr16, new_name))
            _rename_inputs(body, init.name, new_name)
        else:
            init.CopyFrom(numpy_helper.from_array(arr16, init.name))
    graph.initializer.extend(extra)


def _halve_constants_and_casts(body: list, keep_fp32: set[str]) -> None:
    """Float Constant nodes become fp16 constants (but those in keep_fp32); Casts to float cast to fp16 instead."""
    from onnx import TensorProto, numpy_helper

    for n in body:
        if n.op_type == "Constant" and n.output[0] in keep_fp32:
            continue
        for a in n.attribute:
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
            elif n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16


def _casts_around_body(body: list, tail: list, tail_in: set[str]) -> tuple[list, list]:
    """The Cast of z into the fp16 body, and the Casts of every body output the fp32 tail reads."""
    from onnx import TensorProto, helper

    _rename_inputs(body, "z", "z_fp16")
    head = [helper.make_node("Cast", ["z"], ["z_fp16"], name="cast_z_to_fp16", to=TensorProto.FLOAT16)]
    produced = {o for n in body for o in n.output}
    bridge = []
    for name in sorted(tail_in & produced):
        bridge.append(helper.make_node("Cast", [name], [f"{name}_fp32"], name=f"cast_{name}_to_fp32",
                                       to=TensorProto.FLOAT))
        _rename_inputs(tail, name, f"{name}_fp32")
    return head, bridge


def _rename_inputs(nodes, old: str, new: str) -> None:
    for n in nodes:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
