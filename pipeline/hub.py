"""Pushing an export (a dataset) or an adapter (a model) to a Hugging Face Hub repository.

One door for `export --push-to-hub` and `export-adapter --push-to-hub`: huggingface_hub's create_repo
(exist_ok) and one create_commit of the chosen files, with a card (README.md) given as bytes, so the local
folder is never changed. The token is read from the environment (HF_TOKEN) and handed to huggingface_hub
only: it is never written to a file, a log or a manifest, and every message is masked. HF_ENDPOINT, read
here at call time (huggingface_hub reads it once, at import), points the push at another Hub, such as the
stand-in of the tests. A failed push raises Seed2LoraError naming the cause; what was written locally stays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from .errors import Seed2LoraError, mask_secrets

TOKEN_ENV = "HF_TOKEN"  # huggingface_hub's own variable; a write token from https://huggingface.co/settings/tokens


def push_options(what: str) -> Callable[[Callable], Callable]:
    """`--push-to-hub REPO` and `--private`, as `export` and `export-adapter` both take them; `what` is the
    upload, up to and including the kind of repository it goes to."""
    def wrap(f: Callable) -> Callable:
        f = click.option("--private", is_flag=True, help="With --push-to-hub: create the repository private; a "
                         "public one of that name is left untouched.")(f)
        return click.option("--push-to-hub", "push_to_hub", metavar="REPO",
                            help=f"Then upload {what} (USER/NAME); the token is read from HF_TOKEN "
                                 "(default: no upload).")(f)
    return wrap


def push_target(push_to_hub: str | None, private: bool) -> tuple[str, str] | None:
    """(repository, token) when a push was asked for, checked before anything is written; else None."""
    if private and not push_to_hub:
        raise click.UsageError("--private applies to --push-to-hub. Fix: add --push-to-hub USER/NAME, or drop --private")
    return (check_repo_id(push_to_hub), hub_token()) if push_to_hub else None


def hub_token() -> str:
    """The Hub token from HF_TOKEN; a missing one stops before anything is pushed."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise Seed2LoraError(f"--push-to-hub needs a Hub write token in the environment. Fix: export {TOKEN_ENV}=... "
                             "(a token with write access) and run again")
    return token


def check_repo_id(repo: str) -> str:
    """USER/NAME or ORG/NAME, as the Hub spells repositories."""
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise Seed2LoraError(f"--push-to-hub {repo!r} is not a repository name. Fix: give USER/NAME or ORG/NAME")
    return repo


def push_files(repo: str, repo_type: str, folder: Path, files: dict[str, Path], card: str, message: str,
               token: str, private: bool = False) -> str:
    """Create `repo` if needed and commit `files` ({path in the repository: local file}) plus README.md = `card`.
    private: create it private, and push nothing into a repository that already exists public.

    Returns the repository's URL. Any failure (refused token, network, the Hub's error) raises Seed2LoraError
    with the Hub's own words, masked; nothing local is changed either way (`folder` is named in the message).
    """
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
    except ImportError as e:
        raise Seed2LoraError("--push-to-hub needs huggingface_hub. Fix: pip install huggingface_hub") from e
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p)) for name, p in sorted(files.items())
           if name != "README.md"]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    where = f"{endpoint or 'https://huggingface.co'}"
    try:
        # private=None leaves the Hub's default (public, or the organisation's own default)
        url = api.create_repo(repo, repo_type=repo_type, exist_ok=True, private=True if private else None)
        if private and not api.repo_info(repo, repo_type=repo_type).private:  # create_repo ignores it if it exists
            raise Seed2LoraError(f"--private: the Hub {repo_type} repository {repo} already exists and is public; "
                                 f"nothing was pushed and {folder} is intact. Fix: make it private in its settings "
                                 "on the Hub, or push to a new name")
        api.create_commit(repo, ops, commit_message=message, repo_type=repo_type)
    except Seed2LoraError:
        raise
    except Exception as e:  # noqa: BLE001 -- every failure of the push is reported the same way, with its cause
        raise Seed2LoraError(f"pushing {folder} to the Hub {repo_type} repository {repo} at {where} failed: "
                             f"{hub_cause(e)}. {folder} is intact. Fix: {hub_fix(e)}, then run the same command "
                             "again") from None
    return str(url)


def hub_cause(e: BaseException) -> str:
    """The Hub's answer in one line (status, its error text), masked."""
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    text = " ".join(str(e).split())
    return mask_secrets(f"{type(e).__name__}{f' (HTTP {status})' if status else ''}: {text}")[:600]


def hub_fix(e: BaseException) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return f"check that {TOKEN_ENV} holds a valid token with write access to that namespace"
    if status is None:
        return "check the network and HF_ENDPOINT (unset for huggingface.co)"
    return "read the Hub's message above"


def folder_files(folder: Path, keep: Callable[[str], bool] = lambda top: True) -> dict[str, Path]:
    """{path in the repository: file} for every file under `folder` but hidden ones, whose top-level name `keep`s."""
    found = {}
    for p in sorted(folder.rglob("*")):
        parts = p.relative_to(folder).parts
        if p.is_file() and not any(part.startswith(".") for part in parts) and keep(parts[0]):
            found["/".join(parts)] = p
    return found


def yaml_list(key: str, values: Iterable[Any]) -> list[str]:
    items = [str(v) for v in values if v]
    return [f"{key}:", *[f"- {v}" for v in items]] if items else []


def push_export(export_dir: Path, repo: str, token: str, private: bool = False) -> str:
    """A seed2lora export folder as a Hub dataset: every file, its README.md (the dataset card) as the card."""
    folder = Path(export_dir)
    card = (folder / "README.md").read_text(encoding="utf-8")
    files = folder_files(folder)
    return push_files(check_repo_id(repo), "dataset", folder, files, card,
                      f"seed2lora export of {folder.resolve().parent.name}", token, private)
