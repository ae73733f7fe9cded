#!/usr/bin/env python3
"""Test-time oracle for qvision's ONNX exports: check each model with onnx.checker (full check)
and run it with ONNX Runtime.

  python scripts/ort_run.py JOB.json

JOB.json is a list of {"onnx": path, "input": raw little-endian f32 file, "shape": [...],
"output": path}. Each output is written as raw f32; one JSON line per case is printed:
{"onnx": ..., "ok": true, "shape": [...]} or {"onnx": ..., "ok": false, "error": "..."}.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

for case in json.load(open(sys.argv[1])):
    try:
        # by path: models over 2 GB keep their weights in an external data file
        onnx.checker.check_model(case["onnx"], full_check=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        s = ort.InferenceSession(case["onnx"], so, providers=["CPUExecutionProvider"])
        x = np.fromfile(case["input"], dtype="<f4").reshape(case["shape"])
        y = s.run(None, {s.get_inputs()[0].name: x})[0].astype("<f4")
        y.tofile(case["output"])
        print(json.dumps({"onnx": case["onnx"], "ok": True, "shape": list(y.shape)}), flush=True)
    except Exception as e:  # reported to the Rust test, which names the model
        print(json.dumps({"onnx": case["onnx"], "ok": False, "error": str(e)[:2000]}), flush=True)
