"""TokenCorpus: ragged compact rows give back exactly the padded ids; sources concatenate by row blocks."""
from __future__ import annotations

import numpy as np
import pytest

from distmeta.text.corpus import TokenCorpus, id_dtype, offset_dtype


def padded_reference(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : min(len(r), width)] = r[:width]
    return out


def test_smallest_types():
    assert id_dtype(200) == np.uint8 and id_dtype(256) == np.uint8 and id_dtype(257) == np.uint16
    assert id_dtype(30522) == np.uint16 and id_dtype(70000) == np.uint32
    assert offset_dtype(10) == np.uint32 and offset_dtype(2**32) == np.int64


@pytest.mark.parametrize("vocab", [200, 30522, 100000])
def test_padded_rows_equal_the_padded_reference(vocab):
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, vocab, size=rng.integers(1, 9)).tolist() for _ in range(50)]
    ref = padded_reference(rows, 8)
    corpus = TokenCorpus.from_padded(ref, vocab)
    assert corpus.ids.dtype == id_dtype(vocab) and len(corpus) == 50
    assert corpus.nbytes == corpus.ids.nbytes + corpus.offsets.nbytes < ref.nbytes
    pick = rng.integers(0, 50, size=30)
    np.testing.assert_array_equal(corpus.padded(pick), ref[pick])
    np.testing.assert_array_equal(corpus.padded(pick, width=3), ref[pick, :3])
    np.testing.assert_array_equal(corpus.lengths(), [len(r) for r in rows])


def test_a_literal_pad_inside_a_row_is_kept():
    ref = np.array([[2, 0, 5, 3, 0, 0], [2, 3, 0, 0, 0, 0]])
    corpus = TokenCorpus.from_padded(ref, 10)
    np.testing.assert_array_equal(corpus.padded([0, 1]), ref)
    assert corpus.lengths().tolist() == [4, 2]


def test_a_pretrained_pad_id_pads_rows_and_round_trips():
    """RoBERTa / MPNet pad with id 1 and start every row with <s> = 0, a real token."""
    rows = [[0, 7, 2], [0, 2], [0, 9, 9, 1, 2]]  # a literal <pad> inside a row is still a token
    ref = padded_reference(rows, 6)
    ids = np.where(ref == 0, 1, ref)
    ids[:, 0] = 0
    corpus = TokenCorpus.from_padded(ids, pad_id=1)
    assert corpus.pad_id == 1 and corpus.lengths().tolist() == [3, 2, 5]
    assert corpus.padded([2, 0], 4).tolist() == [[0, 9, 9, 1], [0, 7, 2, 1]]
    np.testing.assert_array_equal(corpus.padded([0, 1, 2]), ids)
    assert TokenCorpus.concat([corpus, corpus]).pad_id == 1
    with pytest.raises(ValueError, match="one pad_id"):
        TokenCorpus.concat([corpus, TokenCorpus.from_padded(padded_reference(rows, 6))])


def test_sources_concatenate_as_row_blocks():
    a = TokenCorpus.from_padded(np.array([[2, 7, 3, 0], [2, 3, 0, 0]]), 300)
    b = TokenCorpus.from_padded(np.array([[2, 9, 9, 3], [2, 4, 3, 0], [2, 3, 0, 0]]), 300)
    both = TokenCorpus.concat([a, b])
    assert both.starts == [0, 2] and len(both) == 5 and TokenCorpus.concat([a]) is a
    np.testing.assert_array_equal(both.padded(both.global_rows(1, [0, 2])), b.padded([0, 2]))
    np.testing.assert_array_equal(both.padded(both.global_rows(0, [1])), a.padded([1]))


def test_a_memory_mapped_corpus_pickles_its_arrays_out_of_band(tmp_path):
    # Ray's object store keeps out-of-band buffers once per node and hands actors read-only
    # views: a memmap pickled as such would travel in-band and arrive as a private copy.
    import pickle

    np.save(tmp_path / "ids.npy", np.arange(1000, dtype=np.uint16))
    np.save(tmp_path / "off.npy", np.arange(0, 1001, 10, dtype=np.uint32))
    corpus = TokenCorpus(np.load(tmp_path / "ids.npy", mmap_mode="r"), np.load(tmp_path / "off.npy", mmap_mode="r"), 16)
    buffers = []
    payload = pickle.dumps(corpus, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2 and len(payload) < 1000
    back = pickle.loads(payload, buffers=buffers)
    assert type(back.ids) is np.ndarray and np.array_equal(back.padded([3, 99]), corpus.padded([3, 99]))
