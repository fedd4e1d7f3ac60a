"""Cross-validated thresholds of the injection classifier (bench/train_injection.py --cv):
the BIPIA folds hold out contexts and attack categories without overlap, the per-kind
threshold holds FPR on every document kind, and the evaluation can use a model's own
thresholds instead of re-choosing them on validation data the model was trained on.

They need scipy (in the ``test`` and ``bench`` extras); the BIPIA files are tiny
synthetic ones written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import injection_data as data

pytest.importorskip("scipy")


def _train_injection():  # type: ignore[no-untyped-def]
    # Imported late: the training script puts bench/ on sys.path, where bench/profile.py
    # would shadow the standard library's profile for the test modules collected after.
    from bench import train_injection

    return train_injection


def _write_bipia(directory: Path, n_email: int = 10, n_table: int = 20) -> None:
    contexts = {"email": [f"SUBJECT: note {i}|CONTENT: hello {i}" for i in range(n_email)],
                "table": [f"| a | b |\n| {i} | {i + 1} |" for i in range(n_table)]}
    for kind, items in contexts.items():
        (directory / f"{kind}_train.jsonl").write_text(
            "\n".join(json.dumps({"context": c}) for c in items) + "\n", encoding="utf-8")
    attacks = {f"cat{c}": [f"attack {c}-{j}: do thing {j}" for j in range(5)] for c in range(15)}
    (directory / "text_attack_train.json").write_text(json.dumps(attacks), encoding="utf-8")


def test_bipia_folds_hold_out_each_context_and_category_once(tmp_path: Path) -> None:
    _write_bipia(tmp_path)
    folds = data.bipia_folds(5, seed=0, directory=tmp_path)
    assert len(folds) == 5
    held_contexts: list[str] = []
    held_attacks: list[str] = []
    for fit, held in folds:
        # Disjoint: a fold's model never sees its held-out contexts or attack categories.
        assert not set(fit.contexts) & set(held.contexts)
        assert not set(fit.attacks) & set(held.attacks)
        assert len(fit.contexts) + len(held.contexts) == 30
        # Stratified by kind: every held-out part has both kinds, in proportion.
        assert held.kinds.count("email") == 2 and held.kinds.count("table") == 4
        assert len(held.attacks) == 15  # three categories of five
        held_contexts += held.contexts
        held_attacks += held.attacks
    assert len(held_contexts) == len(set(held_contexts)) == 30
    assert len(held_attacks) == len(set(held_attacks)) == 75


def test_bipia_samples_of_a_fold_are_clean_and_injected_copies(tmp_path: Path) -> None:
    _write_bipia(tmp_path)
    _, held = data.bipia_folds(5, seed=0, directory=tmp_path)[0]
    samples = data.bipia_samples(held, attacks_per_context=2)
    assert len(samples) == 3 * len(held.contexts)
    clean = [s for s in samples if s.label == 0]
    assert [s.text for s in clean] == held.contexts
    for s in samples:
        if s.label == 1:
            assert any(a in s.text for a in held.attacks)


def test_threshold_per_kind_bounds_fpr_on_every_kind() -> None:
    rng = np.random.default_rng(0)
    # 500 tables scoring low, 50 e-mails scoring higher, 200 positives.
    scores = np.concatenate([rng.uniform(0, 0.5, 500), rng.uniform(0.3, 0.9, 50),
                             rng.uniform(0.6, 1.0, 200)])
    y = np.concatenate([np.zeros(550), np.ones(200)])
    kinds = np.array(["table"] * 500 + ["email"] * 50 + ["-"] * 200)
    train_injection = _train_injection()
    pooled, _ = train_injection.threshold_at_fpr(scores, y, 0.02)
    per_kind = train_injection.threshold_per_kind(scores, y, kinds, 0.02)
    email_fpr = float((scores[kinds == "email"] >= per_kind).mean())
    table_fpr = float((scores[kinds == "table"] >= per_kind).mean())
    assert email_fpr <= 0.02 and table_fpr <= 0.02
    # The pooled threshold lets the minority kind through far more often.
    assert float((scores[kinds == "email"] >= pooled).mean()) > 0.1
    assert per_kind > pooled


def test_evaluation_can_use_the_detectors_own_thresholds() -> None:
    from bench import injection_eval

    from proxy.injection.detector import Detector

    class Fixed:
        name = "fixed"
        version = "fixed-1"
        thresholds = {"user": 0.7, "tool": 0.9}

        def score(self, text: str, role: str) -> float:
            return 0.8

    def sample(label: int, role: str = "user") -> data.Sample:
        return data.Sample(f"text {label} {role}", label, role)

    sets = {name: [sample(0), sample(1)] for name in
            ("nc_val", "nc_test", "bastion", "inthewild", "slabs_test")}
    sets["bipia_val"] = [sample(0, "tool"), sample(1, "tool")]
    sets["bipia_test"] = [sample(0, "tool"), sample(1, "tool")]
    det = Detector(Fixed(), rules=())  # type: ignore[arg-type]
    own = injection_eval.evaluate("fixed", det, sets, own_thresholds=True)
    assert own["thresholds"] == {"user": 0.7, "tool": 0.9}
    assert own["threshold_source"] == "model"
    # 0.8 passes the user threshold, not the tool one.
    assert own["nc_test"]["recall"] == 1.0 and own["nc_test"]["fpr"] == 1.0  # type: ignore[index]
    assert own["bipia_test"]["recall"] == 0.0  # type: ignore[index]
    val = injection_eval.evaluate("fixed", det, sets)
    assert val["threshold_source"] == "validation"
    assert val["thresholds"] != own["thresholds"]
