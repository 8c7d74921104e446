"""How the toy enhancer copes with words it never saw: terse prompts written with synonyms held out of its training.

For the eval-split intents (what a user means), two prompt sets say exactly that intent in other words:
- `synonyms`: every stated attribute in an everyday synonym no training prompt uses (crimson orb drifting
  leftward sluggishly); the apply-time reader (enhance/intent.py) knows these words;
- `unread`: the training words, with one attribute word replaced by a word nobody's list has (vermilion,
  rhomboid, dawdling): what the check cannot read.
Each prompt is rewritten by the enhancer (a) as it was before the intent check (`check.intent=false`: the prompt
goes in as typed, only the caption grammar is checked) and (b) as applied now (the prompt read in training
words, every rewrite checked against what the prompt states). Every output is judged against the true intent:
`kept` (a rewrite that states the whole intent), `fallback` (the prompt itself), `contradiction` (a rewrite that
changes, adds or drops something stated). No video model runs.

    .venv/bin/python bench/enhancer_robustness.py --enhancer shapeworld-enhancer --n 256

Writes bench/results/enhancer_robustness.json.
"""

from __future__ import annotations

import argparse

import numpy as np
from results_file import write_results

from vidpost.enhance.intent import SYNONYMS, states_intent
from vidpost.enhance.resolve import load_enhancer
from vidpost.evaluation import shapeworld_records
from vidpost.world.grammar import parse_caption
from vidpost.world.prompts import COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS, SPEED_WORDS, terse_text
from vidpost.world.spec import SceneSpec

# words in no list: not in training, not in the reader's synonyms (replace the training word of that attribute)
UNREAD = {
    "colour": ["vermilion", "cerulean", "chartreuse"],
    "shape": ["rhomboid", "lozenge", "spheroid"],
    "size": ["colossal", "itty-bitty"],
    "speed": ["dawdling", "hurtling"],
}


def synonym_prompt(intent: SceneSpec, rng: np.random.Generator) -> str:
    """The intent said with SYNONYMS' words wherever one exists (the structure of a terse prompt)."""
    phrases = []
    for obj in intent.objects:
        words = [rng.choice(SYNONYMS["size"][obj.size])] if obj.size else []
        words += [rng.choice(SYNONYMS["colour"][obj.colour]), rng.choice(SYNONYMS["shape"][obj.shape])]
        if obj.motion is not None:
            words.append(rng.choice(SYNONYMS["motion"][obj.motion]))
        if obj.speed is not None:
            words.append(rng.choice(SYNONYMS["speed"][obj.speed]))
        phrases.append(" ".join(words))
    text = " and ".join(phrases)
    if intent.background is not None:
        text += f" on a {'grey' if intent.background == 'gray' else intent.background} background"
    return text


def unread_prompt(intent: SceneSpec, rng: np.random.Generator) -> str:
    """The intent in training words, one stated colour, shape, size or speed word swapped for an UNREAD word."""
    text = terse_text(intent, rng)
    obj = intent.objects[int(rng.integers(len(intent.objects)))]
    choices = {"colour": obj.colour, "shape": obj.shape, "size": obj.size, "speed": obj.speed}
    attribute = rng.choice([a for a, v in choices.items() if v is not None])
    said = {"colour": COLOUR_WORDS, "shape": SHAPE_WORDS, "size": SIZE_WORDS, "speed": SPEED_WORDS}[attribute][
        choices[attribute]
    ]
    words = text.split()
    at = next((i for i, w in enumerate(words) if w.strip(",") in said), None)
    if at is None:  # the word sits in a phrase (never for these attributes); keep the prompt as it is
        return text
    words[at] = str(rng.choice(UNREAD[attribute])) + ("," if words[at].endswith(",") else "")
    return " ".join(words)


def judge(outputs: list[str], prompts: list[str], intents: list[SceneSpec]) -> dict[str, float]:
    kept = fallback = contradiction = 0
    for out, prompt, intent in zip(outputs, prompts, intents, strict=True):
        if out == " ".join(prompt.split()):
            fallback += 1
        elif states_intent(parse_caption(out), intent):
            kept += 1
        else:
            contradiction += 1
    n = len(outputs)
    return {"intent_kept": kept / n, "fallback": fallback / n, "contradiction": contradiction / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enhancer", default="shapeworld-enhancer", help="a toy enhancer (name, folder or run)")
    parser.add_argument("--n", type=int, default=256, help="prompts per set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the intents and the words")
    parser.add_argument("--name", default="enhancer_robustness", help="results file stem")
    args = parser.parse_args()

    intents = [parse_caption(r["intent"]) for r in shapeworld_records("eval", args.n, args.seed)]
    rng = np.random.default_rng(args.seed)
    sets = {"synonyms": [synonym_prompt(i, rng) for i in intents], "unread": [unread_prompt(i, rng) for i in intents]}
    rows, examples = {}, {}
    for mode, overrides in (("before", ["check.intent=false"]), ("after", [])):
        for name, prompts in sets.items():
            enhancer = load_enhancer(args.enhancer, overrides)
            outputs = enhancer.rewrite(prompts)
            rows[f"{name}/{mode}"] = {
                **judge(outputs, prompts, intents),
                "fallback_reasons": enhancer.counts.as_metrics(""),
            }
            examples[f"{name}/{mode}"] = [
                {"prompt": p, "output": o} for p, o in list(zip(prompts, outputs, strict=True))[:5]
            ]
            print(
                f"{name:9s} {mode:6s} "
                + "  ".join(f"{k} {v:.3f}" for k, v in rows[f"{name}/{mode}"].items() if isinstance(v, float))
            )
    path = write_results(args.name, enhancer=args.enhancer, n=args.n, seed=args.seed, rows=rows, examples=examples)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
