import json

import pytest

from paged_context.sim.conversations import load_locomo

SAMPLE = [
    {
        "sample_id": "conv-x",
        "conversation": {
            "speaker_a": "Ann",
            "speaker_b": "Bo",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Ann", "dia_id": "D1:1", "text": "I adopted a cat."},
                {"speaker": "Bo", "dia_id": "D1:2", "text": "Look!", "img_url": ["x"], "blip_caption": "a photo of a cat"},
            ],
            "session_2_date_time": "2:00 pm on 9 May, 2023",
            "session_3_date_time": "no turns for this date",
            "session_2": [{"speaker": "Ann", "dia_id": "D2:1", "text": "The cat is called Miso."}],
        },
        "qa": [
            {"question": "What did Ann adopt?", "answer": "a cat", "evidence": ["D1:1"], "category": 4},
            {"question": "How many cats?", "answer": 1, "evidence": ["D1:1; D2:1"], "category": 1},
            {"question": "Broken evidence", "answer": "x", "evidence": ["D"], "category": 2},
            {"question": "No evidence", "answer": "x", "evidence": [], "category": 2},
            {"question": "Adversarial", "adversarial_answer": "a dog", "evidence": ["D2:1"], "category": 5},
        ],
    }
]


def test_locomo_format_is_read_leniently(tmp_path):
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps(SAMPLE))
    (conv,) = load_locomo(path)
    assert conv.id == "conv-x" and len(conv.turns) == 3
    assert [(t.role, t.speaker, t.session, t.dia_id) for t in conv.turns] == [
        ("user", "Ann", 1, "D1:1"),
        ("assistant", "Bo", 1, "D1:2"),
        ("user", "Ann", 2, "D2:1"),
    ]
    assert conv.turns[1].text == "Look! [shares a photo of a cat]"
    assert [(p.question, p.answer, p.evidence, p.category) for p in conv.probes] == [
        ("What did Ann adopt?", "a cat", (0,), "4"),
        ("How many cats?", "1", (0, 2), "1"),
        ("Adversarial", "a dog", (2,), "5"),
    ]
    assert all(p.at == 3 for p in conv.probes)


def test_not_locomo_is_a_clear_error(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"conversation": []}))
    with pytest.raises(ValueError, match="not a LoCoMo file"):
        load_locomo(path)
