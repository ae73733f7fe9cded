#!/usr/bin/env python3
"""Make qvision's PyTorch/torchvision parity fixtures.

Python is a test-time oracle only: this script is run by developers (not CI) and its small
outputs are committed under fixtures/. Requires torch, torchvision, numpy, pillow.

  python scripts/make_fixtures.py parity [MODEL...]   # fixtures/parity/<model>.json
  python scripts/make_fixtures.py transforms          # fixtures/transforms.json
  python scripts/make_fixtures.py weights             # fixtures/weights/* (pth zip/legacy, safetensors)
  python scripts/make_fixtures.py preprocess          # fixtures/preprocess/*
  python scripts/make_fixtures.py real IMAGE_DIR WEIGHTS  # fixtures/real/mobilenet_v2_foolbox.json
  python scripts/make_fixtures.py onnx                # fixtures/onnx/* (torch.onnx exports, an ORT QDQ model)
  python scripts/make_fixtures.py onnx-zoo DIR MODEL... # larger torch.onnx exports for check_import

Parity fixtures use "formula weights": every state-dict entry is computed from its key and
shape by the rule below, which qvision implements identically in
crates/qvision-graph/src/weights.rs. So no weight file needs to be committed.
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "fixtures")
M64 = (1 << 64) - 1
GOLDEN = np.uint64(0x9E3779B97F4A7C15)

CLASSIFICATION = (
    "resnet18 resnet34 resnet50 resnet101 resnet152 resnext50_32x4d resnext101_32x8d resnext101_64x4d "
    "wide_resnet50_2 wide_resnet101_2 densenet121 densenet161 densenet169 densenet201 "
    "efficientnet_b0 efficientnet_b1 efficientnet_b2 efficientnet_b3 efficientnet_b4 efficientnet_b5 "
    "efficientnet_b6 efficientnet_b7 efficientnet_v2_s efficientnet_v2_m efficientnet_v2_l "
    "mobilenet_v2 mobilenet_v3_large mobilenet_v3_small squeezenet1_0 squeezenet1_1 "
    "mnasnet0_5 mnasnet0_75 mnasnet1_0 mnasnet1_3 shufflenet_v2_x0_5 shufflenet_v2_x1_0 "
    "shufflenet_v2_x1_5 shufflenet_v2_x2_0 googlenet inception_v3 "
    "convnext_tiny convnext_small convnext_base convnext_large "
    "regnet_x_400mf regnet_x_800mf regnet_x_1_6gf regnet_x_3_2gf regnet_x_8gf regnet_x_16gf regnet_x_32gf "
    "regnet_y_400mf regnet_y_800mf regnet_y_1_6gf regnet_y_3_2gf regnet_y_8gf regnet_y_16gf regnet_y_32gf "
    "regnet_y_128gf vgg11 vgg11_bn vgg13 vgg13_bn vgg16 vgg16_bn vgg19 vgg19_bn"
).split()

# Parity input side per model (small to keep the Rust test suite fast; inception needs >= 75).
INPUT_SIZE = {"inception_v3": 96}
DEFAULT_INPUT_SIZE = 64


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def formula_uniform(seed: int, n: int) -> np.ndarray:
    """splitmix64(seed + (i+1)*golden) -> top 24 bits -> [-0.5, 0.5) as float32 (exact)."""
    out = np.empty(n, dtype=np.float32)
    chunk = 1 << 22
    with np.errstate(over="ignore"):
        for start in range(0, n, chunk):
            i = np.arange(start + 1, min(n, start + chunk) + 1, dtype=np.uint64)
            z = np.uint64(seed) + i * GOLDEN
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            out[start:start + len(i)] = (z >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0) - np.float32(0.5)
    return out


def formula_tensor(name: str, shape, gain: float = 24.0) -> np.ndarray:
    """`gain` sets conv/linear weights to uniform with variance gain/12/fan_in (24: He)."""
    n = int(np.prod(shape)) if len(shape) else 1
    if name.endswith("running_var"):
        off, scale = 1.0, 0.4
    elif name.endswith("running_mean"):
        off, scale = 0.0, 0.2
    elif name.endswith("layer_scale"):
        off, scale = 0.5, 0.2
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        off, scale = 0.0, float(np.float32(np.sqrt(gain / max(fan_in, 1))))
    elif name.endswith("weight"):
        off, scale = 1.0, 0.2
    else:
        off, scale = 0.0, 0.2
    u = formula_uniform(fnv1a64(name), n)
    v = u * np.float32(scale) + np.float32(off)
    return v.astype(np.float32).reshape(shape)


def build(name):
    import torchvision

    kwargs = {}
    if name in ("googlenet", "inception_v3"):
        kwargs = dict(transform_input=True, aux_logits=True, init_weights=False)
    return torchvision.models.get_model(name, weights=None, **kwargs)


def fill_formula(model, gain=24.0):
    import torch

    sd = model.state_dict()
    new = model.state_dict()  # keeps _metadata (MNASNet checks its version)
    for k, v in sd.items():
        if v.dtype.is_floating_point:
            new[k] = torch.from_numpy(formula_tensor(k, tuple(v.shape), gain).copy())
        else:
            new[k] = torch.zeros_like(v)
    model.load_state_dict(new)
    return sd


def parity(models):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    os.makedirs(os.path.join(FIX, "parity"), exist_ok=True)
    for name in models or CLASSIFICATION:
        size = INPUT_SIZE.get(name, DEFAULT_INPUT_SIZE)
        x = torch.from_numpy((formula_uniform(fnv1a64("input"), 3 * size * size) * 2).reshape(1, 3, size, size))
        # He gain unless the network is ill-conditioned under it: f32 and f64 torchvision must
        # agree to 1e-5, or no f32 implementation could be checked against the fixture.
        for gain in (24.0, 12.0, 6.0):
            model = build(name).eval()
            sd = fill_formula(model, gain)
            with torch.no_grad():
                y = model(x)
                y64 = model.double()(x.double())
            if not torch.is_tensor(y):
                y, y64 = y[0], y64[0]
            cond = float((y.double() - y64).abs().max() / max(1.0, float(y64.abs().max())))
            if cond < 1e-5:
                break
            print(f"{name}: gain {gain} is ill-conditioned (f32 vs f64 {cond:.2e})", flush=True)
        num_params = sum(p.numel() for p in model.parameters())
        out = {
            "model": name,
            "torch": torch.__version__,
            "input_shape": [1, 3, size, size],
            "gain": gain,
            "f32_vs_f64": cond,
            "num_params": num_params,
            "keys": [[k, list(v.shape)] for k, v in sd.items()],
            "logits": [float(v) for v in y[0].tolist()],
        }
        with open(os.path.join(FIX, "parity", f"{name}.json"), "w") as f:
            json.dump(out, f, separators=(",", ":"))
        print(f"{name}: {num_params} params, max|logit| {float(y.abs().max()):.3f}", flush=True)
        del model


def transforms():
    import torchvision
    from torchvision.transforms import InterpolationMode

    out = {}
    for name in CLASSIFICATION:
        w = torchvision.models.get_model_weights(name).DEFAULT
        t = w.transforms()
        out[name] = {
            "weights": str(w),
            "crop_size": t.crop_size[0],
            "resize_size": t.resize_size[0],
            "interpolation": {InterpolationMode.BILINEAR: "bilinear", InterpolationMode.BICUBIC: "bicubic"}[t.interpolation],
            "mean": list(t.mean),
            "std": list(t.std),
            "num_params": w.meta["num_params"],
            "gflops": w.meta.get("_ops"),
        }
    with open(os.path.join(FIX, "transforms.json"), "w") as f:
        json.dump(out, f, indent=1)


def weights():
    """Tiny state dicts in every format qvision reads, with their expected contents."""
    import torch
    from safetensors.torch import save_file

    out = os.path.join(FIX, "weights")
    os.makedirs(out, exist_ok=True)
    conv = torch.from_numpy(formula_tensor("conv.weight", (4, 3, 3, 3)))
    fc = torch.from_numpy(formula_tensor("fc.weight", (5, 4)))
    sd = {
        "conv.weight": conv,
        "bn.running_var": torch.from_numpy(formula_tensor("bn.running_var", (4,))),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        # a transposed (non-contiguous) view and a slice sharing one storage
        "fc.weight": fc.t().contiguous().t(),
        "fc.bias": fc[:, 0],
        "half": torch.tensor([1.5, -2.0, 65504.0], dtype=torch.float16),
        "double": torch.tensor([[0.25, -1e-3]], dtype=torch.float64),
    }
    torch.save(sd, os.path.join(out, "tiny_zip.pth"))
    torch.save(sd, os.path.join(out, "tiny_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save({"state_dict": sd, "epoch": 3}, os.path.join(out, "tiny_checkpoint.pth"))
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "tiny.safetensors"))
    expected = {k: {"shape": list(v.shape), "values": [float(x) for x in v.double().flatten().tolist()]} for k, v in sd.items()}
    with open(os.path.join(out, "tiny_expected.json"), "w") as f:
        json.dump(expected, f, indent=0)


def preprocess():
    """torchvision eval transforms on a lossless PNG, for bit-exact checks of resize/crop/normalize."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    out = os.path.join(FIX, "preprocess")
    os.makedirs(out, exist_ok=True)
    w, h = 150, 113
    u = formula_uniform(fnv1a64("image"), w * h * 3).reshape(h, w, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255.0 / w, yy * 255.0 / h, (xx + yy) * 127.0 / (w + h)], axis=-1)
    img = np.clip(base + u * 120, 0, 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(out, "image.png"))
    pil = Image.open(os.path.join(out, "image.png")).convert("RGB")
    cases = []
    for resize, crop, interp in [(80, 64, "bilinear"), (70, 64, "bicubic"), (64, 64, "bicubic"), (120, 100, "bilinear")]:
        mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[interp]
        t = ImageClassification(crop_size=crop, resize_size=resize, interpolation=mode)(pil)
        cases.append({"resize": resize, "crop": crop, "interpolation": interp, "shape": list(t.shape),
                      "values": [float(v) for v in t.flatten().tolist()]})
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(cases, f, separators=(",", ":"))


def real(image_dir, weights_path):
    """torchvision's top-5 for the official MobileNetV2 on foolbox's 20 ImageNet images."""
    import glob

    import torch
    import torchvision
    from PIL import Image

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights_path, map_location="cpu"))
    model.eval()
    tf = torchvision.models.MobileNet_V2_Weights.DEFAULT.transforms()
    rows = []
    for p in sorted(glob.glob(os.path.join(image_dir, "imagenet_*.jpg"))):
        x = tf(Image.open(p).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            prob = model(x).softmax(-1)[0]
        top = prob.topk(5)
        rows.append({"image": os.path.basename(p), "label": int(os.path.basename(p).split("_")[2].split(".")[0]),
                     "top5": [int(i) for i in top.indices], "prob": [float(v) for v in top.values]})
    os.makedirs(os.path.join(FIX, "real"), exist_ok=True)
    with open(os.path.join(FIX, "real", "mobilenet_v2_foolbox.json"), "w") as f:
        json.dump({"transform": str(tf), "images": rows}, f, indent=1)
    print(sum(r["top5"][0] == r["label"] for r in rows), "of", len(rows), "top-1 correct")


def observer_batches():
    """Calibration-like batches both sides compute: skewed, shifted, with sparse outliers."""
    out = []
    for b, (scale, shift) in enumerate([(2.0, 0.3), (1.5, -0.2), (3.0, 0.5), (1.0, 0.0), (2.5, 1.0)]):
        u = formula_uniform(fnv1a64(f"obs{b}"), 4096)
        v = (u * np.float32(scale) + np.float32(shift)).astype(np.float32)
        v = (v * v * np.sign(v)).astype(np.float32)  # heavier tails
        v[::997] = (v[::997] * np.float32(8.0)).astype(np.float32)
        out.append(v)
    return out


def observers():
    """scale / zero point of torch.ao observers on deterministic batches."""
    import torch
    from torch.ao.quantization.observer import (HistogramObserver, MinMaxObserver,
                                                MovingAverageMinMaxObserver, PerChannelMinMaxObserver)

    batches = [torch.from_numpy(b) for b in observer_batches()]
    res = {}
    cases = {
        "minmax_u8_affine": MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine),
        "minmax_s8_symmetric": MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        "minmax_u8_reduce": MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=True),
        "moving_average_u8": MovingAverageMinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine),
        "histogram_u8_affine": HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine),
        "histogram_s8_symmetric": HistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
    }
    for name, obs in cases.items():
        for b in batches:
            obs(b)
        scale, zp = obs.calculate_qparams()
        entry = {"scale": float(scale.reshape(-1)[0]), "zero_point": int(zp.reshape(-1)[0])}
        if isinstance(obs, HistogramObserver):
            lo, hi = obs._non_linear_param_search()
            entry.update({"search_min": float(lo), "search_max": float(hi),
                          "min": float(obs.min_val), "max": float(obs.max_val),
                          "hist_sum": float(obs.histogram.sum())})
        res[name] = entry
    # one far outlier: the L2 search must trim most of the range
    obs = HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    for i, b in enumerate(observer_batches()):
        b = b.copy()
        if i == 2:
            b[5] = np.float32(1000.0)
        obs(torch.from_numpy(b))
    scale, zp = obs.calculate_qparams()
    lo, hi = obs._non_linear_param_search()
    res["histogram_outlier"] = {"scale": float(scale), "zero_point": int(zp), "search_min": float(lo), "search_max": float(hi)}
    w = torch.from_numpy(np.concatenate(observer_batches())[: 64 * 320].reshape(64, 320))
    pc = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    pc(w)
    s, z = pc.calculate_qparams()
    res["per_channel_s8_symmetric"] = {"scales": [float(v) for v in s], "zero_points": [int(v) for v in z]}
    os.makedirs(os.path.join(FIX, "quant"), exist_ok=True)
    with open(os.path.join(FIX, "quant", "observers.json"), "w") as f:
        json.dump(res, f, indent=1)


def onnx_fixtures():
    """Small torchvision ONNX exports (as users make them: torch.onnx.export with constant
    folding) with formula weights, their PyTorch outputs, and a QDQ model made by ONNX Runtime's
    quantize_static with ONNX Runtime's outputs."""
    import torch
    import onnxruntime as ort
    from onnxruntime import quantization as oq

    out = "fixtures/onnx"
    os.makedirs(out, exist_ok=True)
    cases = [
        ("squeezenet1_1", 13, True, 96),
        ("mobilenet_v3_small", 17, False, 96),
        ("shufflenet_v2_x0_5", 11, False, 64),
    ]
    meta = {}
    for name, opset, dynamic, size in cases:
        import torchvision

        m = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
        fill_formula(m, gain=12.0)
        x = formula_uniform(7, 2 * 3 * size * size).reshape(2, 3, size, size).astype(np.float32) * 4
        path = f"{out}/{name}_opset{opset}.onnx"
        kw = dict(dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}) if dynamic else {}
        torch.onnx.export(m, torch.from_numpy(x[:1]), path, opset_version=opset, input_names=["input"],
                          output_names=["logits"], do_constant_folding=True, dynamo=False, **kw)
        with torch.no_grad():
            y = m(torch.from_numpy(x if dynamic else x[:1])).numpy()
        meta[name] = dict(file=os.path.basename(path), opset=opset, size=size, batch=int(y.shape[0]),
                          input_seed=7, input_scale=4.0, logits=y.reshape(-1).tolist())
    # ONNX Runtime's own int8 QDQ model of squeezenet1_1
    src = f"{out}/squeezenet1_1_opset13.onnx"

    class Reader(oq.CalibrationDataReader):
        def __init__(self):
            self.items = [dict(input=(formula_uniform(100 + i, 3 * 96 * 96).reshape(1, 3, 96, 96) * 4).astype(np.float32)) for i in range(8)]
        def get_next(self):
            return self.items.pop() if self.items else None

    qdq = f"{out}/squeezenet1_1_qdq.onnx"
    oq.quantize_static(src, qdq, Reader(), quant_format=oq.QuantFormat.QDQ, per_channel=True,
                       activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8)
    s = ort.InferenceSession(qdq, providers=["CPUExecutionProvider"])
    x = (formula_uniform(7, 2 * 3 * 96 * 96).reshape(2, 3, 96, 96) * 4).astype(np.float32)
    y = s.run(None, {"input": x})[0]
    meta["squeezenet1_1_qdq"] = dict(file=os.path.basename(qdq), opset=13, size=96, batch=2,
                                     input_seed=7, input_scale=4.0, logits=y.reshape(-1).tolist())
    with open(f"{out}/expected.json", "w") as f:
        json.dump(meta, f)


def onnx_zoo(out, names):
    """Not committed (too large): torch.onnx.export of zoo models at 64x64 (Inception 96),
    alternating opsets 11/13/17 and dynamic/static batch, with PyTorch's logits in meta.json.
    `cargo run --release -p qvision-onnx --example check_import -- DIR` compares qvision."""
    import torch
    import torchvision

    os.makedirs(out, exist_ok=True)
    meta = {}
    for i, name in enumerate(names):
        size = 96 if name == "inception_v3" else 64
        kw = dict(init_weights=False, aux_logits=True) if name in ("googlenet", "inception_v3") else {}
        m = torchvision.models.get_model(name, weights=None, num_classes=10, **kw).eval()
        fill_formula(m, gain=12.0)
        x = (formula_uniform(5, 2 * 3 * size * size).reshape(2, 3, size, size) * 4).astype(np.float32)
        opset = [11, 13, 17][i % 3]
        dyn = i % 2 == 0
        path = f"{out}/{name}.onnx"
        axes = dict(dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}}) if dyn else {}
        torch.onnx.export(m, torch.from_numpy(x[:1]), path, opset_version=opset, input_names=["input"],
                          output_names=["logits"], do_constant_folding=True, dynamo=False, **axes)
        with torch.no_grad():
            y = m(torch.from_numpy(x if dyn else x[:1]))
            y = y[0] if isinstance(y, tuple) else y
        meta[name] = dict(size=size, batch=2 if dyn else 1, opset=opset, logits=y.numpy().reshape(-1).tolist())
    with open(f"{out}/meta.json", "w") as f:
        json.dump(meta, f)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "parity"
    if cmd == "parity":
        parity(sys.argv[2:])
    elif cmd == "transforms":
        transforms()
    elif cmd == "weights":
        weights()
    elif cmd == "preprocess":
        preprocess()
    elif cmd == "observers":
        observers()
    elif cmd == "onnx":
        onnx_fixtures()
    elif cmd == "onnx-zoo":
        onnx_zoo(sys.argv[2], sys.argv[3:])
    elif cmd == "real":
        real(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")
