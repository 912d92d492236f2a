"""Does SmolLM2-Instruct use a fact given as text inside its chat template? (README, "Larimar-smol v3":
why chat turns read with the slot at value_chat_latent_scale.) The README quickstart's fact, as plain
text in the system or the user message, IKE-style with and without a demonstration; greedy, 12 tokens.

    python jobs/diagnostics/chat_incontext.py
"""

from larimar.model import LarimarModel

m = LarimarModel.from_pretrained("larimar/pretrained/larimar-smol-v3")
tok, lm = m.decoder_tokenizer, m.decoder.lm
demo = "New Fact: The Colosseum is in the city of Toronto.\nPrompt: Where is the Colosseum? It is in the city of Toronto.\n"
fact = "The Eiffel Tower is located in the city of Rome"
qs = [
    "Where is the Eiffel Tower located?",
    "In which city is the Eiffel Tower?",
    "Tell me where the Eiffel Tower stands.",
]
variants = {
    "sys-fact": lambda q: [{"role": "system", "content": f"New Fact: {fact}"}, {"role": "user", "content": q}],
    "sys-demo": lambda q: [{"role": "system", "content": demo + f"New Fact: {fact}"}, {"role": "user", "content": q}],
    "sys-demo-prompt": lambda q: [
        {"role": "system", "content": demo + f"New Fact: {fact}\nPrompt:"},
        {"role": "user", "content": q},
    ],
    "user-ike": lambda q: [{"role": "user", "content": demo + f"New Fact: {fact}\nPrompt: {q}"}],
    "default-sys+user-ike": lambda q: [
        {"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
        {"role": "user", "content": f"New Fact: {fact}\nPrompt: {q}"},
    ],
}
for name, f in variants.items():
    for q in qs:
        text = tok.apply_chat_template(f(q), add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        out = lm.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        print(name, "|", q, "->", repr(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)))
