"""MobileNetV2's real ImageNet weights (bench/zoo.py) in the file forms other exporters and tools
write, each a way a user's ONNX file differs from a fresh torch export:

- mnv2_opset9: the TorchScript exporter at opset 9 with every weight also a graph input (the
  ONNX Model Zoo's classic files), batch fixed at 1;
- mnv2_fp16: fp16 throughout (ONNX Runtime's float16 converter), fp16 in and out;
- mnv2_fp16_io32: fp16 inside fp32 inputs and outputs (the converter's keep_io_types), its input
  Casts listed after their readers (ONNX Runtime runs it; the ONNX checker refuses it);
- mnv2_external: weights in an external data file;
- mnv2_nhwc: a channels-last input with a Transpose in front, as tf2onnx writes Keras models;
- mnv2_uint8: channels-last uint8 pixels in, the normalisation inside the graph (an export that
  bakes its preprocessing in).
Data: photo crops as image folders (bench/zoo.py), the same for every form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    from bench import zoo
    from bench.zoo_case import ZooCase
except ImportError:  # run as a script from bench/
    import zoo
    from zoo_case import ZooCase

NAMES = ("mnv2_opset9", "mnv2_fp16", "mnv2_fp16_io32", "mnv2_external", "mnv2_nhwc", "mnv2_uint8")
IMAGENET = ["--resize", "256", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def _front(model, nodes: list, new_input) -> None:
    """MODEL's first input replaced by NEW_INPUT, NODES in front making what it was."""
    graph = model.graph
    old = graph.input[0].name
    for node in graph.node:
        node.input[:] = [nodes[-1].output[0] if name == old else name for name in node.input]
    rest, inputs = list(graph.node), [new_input, *graph.input[1:]]
    del graph.node[:], graph.input[:]
    graph.node.extend([*nodes, *rest])
    graph.input.extend(inputs)


def write_models(directory: Path) -> dict[str, Path]:
    """The six files in DIRECTORY (written once)."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.onnx" for name in NAMES}
    if all(p.is_file() for p in paths.values()):
        return paths
    module, x = zoo.mobilenet_v2().eval(), torch.randn(1, 3, 224, 224)
    torch.onnx.export(
        module, (x,), str(paths["mnv2_opset9"]), dynamo=False, opset_version=9,
        keep_initializers_as_inputs=True, input_names=["data"], output_names=["prob"],
    )  # fmt: skip
    base = directory / "base.onnx"
    torch.onnx.export(
        module, (x,), str(base), dynamo=False, opset_version=13, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )  # fmt: skip
    onnx.save(convert_float_to_float16(onnx.load(str(base))), str(paths["mnv2_fp16"]))
    io32 = convert_float_to_float16(onnx.load(str(base)), keep_io_types=True)
    onnx.save(io32, str(paths["mnv2_fp16_io32"]))
    data = paths["mnv2_external"].with_suffix(".onnx.data")
    data.unlink(missing_ok=True)
    onnx.save(
        onnx.load(str(base)), str(paths["mnv2_external"]), save_as_external_data=True, location=data.name
    )
    nhwc = onnx.load(str(base))
    _front(
        nhwc, [helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2])],
        helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", 224, 224, 3]),
    )  # fmt: skip
    onnx.save(nhwc, str(paths["mnv2_nhwc"]))
    pixels = onnx.load(str(base))
    for name, values in (("mean", (0.485, 0.456, 0.406)), ("std", (0.229, 0.224, 0.225))):
        array = (np.array(values, np.float32) * 255).reshape(1, 1, 1, 3)
        pixels.graph.initializer.append(numpy_helper.from_array(array, name))
    _front(
        pixels,
        [
            helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["image_f", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["normalised"]),
            helper.make_node("Transpose", ["normalised"], ["nchw"], perm=[0, 3, 1, 2]),
        ],
        helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 224, 224, 3]),
    )
    onnx.save(pixels, str(paths["mnv2_uint8"]))
    base.unlink()
    return paths


def cases(work: Path, n_calib: int = 200, n_eval: int = 300) -> list[ZooCase]:
    """The six forms in WORK, with photo folders to calibrate and evaluate on."""
    work = Path(work)
    paths = write_models(work / "formats")
    folders = []
    for name, n, seed in (("calib", n_calib, 0), ("eval", n_eval, 1)):
        folder = work / f"format_photos_{name}{n}"
        if not folder.is_dir():
            zoo.write_image_folder(folder, n, seed=seed)
        folders.append(folder)
    data = f"photo crops, 224x224 ({n_calib} calib, {n_eval} eval)"
    return [
        ZooCase(
            name, paths[name], *folders, {}, ["--resize", "256"] if name == "mnv2_uint8" else IMAGENET, data
        )
        for name in NAMES
    ]
