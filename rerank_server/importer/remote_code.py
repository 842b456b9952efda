"""A model's own modelling code (`auto_map` + `trust_remote_code`), stored with its weights when the user asks for it
(`import_models.py --trust-remote-code`): which Python files it takes, where they come from, and the stored config
rewritten to name them locally, so that the server loads that code from the store only — never from the Hub or a
cache, also once the source folder is gone.

An `auto_map` entry is `module.Class` (a file of the model's own folder) or `org/repo--module.Class` (a file of another
repository, as gte-multilingual-reranker-base takes its code from Alibaba-NLP/new-impl).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_server.importer.check import first_line
from rerank_server.importer.folder import ModelImportError, read_json

# The files whose `auto_map` may name code: the model's config and its tokenizer's.
CODE_CONFIGS = ("config.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelCode:
    """The Python files a model runs: their names in the stored folder, and where each comes from."""

    files: dict[str, Path]

    def digests(self) -> dict[str, str]:
        """Each file's sha256, as the import prints it and the store records it."""
        return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(self.files.items())}


# `module.Class`, after an optional `org/repo--`: what transformers resolves (one dot, a module file of the folder).
_REFERENCE = re.compile(r"(?:(?P<repo>[\w.-]+/[\w.-]+)--)?(?P<module>[A-Za-z_]\w*)\.(?P<cls>[A-Za-z_]\w*)")


def _references(folder: Path) -> Iterator[tuple[str | None, str]]:
    """(other repository or None, module name) of every `auto_map` entry of the folder. An entry that names anything
    but a module of the folder (or of a repository) is refused: a path would run a file from outside the store."""
    for name in CODE_CONFIGS:
        auto_map = read_json(folder / name).get("auto_map") or {}
        for value in auto_map.values() if isinstance(auto_map, dict) else ():
            for reference in value if isinstance(value, list) else [value]:  # AutoTokenizer: [slow, fast]
                if reference is None:
                    continue
                match = _REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
                if match is None:
                    raise ModelImportError(
                        f"{folder / name}: the auto_map entry {reference!r} is not `module.Class` or "
                        "`org/repo--module.Class`"
                    )
                yield match["repo"], match["module"]


def other_repositories(folder: Path) -> set[str]:
    """The repositories whose code the folder's `auto_map` names (`org/repo--module.Class`)."""
    return {repo for repo, _ in _references(folder) if repo}


def collect(folder: Path, model_id: str, code_folders: Mapping[str, Path] | None = None) -> ModelCode:
    """Every Python file the model's `auto_map` needs, with the files they import relatively, from the folder itself
    or, for code of another repository, from `code_folders[repo]` (a download of it) or the folder (a copy placed
    there by hand). ModelImportError names what is missing, or the packages the code imports that are not installed."""
    from transformers.dynamic_module_utils import check_imports, get_relative_import_files

    files: dict[str, Path] = {}
    for repo, module in _references(folder):
        sources = [folder] if repo is None else [*(p for p in [(code_folders or {}).get(repo)] if p), folder]
        main = next((source / f"{module}.py" for source in sources if (source / f"{module}.py").is_file()), None)
        if main is None:
            where = f"from {repo}" if repo else "in the folder"
            raise ModelImportError(
                f"{model_id}: its auto_map names {module}.py {where}, which is not there; import the model by id so it "
                "can be downloaded, or put that file (and the files it imports) in the folder"
            )
        try:
            needed = [main, *map(Path, get_relative_import_files(str(main)))]
            for path in needed:
                check_imports(str(path))
        except (OSError, ImportError) as exc:
            raise ModelImportError(f"{model_id}: its code cannot be used here: {first_line(exc)}") from exc
        for path in needed:
            if files.setdefault(path.name, path).resolve() != path.resolve():
                raise ModelImportError(f"{model_id}: two different code files are named {path.name}")
    return ModelCode(files)


def store(code: ModelCode, target: Path) -> None:
    """Copy the code into the stored folder and make every `auto_map` entry name its file there."""
    for name, source in code.files.items():
        if (target / name).resolve() != source.resolve():
            (target / name).write_bytes(source.read_bytes())
    for name in CODE_CONFIGS:
        path = target / name
        config = read_json(path)
        if not config.get("auto_map"):
            continue
        config["auto_map"] = {key: _local(value) for key, value in config["auto_map"].items()}
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _local(value: Any) -> Any:
    if isinstance(value, list):
        return [_local(item) for item in value]
    return value.rpartition("--")[2] if isinstance(value, str) else value
