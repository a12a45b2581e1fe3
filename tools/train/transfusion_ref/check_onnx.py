"""Check a converted bundle's ONNX graphs against the PyTorch reference file.

    python -m transfusion_ref.check_onnx BUNDLE --reference REF [--tract-outputs FILE]

For every graph file of every precision in BUNDLE/manifest.json: `onnx.checker` (full check),
then onnxruntime (CPU, all graph optimisations; the int8 graphs' DynamicQuantizeLinear,
MatMulInteger and ConvInteger are standard ORT CPU ops) on the reference inputs of every case of
that graph, comparing every output: rel error = max|ort - ref| / max(max|ref|, 1e-6).
With `--tract-outputs` (a safetensors file of `{precision}/{case}/{tensor}` float32 tensors),
ORT is also compared with tract. One line per (precision, case, tensor); exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

# Same figures as `transfusion verify` (tools/src/verify.rs); reasons in docs/bundle.md.
TOLERANCES = {"fp32": 1e-4, "fp16": 3e-2, "int8": 0.1}
REL_FLOOR = 1e-6
FLOAT_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class Row:
    precision: str
    case: str
    tensor: str
    ok: bool
    detail: str


def rel_error(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs difference, that divided by max(max|want|, 1e-6)); NaN if anything is NaN."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape {list(got.shape)} != expected {list(want.shape)}")
    if got.size == 0:
        return 0.0, 0.0
    diff = float(np.max(np.abs(got - want)))
    return diff, diff / max(float(np.max(np.abs(want))), REL_FLOOR)


def cases_by_graph(reference: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Reference case names grouped by graph (the part of the case before the first '.')."""
    out: dict[str, list[str]] = {}
    for name in reference:
        case = name.split("/", 1)[0]
        cases = out.setdefault(case.split(".", 1)[0], [])
        if case not in cases:
            cases.append(case)
    return out


def make_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # On x86 without VNNI, onnxruntime multiplies u8 activations by s8 weights with
    # VPMADDUBSW, whose int16 pair sums saturate (errors of 0.1-0.3 relative in the INT8
    # backbone); this option makes it use its exact u8×u8 kernels there (a no-op elsewhere).
    opts.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feeds_for(session, case, reference, float_dtype, geometry) -> dict[str, np.ndarray]:
    """Session inputs from `{case}/{input}`; missing past K/V (P = 0 cases) are empty
    `[1, H, 0, hd]`. Float inputs are cast to the file's float dtype."""
    feeds = {}
    for inp in session.get_inputs():
        key = f"{case}/{inp.name}"
        if key in reference:
            value = reference[key]
        elif inp.name.startswith(("past_key.", "past_value.")):
            value = np.zeros((1, geometry["n_heads"], 0, geometry["head_dim"]), np.float32)
        else:
            raise KeyError(f"reference has no input {key}")
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(float_dtype)
        feeds[inp.name] = value
    return feeds


def check_bundle(bundle: Path, reference: dict[str, np.ndarray],
                 tract: dict[str, np.ndarray] | None = None, log=print) -> list[Row]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    geometry = manifest["geometry"]
    by_graph = cases_by_graph(reference)
    rows: list[Row] = []
    checked: dict[str, str | None] = {}  # path -> checker error (int8 may reuse fp32 files)

    def add(row: Row):
        rows.append(row)
        log(f"{row.precision:<6} {row.case:<18} {row.tensor:<16} {row.detail:<70} "
            f"{'PASS' if row.ok else 'FAIL'}")

    for graph in sorted(by_graph.keys() - manifest["graphs"].keys()):
        add(Row("-", graph, "-", False, "reference case has no graph in the manifest"))
    for graph, entry in manifest["graphs"].items():
        cases = by_graph.get(graph, [])
        for precision, file in entry["files"].items():
            if not cases:
                add(Row(precision, graph, "-", False, "no reference case for this graph"))
                continue
            if precision not in TOLERANCES:
                add(Row(precision, graph, "-", False, f"unknown precision (known: {list(TOLERANCES)})"))
                continue
            tol = TOLERANCES[precision]
            path = bundle / file["path"]
            if file["path"] not in checked:
                try:
                    onnx.checker.check_model(str(path), full_check=True)
                    checked[file["path"]] = None
                except Exception as e:  # noqa: BLE001 - any checker/IO failure is a finding
                    checked[file["path"]] = f"onnx.checker: {type(e).__name__}: {e}"
            if checked[file["path"]]:
                add(Row(precision, graph, file["path"], False, checked[file["path"]][:300]))
                continue
            try:
                session = make_session(path)
                float_dtype = FLOAT_DTYPES[file["float"]]
            except Exception as e:  # noqa: BLE001
                add(Row(precision, graph, file["path"], False, f"{type(e).__name__}: {e}"[:300]))
                continue
            for case in cases:
                try:
                    feeds = feeds_for(session, case, reference, float_dtype, geometry)
                    names = [o.name for o in session.get_outputs()]
                    outputs = dict(zip(names, session.run(names, feeds)))
                except Exception as e:  # noqa: BLE001
                    add(Row(precision, case, "-", False, f"{type(e).__name__}: {e}"[:300]))
                    continue
                for name, got in outputs.items():
                    add(compare_output(precision, case, name, got, reference, tract, tol))
    return rows


def compare_output(precision, case, name, got, reference, tract, tol) -> Row:
    """ORT output vs the reference (and vs tract's output when given)."""
    key = f"{case}/{name}"
    if key not in reference:
        return Row(precision, case, name, False, "output missing from the reference")
    got = got.astype(np.float32)
    try:
        diff, rel = rel_error(got, reference[key])
    except ValueError as e:
        return Row(precision, case, name, False, str(e))
    ok = rel <= tol  # False for NaN
    detail = f"max abs {diff:.3e} rel {rel:.3e} (tol {tol:g})"
    if tract is not None:
        tkey = f"{precision}/{key}"
        if tkey not in tract:
            return Row(precision, case, name, False, detail + "; tract: missing")
        try:
            tdiff, trel = rel_error(got, tract[tkey])
        except ValueError as e:
            return Row(precision, case, name, False, detail + f"; tract: {e}")
        ok = ok and trel <= tol
        detail += f"; ort-tract abs {tdiff:.3e} rel {trel:.3e}"
    return Row(precision, case, name, ok, detail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfusion_ref.check_onnx",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--tract-outputs", type=Path)
    args = parser.parse_args(argv)
    reference = load_file(str(args.reference))
    tract = load_file(str(args.tract_outputs)) if args.tract_outputs else None
    rows = check_bundle(args.bundle, reference, tract)
    failed = sum(not r.ok for r in rows)
    print(f"{len(rows)} checks, {failed} failed")
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
