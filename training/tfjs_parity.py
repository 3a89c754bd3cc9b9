"""Check :mod:`rtfer.training.tfjs_graph` against TensorFlow.js itself on real faces.

The reference is the original runtime: ``@tensorflow/tfjs`` on Node's pure-JavaScript CPU backend, installed only
for this check (``npm install @tensorflow/tfjs@4.22.0`` in some folder; nothing of it is a dependency of rtfer).
Both run the same graph on the same FER+ validation faces (upsampled to the graph's input size) and the named nodes'
outputs are compared: max absolute difference and the smallest cosine similarity per face.

    python -m rtfer.training.tfjs_parity MODEL_JSON --node-modules DIR/node_modules --nodes NAME [NAME ...] \\
        --images _data/ferplus_val.npz --size 224 --scale 1/255
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNNER = r"""
const path = require('path');
const tf = require(path.join(process.env.NODE_MODULES, '@tensorflow/tfjs'));
const fs = require('fs');
(async () => {
  const [mj, inp, n, h, w, outp, names] = process.argv.slice(2);
  await tf.setBackend('cpu');
  const meta = JSON.parse(fs.readFileSync(mj));
  const specs = [], bufs = [];
  for (const g of meta.weightsManifest) {
    for (const s of g.weights) specs.push(s);
    for (const p of g.paths) bufs.push(fs.readFileSync(path.join(path.dirname(mj), p)));
  }
  const all = Buffer.concat(bufs);
  const model = await tf.loadGraphModel(tf.io.fromMemory({modelTopology: meta.modelTopology, weightSpecs: specs,
    weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength)}));
  const raw = fs.readFileSync(inp);
  const x = tf.tensor4d(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), [+n, +h, +w, 3]);
  let outs = model.execute(x, names.split(','));
  outs = Array.isArray(outs) ? outs : [outs];
  outs.forEach((t, i) => fs.writeFileSync(`${outp}.${i}.f32`, Buffer.from(t.dataSync().buffer)));
})();
"""


def compare(model_json: Path, node_modules: Path, nodes: list[str], images: np.ndarray, size: int,
            scale: float) -> list[dict]:
    import cv2
    import torch

    from rtfer.training.tfjs_graph import build

    faces = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
    x = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in faces]).astype(np.float32)
    x = np.ascontiguousarray(x * scale)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "run.js").write_text(RUNNER)
        x.tofile(tmp / "in.f32")
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed")
        subprocess.run([node, str(tmp / "run.js"), str(model_json), str(tmp / "in.f32"), str(len(x)), str(size),
                        str(size), str(tmp / "out"), ",".join(nodes)], check=True, capture_output=True,
                       env={"NODE_MODULES": str(node_modules), "PATH": "/usr/bin:/bin"})
        refs = [np.fromfile(tmp / f"out.{i}.f32", np.float32).reshape(len(x), -1) for i in range(len(nodes))]
    with torch.no_grad():
        ours = build(model_json).eval()(torch.from_numpy(x), outputs=nodes)
    rows = []
    for name, ref in zip(nodes, refs):
        me = ours[name].reshape(len(x), -1).numpy()
        cos = (ref * me).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(me, axis=1), 1e-12)
        rows.append({"node": name, "dims": ref.shape[1], "max_abs_diff": float(np.abs(ref - me).max()),
                     "min_cosine": float(cos.min())})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_json", type=Path)
    ap.add_argument("--node-modules", type=Path, required=True, help="a node_modules folder with @tensorflow/tfjs")
    ap.add_argument("--nodes", nargs="+", required=True)
    ap.add_argument("--images", type=Path, default=Path("_data/ferplus_val.npz"), help="packed split (.npz)")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--scale", default="1/255", help="input pixels are multiplied by this (e.g. 1/255 or 1)")
    a = ap.parse_args(argv)
    num, _, den = a.scale.partition("/")
    with np.load(a.images) as z:
        images = z["images"][:a.count]
    try:
        rows = compare(a.model_json, a.node_modules, a.nodes, images, a.size, float(num) / float(den or 1))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"tfjs_parity: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
