"""CPU classes (issue #31): `import_models.py --backend auto` chooses the fastest path of this class of CPU whose
rankings hold against float32, the fidelity gate refuses one that does not, and a model imported on one class of CPU
loads on another. CPU flags are faked; the conversions, the gate's scores and the loads are real."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rerank_server import cpu
from rerank_server.backends import convert
from rerank_server.backends.openvino_backend import model_file
from rerank_server.backends.torch_backend import resolve_dtype
from rerank_server.engine.passes import score_directly
from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.cpu_path import candidates
from rerank_server.importer.fidelity import Fidelity
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.loaded import load_reranker
from rerank_server.models.store import find_reranker

FLAGS = {
    "amx": {"sse4_2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"},
    "avx512-bf16": {"sse4_2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"},
    "avx2": {"sse4_2", "avx2", "fma"},
    "other": {"fp", "asimd"},
}


@pytest.fixture
def cpu_is(monkeypatch):
    """Fakes this CPU's flags, on a host without a GPU (where --backend auto stores torch)."""
    from rerank_server.importer import commit

    monkeypatch.setattr(commit, "gpu_visible", lambda: False)

    def fake(cpu_class: str) -> None:
        monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(FLAGS[cpu_class]))

    return fake


def test_the_class_comes_from_the_cpu_flags(tmp_path: Path) -> None:
    for name, flags in FLAGS.items():
        assert cpu.cpu_class(frozenset(flags)) == name
    assert cpu.has_native_bf16(frozenset(FLAGS["avx512-bf16"])) and not cpu.has_native_bf16(frozenset(FLAGS["avx2"]))
    # AVX-512 bf16 without VNNI is not the class whose int8 and bf16 paths were measured.
    assert cpu.cpu_class(frozenset({"avx2", "avx512_bf16"})) == "avx2"


def test_auto_tries_each_class_fastest_path_first() -> None:
    assert [c.label for c in candidates("avx512-bf16", convertible=True)] == [
        "openvino-int8 in bfloat16", "torch in bfloat16",
    ]  # fmt: skip
    assert [c.label for c in candidates("amx", convertible=True)][0] == "torch in bfloat16"
    assert [c.label for c in candidates("avx2", convertible=True)] == ["openvino-int8"]
    # LLM rerankers, ColBERT, listwise: torch only, bfloat16 where it is native, never emulated.
    assert [c.label for c in candidates("avx512-bf16", convertible=False)] == ["torch in bfloat16"]
    assert candidates("avx2", convertible=False) == () == candidates("other", convertible=True)


def test_torch_runs_a_model_stored_for_bfloat16_in_it_only_where_the_cpu_has_it(cpu_is) -> None:
    cpu_is("avx512-bf16")
    assert resolve_dtype("auto", "cpu", None, "bfloat16") == torch.bfloat16
    assert resolve_dtype("auto", "cuda", None, "bfloat16") == torch.float16, "a GPU follows RERANK_DTYPE"
    assert resolve_dtype("float32", "cpu", None, "bfloat16") == torch.float32, "RERANK_DTYPE set wins"
    cpu_is("avx2")
    assert resolve_dtype("auto", "cpu", None, "bfloat16") == torch.float32


@pytest.mark.parametrize(
    ("cpu_class", "backend", "precision"),
    [("avx2", "openvino-int8", "float32"), ("amx", "torch", "bfloat16"), ("other", "torch", "float32")],
)
def test_auto_stores_the_fastest_path_of_the_cpu_class_and_says_why(
    cpu_is, fixture_model_dir: Path, cpu_class: str, backend: str, precision: str
) -> None:
    cpu_is(cpu_class)
    # A floor this test's subject (the choice per class) does not hinge on; the gate itself is tested below.
    result = import_from_folder(
        f"test-org/auto-{cpu_class}", fixture_model_dir, ImportOptions(backend="auto", min_spearman=0.9)
    )
    stored = result.stored
    assert (stored.backend, stored.cpu_precision) == (backend, precision)
    assert stored.cpu_class == ("" if backend == "torch" and precision == "float32" else cpu_class)
    assert cpu_class in result.cpu_choice and cpu.CPU_CLASSES[cpu_class] in result.cpu_choice
    if cpu_class == "other":
        assert "no faster path" in result.cpu_choice
    else:
        assert "worst-query Spearman" in result.cpu_choice and "keeps rankings" in result.cpu_choice
    if backend == "openvino-int8":
        assert not list(stored.path.glob("*.safetensors")), "the runtime's copy of the weights is the only one"


def test_the_gate_refuses_a_named_path_that_reorders_rankings_and_stores_nothing(fixture_model_dir: Path) -> None:
    # ONNX Runtime's dynamic int8 quantizes activations too: on this fixture its worst query falls far under 0.99.
    with pytest.raises(ModelImportError, match=r"onnx-int8 changes its rankings against float32: worst-query Spear"):
        import_from_folder("test-org/gated", fixture_model_dir, ImportOptions(backend="onnx-int8"))
    assert find_reranker("test-org/gated") is None


def test_auto_falls_back_to_float32_when_no_faster_path_keeps_rankings(
    monkeypatch, cpu_is, fixture_model_dir: Path
) -> None:
    # Every path's rankings judged broken, whatever this CPU's arithmetic makes of them (the conversions are real).
    from rerank_server.importer import cpu_path

    broken = Fidelity(worst_spearman=0.5, worst_top10=3, top=10, max_abs_delta=1.0, lists=6, documents=20)
    monkeypatch.setattr(cpu_path, "_scores", lambda draft, choice, probes: [np.zeros(20)])
    monkeypatch.setattr(cpu_path, "compare", lambda candidate, reference, source: broken)
    cpu_is("avx512-bf16")
    result = import_from_folder("test-org/auto-strict", fixture_model_dir, ImportOptions(backend="auto"))
    stored = result.stored
    assert (stored.backend, stored.cpu_precision, stored.cpu_class) == ("torch", "float32", "")
    assert "openvino-int8 in bfloat16 changes its rankings" in result.cpu_choice
    assert "torch in bfloat16 changes its rankings" in result.cpu_choice
    assert not (stored.path / "openvino").exists(), "a refused conversion leaves nothing behind"
    assert list(stored.path.glob("*.safetensors")), "float32 torch keeps its weights"


@pytest.mark.parametrize(
    ("cpu_class", "backend", "refusal"),
    [
        ("avx2", "torch", "has no native bfloat16 to check it on"),
        ("avx512-bf16", "onnx-int8", "is for --backend torch, openvino or openvino-int8"),
        ("avx512-bf16", "auto", "chooses the precision itself"),
    ],
)
def test_bfloat16_is_refused_where_it_means_nothing_or_cannot_be_checked(
    cpu_is, fixture_model_dir: Path, cpu_class: str, backend: str, refusal: str
) -> None:
    cpu_is(cpu_class)
    with pytest.raises(ModelImportError, match=refusal):
        import_from_folder(
            "test-org/unchecked", fixture_model_dir, ImportOptions(backend=backend, cpu_precision="bfloat16")
        )
    assert find_reranker("test-org/unchecked") is None


def test_the_conversion_is_deterministic(fixture_model_dir: Path, tmp_path: Path) -> None:
    converted = []
    for name in ("first", "second"):
        folder = shutil.copytree(fixture_model_dir, tmp_path / name)
        convert(folder, "openvino-int8")
        xml = model_file(folder, "openvino-int8")
        # OpenVINO numbers unnamed constants from a counter of the process; a new process starts it again.
        graph = re.sub(r'name="[^"]*"', lambda name: re.sub(r"(_\d+)+", "_N", name.group()), xml.read_text())
        converted.append((graph, xml.with_suffix(".bin").read_bytes()))
    assert converted[0] == converted[1]


def test_a_model_imported_for_one_class_loads_on_another(cpu_is, fixture_model_dir: Path, caplog) -> None:
    cpu_is("avx512-bf16")
    stored = import_from_folder(
        "test-org/moved", fixture_model_dir,
        ImportOptions(backend="openvino-int8", cpu_precision="bfloat16", min_spearman=0),
    ).stored  # fmt: skip
    assert (stored.cpu_class, stored.cpu_precision) == ("avx512-bf16", "bfloat16")
    cpu_is("avx2")
    with caplog.at_level(logging.WARNING, logger="bentoml"):
        model = load_reranker(stored, device="cpu")
    try:
        assert "imported for avx512-bf16 CPUs (bfloat16), and this CPU is avx2: it runs in float32" in caplog.text
        assert "float32" in str(model.backend.compiled.get_property("INFERENCE_PRECISION_HINT"))
        assert len(score_directly(model, ["a query"], ["a document"]).scores) == 1
    finally:
        model.release()
    # Stored unchecked (--min-spearman 0): an import that checks is not "the same source, already stored".
    cpu_is("avx512-bf16")
    checked = import_from_folder(
        "test-org/moved", fixture_model_dir,
        ImportOptions(backend="openvino-int8", cpu_precision="bfloat16", min_spearman=0.5),
    )  # fmt: skip
    assert not checked.skipped and "worst-query Spearman" in checked.stored.fidelity


def test_auto_on_a_gpu_host_stores_torch(monkeypatch, cpu_is, fixture_model_dir: Path) -> None:
    """`make serve` imports with --backend auto everywhere: where a GPU is visible that means torch, whose precision
    RERANK_DTYPE decides on the GPU, whatever the CPU beside it has."""
    from rerank_server.importer import commit

    monkeypatch.setattr(commit, "gpu_visible", lambda: True)
    cpu_is("avx512-bf16")
    result = import_from_folder("test-org/auto-gpu", fixture_model_dir, ImportOptions(backend="auto"))
    assert (result.stored.backend, result.stored.cpu_precision, result.stored.cpu_class) == ("torch", "float32", "")
    assert "a GPU is visible" in result.cpu_choice
