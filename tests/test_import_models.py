"""import_models.py and the model store: local folders, the models/ layout, the Hub's failure path, no half-writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest

import import_models
from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.sources import import_from_folder, import_model
from rerank_server.models.store import find_reranker, list_rerankers
from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_folder_import_records_what_the_server_needs(stored_fixture) -> None:
    assert stored_fixture.model_id == FIXTURE_MODEL_ID
    assert stored_fixture.tag.startswith("test-org--mini-reranker:")
    assert stored_fixture.max_length == 512
    assert stored_fixture.num_labels == 1
    assert stored_fixture.architecture == "BertForSequenceClassification"
    assert stored_fixture.source.startswith("dir:")
    model = bentoml.models.get(stored_fixture.tag)
    assert model.info.labels == {"app": "rerank-server", "model-id": FIXTURE_MODEL_ID}
    assert (stored_fixture.path / "config.json").is_file()
    assert (stored_fixture.path / "model.safetensors").is_file()
    model_files = [p for p in stored_fixture.path.rglob("*") if p.is_file() and p.name != "model.yaml"]  # BentoML's
    assert stored_fixture.size_bytes == sum(p.stat().st_size for p in model_files)


def test_reimport_of_the_same_folder_is_a_no_op_unless_forced(fixture_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(fixture_model_dir, tmp_path / "m")
    first = import_from_folder("test-org/reimport", folder)
    again = import_from_folder("test-org/reimport", folder)
    assert not first.skipped and again.skipped and again.stored.tag == first.stored.tag
    forced = import_from_folder("test-org/reimport", folder, ImportOptions(force=True))
    assert not forced.skipped and forced.stored.tag != first.stored.tag
    versions = [m for m in bentoml.models.list() if m.tag.name == "test-org--reimport"]
    assert len(versions) == 2
    assert find_reranker("test-org/reimport").tag == forced.stored.tag  # newest wins


def test_local_models_folder_is_used_before_the_hub(fixture_model_dir: Path, tmp_path: Path) -> None:
    _copy(fixture_model_dir, tmp_path / "models" / "local-first")
    result = import_model("test-org/local-first", models_dir=tmp_path / "models")
    assert result.stored.source == f"dir:{tmp_path / 'models' / 'local-first'}"


def test_catalogue_models_get_their_known_max_length_within_the_folders_own(
    fixture_model_dir: Path, tmp_path: Path
) -> None:
    _copy(fixture_model_dir, tmp_path / "models" / "bge-reranker-v2-m3")
    result = import_model("bge-reranker-v2-m3", models_dir=tmp_path / "models")
    assert result.stored.model_id == "BAAI/bge-reranker-v2-m3"
    assert result.stored.max_length == 512  # the catalogue's 8,192, cut to the MiniLM folder's 512 positions
    assert result.stored.tag.startswith("baai--bge-reranker-v2-m3:")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: _edit_config(d, architectures=["BertModel"]), "is not a reranker: its architecture is BertModel"),
        (lambda d: _edit_config(d, id2label={"0": "a", "1": "b", "2": "c"}), "3 output labels"),
        (lambda d: (d / "model.safetensors").unlink(), "no model weights"),
    ],
)
def test_a_folder_that_is_not_a_cross_encoder_is_refused(fixture_model_dir, tmp_path, mutate, message) -> None:
    folder = _copy(fixture_model_dir, tmp_path / "bad")
    mutate(folder)
    before = {str(m.tag) for m in bentoml.models.list()}
    with pytest.raises(ModelImportError, match=message):
        import_from_folder("test-org/bad", folder)
    assert {str(m.tag) for m in bentoml.models.list()} == before


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_failed_copy_leaves_nothing_in_the_store(fixture_model_dir, tmp_path, monkeypatch) -> None:
    def broken_copy(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("rerank_server.importer.commit.shutil.copytree", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        import_from_folder("test-org/half-written", fixture_model_dir)
    assert find_reranker("test-org/half-written") is None
    assert not any(m.tag.name == "test-org--half-written" for m in bentoml.models.list())


def test_an_unreachable_hub_gives_one_clear_line_and_a_failing_exit_code(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    exit_code = import_models.main(["BAAI/bge-reranker-large", "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_code == 1
    assert len(err) == 1
    assert "cannot download BAAI/bge-reranker-large from http://127.0.0.1:9" in err[0]
    assert "--from-dir" in err[0] and "HF_ENDPOINT" in err[0]


def test_the_command_line_imports_a_folder_and_lists_it(fixture_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(fixture_model_dir, tmp_path / "cli")
    run = subprocess.run(
        [sys.executable, "import_models.py", "my-org/cli-reranker", "--from-dir", str(folder)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("my-org/cli-reranker: imported as my-org--cli-reranker:")
    again = subprocess.run(
        [sys.executable, "import_models.py", "my-org/cli-reranker", "--from-dir", str(folder)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "already stored" in again.stdout
    listing = subprocess.run(
        [sys.executable, "import_models.py", "--list"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert any(line.startswith("my-org/cli-reranker ") for line in listing.stdout.splitlines())
    assert "my-org/cli-reranker" in [s.model_id for s in list_rerankers()]


def test_the_command_line_refuses_from_dir_with_several_ids() -> None:
    with pytest.raises(SystemExit) as exc:
        import_models.parse_args(["a/b", "c/d", "--from-dir", "x"])
    assert exc.value.code == 2


def test_download_through_an_hf_endpoint_mirror(fixture_model_dir: Path, tmp_path: Path) -> None:
    """The real Hub code path, against a loopback mirror: `HF_ENDPOINT=... python import_models.py ORG/NAME`."""
    from tests.fake_hub import fake_hub

    repo = _copy(fixture_model_dir, tmp_path / "repo")
    (repo / "pytorch_model.bin").write_bytes(b"a duplicate of the weights that must not be downloaded")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    with fake_hub({"mirror-org/mirrored-reranker": repo}) as (endpoint, seen):
        env["HF_ENDPOINT"] = endpoint
        command = [sys.executable, "import_models.py", "mirror-org/mirrored-reranker", "--models-dir", str(tmp_path)]
        first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        missing = subprocess.run(
            [sys.executable, "import_models.py", "mirror-org/absent", "--models-dir", str(tmp_path)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("mirror-org/mirrored-reranker: imported as mirror-org--mirrored-reranker:")
    assert "already stored" in again.stdout
    stored = find_reranker("mirror-org/mirrored-reranker")
    assert stored.source == f"hub:{endpoint}" and len(stored.revision) == 40
    assert (stored.path / "model.safetensors").is_file() and not (stored.path / "pytorch_model.bin").exists()
    assert not any(path.endswith("pytorch_model.bin") for path in seen)
    assert missing.returncode == 1 and "mirror-org/absent is not available" in missing.stderr


def _misfit_tokenizer(fixture_model_dir: Path, target: Path) -> Path:
    """A model with a 1,000-token vocabulary beside MiniLM's 30,522-token tokenizer: every text crashes it."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        num_labels=1, architectures=["BertForSequenceClassification"],
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (fixture_model_dir / name).exists():
            shutil.copy(fixture_model_dir / name, target / name)
    return target


def _zero_filled_weights(fixture_model_dir: Path, target: Path) -> Path:
    folder = _copy(fixture_model_dir, target)
    (folder / "model.safetensors").write_bytes(b"\0" * 1024)  # a download that wrote nothing
    return folder


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
@pytest.mark.parametrize(
    ("make", "reason"),
    [(_misfit_tokenizer, "does not belong to these weights"), (_zero_filled_weights, "safetensors")],
)
def test_a_model_that_cannot_run_is_refused_in_one_line_and_leaves_nothing(
    fixture_model_dir, tmp_path, backend, make, reason
) -> None:
    folder = make(fixture_model_dir, tmp_path / "model")
    before = sorted(str(m.tag) for m in bentoml.models.list())
    run = subprocess.run(
        [sys.executable, "import_models.py", "test-org/cannot-run", "--from-dir", str(folder), "--backend", backend],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0, run.stdout
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    assert reason in lines[0] and "test-org/cannot-run" in lines[0] or str(folder) in lines[0]
    assert sorted(str(m.tag) for m in bentoml.models.list()) == before


def test_an_id_that_would_share_a_store_name_with_another_is_refused(fixture_model_dir: Path) -> None:
    """`my-org--other` and `my-org/other` would both be stored as `my-org--other`: one model's weights could then be
    served (or packed into a Bento) for the other. '--' cannot be in a Hugging Face id, and is refused here too."""
    import_from_folder("my-org/other", fixture_model_dir)
    run = subprocess.run(
        [sys.executable, "import_models.py", "my-org--other", "--from-dir", str(fixture_model_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "error: 'my-org--other' cannot be imported: '--' and '..' are not allowed in a model id (as on the Hugging "
        "Face Hub)"
    )
    assert [s.model_id for s in list_rerankers() if s.store_name == "my-org--other"] == ["my-org/other"]
