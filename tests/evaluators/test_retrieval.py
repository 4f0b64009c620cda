"""Retrieval recall@k against brute force and hand-built cases."""
import numpy as np
import pytest

from vit_jax.evaluators import retrieval


def _brute(zimg, ztxt, owner, k):
  s = zimg @ ztxt.T
  img_hits = []
  for i in range(len(zimg)):
    top = sorted(range(len(ztxt)), key=lambda j: (-s[i, j], j))[:k]
    img_hits.append(any(owner[j] == i for j in top))
  txt_hits = []
  for j in range(len(ztxt)):
    top = sorted(range(len(zimg)), key=lambda i: (-s[i, j], i))[:k]
    txt_hits.append(owner[j] in top)
  return np.mean(img_hits), np.mean(txt_hits)


def test_recall_matches_brute_force_with_several_captions_per_image():
  rng = np.random.default_rng(0)
  zimg = rng.normal(size=(12, 6))
  owner = np.repeat(np.arange(12), 5)  # COCO: five captions per image.
  ztxt = zimg[owner] + 1.5 * rng.normal(size=(60, 6))
  got = retrieval.recall_at_k(zimg, ztxt, owner, ks=(1, 5, 10))
  for k in (1, 5, 10):
    img, txt = _brute(zimg, ztxt, owner, k)
    assert got[f"img2txt_r@{k}"] == pytest.approx(img)
    assert got[f"txt2img_r@{k}"] == pytest.approx(txt)
  assert 0 < got["img2txt_r@1"] < got["img2txt_r@10"] <= 1


def test_hand_built_case():
  zimg = np.eye(3)
  ztxt = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0.9, 0.1, 0]])  # nearest: 0, 2, 1, 0
  owner = [0, 2, 1, 1]  # caption 3 describes image 1 but is nearest image 0 (second: 1)
  got = retrieval.recall_at_k(zimg, ztxt, owner, ks=(1, 2))
  assert got["txt2img_r@1"] == 0.75 and got["txt2img_r@2"] == 1.0
  assert got["img2txt_r@1"] == 1.0  # Each image's best caption is one of its own.


def test_bad_caption_owners_are_clear_errors():
  with pytest.raises(ValueError, match="each of the 2 captions"):
    retrieval.recall_at_k(np.eye(2), np.eye(2), [0])
  with pytest.raises(ValueError, match="index the 2 images"):
    retrieval.recall_at_k(np.eye(2), np.eye(2), [0, 5])
  with pytest.raises(ValueError, match="at least one caption"):
    retrieval.recall_at_k(np.eye(2), np.eye(2), [0, 0])

