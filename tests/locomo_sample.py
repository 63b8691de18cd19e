"""A small LoCoMo-format file for tests: two conversations with dated sessions and
questions of every category, facts planted at known turns."""

import json

FACTS = {
    "conv-a": [("Alice", "My sister adopted a greyhound called Biscuit."), ("Bob", "I ran the Lisbon marathon in spring.")],
    "conv-b": [("Carol", "The kitchen renovation budget is 2400 dollars."), ("Dan", "I collect vintage harmonicas from Memphis.")],
}
FILLER = "{who} talked about the weather, the week at work and a film they half watched."


def sample(conv_id: str, sessions: int = 4, per_session: int = 10) -> dict:
    a, b = (FACTS[conv_id][0][0], FACTS[conv_id][1][0])
    conversation = {"speaker_a": a, "speaker_b": b}
    facts = {(1, 3): FACTS[conv_id][0], (3, 5): FACTS[conv_id][1]}
    for s in range(1, sessions + 1):
        conversation[f"session_{s}_date_time"] = f"10:00 am on {s} May, 2023"
        turns = []
        for n in range(1, per_session + 1):
            who = a if n % 2 else b
            speaker, text = facts.get((s, n), (who, FILLER.format(who=who)))
            turns.append({"speaker": speaker, "dia_id": f"D{s}:{n}", "text": text})
        conversation[f"session_{s}"] = turns
    (first, fact1), (second, fact2) = FACTS[conv_id]
    qa = [
        {"question": f"What is the name of the dog {first}'s sister adopted?" if conv_id == "conv-a" else "What is the renovation budget?",
         "answer": "Biscuit" if conv_id == "conv-a" else 2400, "evidence": ["D1:3"], "category": 4},
        {"question": "When did the first session take place?", "answer": "1 May 2023", "evidence": ["D1:1"], "category": 2},
        {"question": "What two facts were shared?", "answer": "greyhound, marathon", "evidence": ["D1:3", "D3:5"], "category": 1},
        {"question": "Would they enjoy travel?", "answer": "Likely yes; they mention trips", "evidence": ["D3:5"], "category": 3},
        {"question": "What is their cat called?", "adversarial_answer": "Tom", "evidence": ["D2:2"], "category": 5},
        {"question": "Which city did the marathon happen in?" if conv_id == "conv-a" else "Where are the harmonicas from?",
         "answer": "Lisbon" if conv_id == "conv-a" else "Memphis", "evidence": ["D3:5"], "category": 4},
    ]
    return {"sample_id": conv_id, "conversation": conversation, "qa": qa}


def write(path) -> str:
    path.write_text(json.dumps([sample("conv-a"), sample("conv-b")]), encoding="utf-8")
    return str(path)
