"""--push_to_hub=org/name: uploads an export's folder to a Hugging Face Hub model repo.

huggingface_hub's HfApi().create_repo(exist_ok=True) then upload_folder, with the token from
its usual places (HF_TOKEN, `hf auth login`). Offline, unauthorised or any other Hub failure
is one HubPushError saying what to do; the folder on disk is never touched.
"""
from __future__ import annotations

import os


class HubPushError(RuntimeError):
  """The upload failed; the exported folder is intact (exit status ERROR)."""


def check_repo_id(repo_id: str) -> None:
  """A ValueError for a repo id the Hub would refuse (checked before anything is exported)."""
  from huggingface_hub import utils  # pylint: disable=g-import-not-at-top
  if repo_id.count("/") != 1:
    raise ValueError(f"--push_to_hub={repo_id!r}: give the repo as 'org/name' (or 'user/name').")
  try:
    utils.validate_repo_id(repo_id)
  except utils.HFValidationError as e:
    raise ValueError(f"--push_to_hub={repo_id!r} is not a valid Hub repo id: {e}") from None


def _fix(error: BaseException) -> str:
  """What to do about a failed upload."""
  from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  status = getattr(getattr(error, "response", None), "status_code", None)
  if isinstance(error, errors.LocalTokenNotFoundError) or status in (401, 403):
    return ("log in with `hf auth login` (or set HF_TOKEN) with a token that may write to "
            "that namespace")
  if isinstance(error, (errors.OfflineModeIsEnabled, ConnectionError)) or status is None:
    return "connect to the network (and unset HF_HUB_OFFLINE)"
  return "check the repo id and the Hub's status"


def push(folder: str, repo_id: str, *, private: bool = False) -> str:
  """Creates `repo_id` if needed and uploads `folder` to it; returns the repo's URL."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  hub_errors = (errors.HfHubHTTPError, errors.OfflineModeIsEnabled, errors.LocalTokenNotFoundError,
                getattr(errors, "HTTPError", OSError), OSError)
  folder = os.path.abspath(folder)
  try:
    api = huggingface_hub.HfApi()
    url = api.create_repo(repo_id, exist_ok=True, private=private)
    api.upload_folder(repo_id=repo_id, folder_path=folder,
                      commit_message=f"vit_jax export ({os.path.basename(folder)})")
  except hub_errors as e:
    reason = " ".join(str(e).split()) or type(e).__name__
    raise HubPushError(f"could not push {folder} to the Hugging Face Hub repo {repo_id!r} "
                       f"({type(e).__name__}: {reason[:300]}); the export in {folder} is kept: "
                       f"{_fix(e)}, then upload it with `hf upload {repo_id} {folder} .`") from e
  return str(getattr(url, "url", None) or url or f"https://huggingface.co/{repo_id}")
