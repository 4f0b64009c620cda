"""Tests for vit_jax.augreg on tests/fixtures/augreg_index.csv.

The fixture has the real index's columns and file-name scheme; its accuracy numbers are
illustrative, chosen so that each selection rule is observable (e.g. a B/16 run with a higher
best_val but lower final_val, an i1k run with a higher final_val than every i21k run, a
non-best pre-training run whose fine-tune beats the best run's fine-tune).
"""
import csv
import os

import pytest

from vit_jax.checkpoint import augreg

INDEX = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "augreg_index.csv")
B16_BEST = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"


def _rows():
  with open(INDEX, newline="") as f:
    return list(csv.DictReader(f))


def test_fixture_has_the_published_columns():
  with open(INDEX, newline="") as f:
    header = next(csv.reader(f))
  assert header == ["name", "ds", "lr", "aug", "wd", "do", "sd", "best_val", "final_val",
                    "final_test", "adapt_ds", "adapt_lr", "adapt_steps", "adapt_resolution",
                    "adapt_final_val", "adapt_final_test", "params", "infer_samples_per_sec",
                    "filename", "adapt_filename"]


@pytest.mark.parametrize("spelling", ["B/16", "B_16", "ViT-B_16"])
def test_best_i21k_pretrain_by_final_val(spelling):
  ckpt = augreg.resolve(spelling, index_path=INDEX)
  assert ckpt.filename == B16_BEST
  assert ckpt.model_name == "ViT-B_16" and ckpt.pretrain_ds == "i21k" and ckpt.adapt_ds is None
  assert ckpt.accuracy == pytest.approx(0.4752)
  assert ckpt.gs_uri == f"gs://vit_models/augreg/{B16_BEST}.npz"
  assert ckpt.hf_uri == "hf://timm/vit_base_patch16_224.augreg_in21k"
  assert ckpt.uris == (ckpt.hf_uri, ckpt.gs_uri)


def test_every_model_matches_an_independent_selection():
  rows = _rows()
  for name in sorted({r["name"] for r in rows if r["ds"] == "i21k"}):
    best = {}
    for r in rows:  # Independent: per-name running maximum of final_val.
      if r["name"] == name and r["ds"] == "i21k" and float(r["final_val"]) > best.get("v", -1):
        best = {"v": float(r["final_val"]), "f": r["filename"]}
    assert augreg.resolve(name, index_path=INDEX).filename == best["f"], name


def test_hybrid_names_and_other_datasets():
  r26 = augreg.resolve("R26+ViT-S_32", index_path=INDEX)
  assert r26.filename.startswith("R26_S_32-i21k-300ep-lr_0.001-aug_medium2")
  assert r26.model_name == "R26+ViT-S_32"
  assert r26.hf_uri == "hf://timm/vit_small_r26_s32_224.augreg_in21k"
  assert augreg.resolve("R+Ti/16", index_path=INDEX).model_name == "R+ViT-Ti_16"
  i1k = augreg.resolve("B/16", index_path=INDEX, dataset="i1k")
  assert i1k.filename.startswith("B_16-i1k-") and i1k.pretrain_ds == "i1k"


def test_fine_tune_of_best_pretrain():
  ft = augreg.resolve("B/16", index_path=INDEX, adapt_ds="imagenet2012", resolution=224)
  # P2's fine-tune has a higher adapt_final_val, but P2 is not the best pre-training run.
  assert ft.filename == B16_BEST + "--imagenet2012-steps_20k-lr_0.01-res_224"
  assert (ft.adapt_ds, ft.resolution, ft.accuracy) == ("imagenet2012", 224, pytest.approx(0.8461))
  assert ft.hf_uri == "hf://timm/vit_base_patch16_224.augreg_in21k_ft_in1k"
  assert augreg.resolve("B/16", index_path=INDEX, adapt_ds="imagenet2012").resolution == 384
  assert augreg.resolve("Ti/16", index_path=INDEX, adapt_ds="imagenet2012",
                        resolution=384).hf_uri == "hf://timm/vit_tiny_patch16_384.augreg_in21k_ft_in1k"
  anywhere = augreg.resolve("B/16", index_path=INDEX, adapt_ds="imagenet2012", resolution=224,
                            from_best_pretrain=False)
  assert "aug_light1" in anywhere.filename and anywhere.hf_uri is None
  r26 = augreg.resolve("R26_S_32", index_path=INDEX, adapt_ds="imagenet2012", resolution=224,
                       from_best_pretrain=False)
  assert r26.hf_uri == "hf://timm/vit_small_r26_s32_224.augreg_in21k_ft_in1k"


def test_filenames_resolve_without_the_index():
  name = B16_BEST + "--imagenet2012-steps_20k-lr_0.01-res_384.npz"
  ckpt = augreg.resolve(name, index_path="/nonexistent/index.csv")
  assert ckpt.filename == name[:-4] and ckpt.resolution == 384 and ckpt.adapt_ds == "imagenet2012"
  assert ckpt.model_name == "ViT-B_16" and ckpt.pretrain_ds == "i21k" and ckpt.accuracy is None
  assert ckpt.hf_uri == "hf://timm/vit_base_patch16_384.augreg_in21k_ft_in1k"
  assert augreg.parse_filename("gs://vit_models/augreg/" + B16_BEST + ".npz").filename == B16_BEST
  assert augreg.hf_copy("Ti_16-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.0-sd_0.0") is None


def test_errors_name_the_fix(tmp_path):
  with pytest.raises(ValueError, match=r"no AugReg checkpoint for model 'H/14'.*'B/16'"):
    augreg.resolve("H/14", index_path=INDEX)
  with pytest.raises(ValueError, match=r"available \(adapt_ds, resolution\).*'cifar100', 224"):
    augreg.resolve("B/16", index_path=INDEX, adapt_ds="cifar100", resolution=384)
  with pytest.raises(ValueError, match="not an AugReg checkpoint file name"):
    augreg.parse_filename("ViT-B_16.npz")
  bad = tmp_path / "index.csv"
  bad.write_text("name,filename\nB/16,x\n")
  with pytest.raises(ValueError, match="missing columns"):
    augreg.resolve("B/16", index_path=str(bad))
  with pytest.raises(FileNotFoundError):
    augreg.resolve("B/16", index_path=str(tmp_path / "none.csv"))


def _unreadable_index() -> str:
  """An index URL on loopback where nothing listens: what an offline host or a closed bucket
  looks like to resolve()."""
  from helpers import refused_url  # pylint: disable=g-import-not-at-top
  return refused_url().replace("copy_one.npz", "index.csv")


def test_without_the_index_names_with_a_timm_copy_resolve_to_it(capsys, tmp_path):
  index = _unreadable_index()
  ckpt = augreg.resolve("ViT-B_16", index_path=index, cache_dir=str(tmp_path))
  assert ckpt.hf_uri == "hf://timm/vit_base_patch16_224.augreg_in21k"
  assert ckpt.filename == "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
  note = capsys.readouterr().err
  assert "cannot be read" in note and "hf://timm/vit_base_patch16_224.augreg_in21k" in note
  tuned = augreg.resolve("S/16", index_path=index, adapt_ds="imagenet2012", resolution=384,
                         cache_dir=str(tmp_path))
  assert tuned.hf_uri == "hf://timm/vit_small_patch16_384.augreg_in21k_ft_in1k"
  assert tuned.resolution == 384
  assert augreg.resolve("R26+S/32", index_path=index,
                        cache_dir=str(tmp_path)).hf_uri == "hf://timm/vit_small_r26_s32_224.augreg_in21k"


def test_without_the_index_other_names_list_the_hf_copies(tmp_path):
  from vit_jax.checkpoint import sources  # pylint: disable=g-import-not-at-top
  index = _unreadable_index()
  with pytest.raises(sources.FetchError) as info:  # i1k pre-training: timm has no copy.
    augreg.resolve("B/16", index_path=index, dataset="i1k", cache_dir=str(tmp_path))
  message = str(info.value)
  assert "hf://timm/vit_base_patch16_224.augreg_in21k" in message and "cannot be read" in message
  with pytest.raises(sources.FetchError, match="no Hugging Face copy"):
    augreg.resolve("H/14", index_path=index, cache_dir=str(tmp_path))
