"""Smoke tests of the benchmark scripts: each main() runs at its smallest settings and reports.

Figures are not checked (they are benchmarks, not tests); this keeps the scripts from rotting.
The scripts run in this process (no interpreter start-ups) with the library's start-up
defaults turned off (VIT_JAX_NO_XLA_DEFAULTS=1), so they leave no global state behind.
bench/train_throughput.py (absl flags) and the timm half of side_by_side.py (needs torch +
timm) are not run here.
"""
import json
import re
import sys

import pytest
from helpers import REPO  # pylint: disable=g-bad-import-order

sys.path.insert(0, str(REPO / "bench"))

import checkpoint as bench_checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
import cpu_formulations  # pylint: disable=g-import-not-at-top,wrong-import-position
import input_pipeline as bench_input  # pylint: disable=g-import-not-at-top,wrong-import-position
import matmul_side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position
import packing as bench_packing  # pylint: disable=g-import-not-at-top,wrong-import-position
import profile_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import run_suite  # pylint: disable=g-import-not-at-top,wrong-import-position
import scaling  # pylint: disable=g-import-not-at-top,wrong-import-position
import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

SMALL = ["--model", "testing", "--batch", "8", "--resolution", "32", "--num_classes", "10"]


@pytest.fixture(autouse=True)
def _no_library_defaults(monkeypatch):
  monkeypatch.setenv("VIT_JAX_NO_XLA_DEFAULTS", "1")


def test_train_step_times_train_and_inference(tmp_path, capsys):
  out = tmp_path / "step.json"
  assert train_step.main(SMALL + ["--windows", "1", "--steps", "1", "--json", str(out)]) == 0
  result = json.loads(out.read_text())
  kinds = {r["kind"]: r for r in result["results"]}
  assert set(kinds) == {"train", "inference"}
  assert all(r["img_per_s"] > 0 and r["compile_s"] > 0 for r in kinds.values())
  assert result["attention_impl_resolved"] == "einsum_vjp"  # the CPU default
  assert "img/s" in capsys.readouterr().out


def test_train_step_compile_only_with_scan(tmp_path):
  out = tmp_path / "compile.json"
  assert train_step.main(SMALL + ["--compile_only", "--scan_layers", "--mode", "train",
                                  "--batch_chunks", "1", "--json", str(out)]) == 0
  (r,) = json.loads(out.read_text())["results"]
  assert r["compile_s"] > 0 and "img_per_s" not in r and r["xla_flops_per_image"] > 0


def test_cpu_formulations_bench(capsys):
  assert cpu_formulations.main(["--tokens", "16", "--width", "8", "--mlp_dim", "24",
                                "--windows", "1", "--steps", "1"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3 and all("plain/cpu_ops" in line for line in lines)


def test_checkpoint_bench(tmp_path):
  out = tmp_path / "ckpt.json"
  assert bench_checkpoint.main(["--model", "testing", "--resolution", "32", "--repeats", "1",
                                "--dir",
                                str(tmp_path / "ckpts"), "--json", str(out)]) == 0
  r = json.loads(out.read_text())
  assert r["save_total_s"] >= r["save_blocking_s"] > 0 and r["restore_s"] > 0
  assert r["disk_bytes"] > 0


def test_input_pipeline_bench(tmp_path):
  out = tmp_path / "input.json"
  assert bench_input.main(["--images", "8", "--batch", "4", "--steps", "1", "--workers", "0",
                           "--json", str(out)]) == 0
  results = json.loads(out.read_text())["results"]
  assert len(results) == 3 and all(r["img_per_s_0_workers"] > 0 for r in results)
  # The JPEG row carries the big_vision-style tf.data pipeline run on the same files.
  assert results[0]["tfdata_img_per_s"] > 0 and results[0]["ratio_vs_tfdata"] > 0
  assert "tfdata_img_per_s" not in results[2]


def test_packing_bench(tmp_path):
  out = tmp_path / "packing.json"
  assert bench_packing.main(["--tokens", "16", "--images", "4", "--images_per_pack", "2",
                             "--packs", "10", "--width", "32", "--depth", "1", "--repeats", "1",
                             "--min_side", "16", "--max_side", "64", "--json", str(out)]) == 0
  figures = json.loads(out.read_text())
  assert set(figures["padding"]) == {"padded", "packed_k1", "packed_k2", "packed_k4",
                                     "packed_k8"}
  assert figures["throughput"]["packed"]["images"] == 4


def test_run_suite_cases_and_case_runner(tmp_path):
  args = run_suite.parse_args(["--quick", "--torch_python", "false"])  # no torch probe
  names = [name for name, _ in run_suite.cases(args, accelerator=False)]
  assert names[:4] == ["train_step", "compile", "input_pipeline", "checkpoint"]
  full = run_suite.cases(run_suite.parse_args([]), accelerator=False)
  assert {"compile_l16_unrolled", "compile_l16_scan", "checkpoint"} <= {n for n, _ in full}
  gpu = {n for n, _ in run_suite.cases(run_suite.parse_args([]), accelerator=True)}
  assert {"train_step_b16", "train_step_l16"} <= gpu
  assert run_suite.machine()["cores"] >= 1
  script = tmp_path / "case.py"  # run_case's contract: the script writes --json <path>
  script.write_text("import json, sys\njson.dump({'ok': 1}, open(sys.argv[-1], 'w'))\n")
  r = run_suite.run_case("fake", [str(script)], args)
  assert r["status"] == 0 and r["result"] == {"ok": 1}


def test_side_by_side_flags_and_model_names():
  args = side_by_side.parse_args(["--batch", "2"])
  assert args.model == "ViT-Ti_16"
  assert side_by_side.TIMM_MODELS[args.model] == "vit_tiny_patch16_224"
  assert side_by_side.cores() >= 1


def _timm_missing() -> str:
  """'' when torch and timm import, else what failed (missing, or broken: no torchvision)."""
  for name in ("torch", "timm"):
    try:
      __import__(name)
    except Exception as e:  # pylint: disable=broad-except
      return f"needs torch + timm: `import {name}` failed ({type(e).__name__}: {e})"
  return ""


@pytest.mark.skipif(bool(_timm_missing()), reason=_timm_missing() or "-")
def test_side_by_side_runs_both(tmp_path):
  out = tmp_path / "sbs.json"
  assert side_by_side.main(["--batch", "8", "--resolution", "32", "--windows", "1", "--steps",
                            "1", "--gap_s", "0", "--json", str(out)]) == 0
  r = json.loads(out.read_text())
  assert set(r["ratio_ours_over_timm"]) == {"train", "inference"}
  # One interleaved warm-up round by default, reported apart from the one timed window.
  assert r["warmup_rounds"] == 1
  assert all(len(v) == 1 for v in r["warmup_img_per_s"].values())
  assert all(len(v) == 1 for v in r["img_per_s_windows"].values())


def test_profile_step_groups_thunks_by_model_part(tmp_path, capsys):
  out = tmp_path / "profile.json"
  assert profile_step.main(SMALL + ["--steps", "1", "--top", "5", "--json", str(out)]) == 0
  r = json.loads(out.read_text())
  assert r["mode"] == "train" and r["thunk_thread_ms_per_step"] > 0 and r["rows"]
  assert abs(sum(row["share"] for row in r["rows"]) - 1.0) < 1e-6
  parts = {(row["part"], row["direction"]) for row in r["rows"]}
  # Layer indices are folded away and the backward pass is told apart from the forward.
  assert not any(re.search(r"encoderblock_\d", p) for p, _ in parts)
  assert any(p.startswith("MlpBlock_0/Dense_0") and d == "bwd" for p, d in parts)
  assert any(p.startswith("MlpBlock_0/Dense_0") and d == "fwd" for p, d in parts)
  assert len(capsys.readouterr().out.splitlines()) == 6  # header + --top rows


def test_profile_step_groups_forward_and_training_op_names_alike():
  layer = "Transformer/encoderblock_{}/MlpBlock_0/Dense_1/dot_general"
  train = "jit(train_step)/transpose(jvp(VisionTransformer))/" + layer.format(3)
  infer = "jit(<lambda>)/VisionTransformer/" + layer.format(11)
  assert profile_step.group_of("dot_general.12", train) == (
      "MlpBlock_0/Dense_1/dot_general", "bwd", "dot_general")
  assert profile_step.group_of("ynn_fusion.7", infer) == (
      "MlpBlock_0/Dense_1/dot_general", "fwd", "ynn_fusion")


def test_matmul_side_by_side_shapes_and_rates(tmp_path, capsys):
  assert matmul_side_by_side.shapes("ViT-Ti_16", 32, 224, 8)[-1] == (
      "mlp out (1/8 batch)", 4 * 197, 768, 192)
  out = tmp_path / "mm.json"
  assert matmul_side_by_side.main(["--model", "testing", "--batch", "4", "--resolution", "32",
                                   "--chunks", "2", "--windows", "1", "--steps", "1",
                                   "--json", str(out)]) == 0
  r = json.loads(out.read_text())
  assert [row["m"] for row in r["rows"]] == [20] * 4 + [10] * 4  # 4 images x (4 patches + cls)
  assert all(row["xla_gflops"] > 0 for row in r["rows"])
  assert all(("torch_gflops" in row) == (r["torch"] is not None) for row in r["rows"])
  assert len(capsys.readouterr().out.splitlines()) == 9


def test_scaling_table_row(tmp_path, capsys, monkeypatch):
  pytest.importorskip("libtpu")
  monkeypatch.setitem(scaling.CASES, "tiny", ("ti16", "v5e:2x2", {
      "pp.crop": 32, "batch": 16, "batch_eval": 16, "model.scan_layers": True}))
  out = tmp_path / "scaling.json"
  assert scaling.main(["--cases", "tiny", "--json", str(out)]) == 0
  row = capsys.readouterr().out.splitlines()[-1]
  assert row.startswith("| ViT-Ti_16 | v5e:2x2 (4 chips) | 16 | data4 | no |"), row
  assert "--topology=v5e:2x2 --config.pp.crop=32" in row
  assert json.loads(out.read_text())[0]["fits"] is True
