"""The README quickstart's chat questions against a memory holding its one fact, in Python, through
the code the Decoder deployment runs for /v1/chat/completions (chat template, `chat_read`, `complete`).

    python jobs/diagnostics/chat_memory.py [MODEL]      (default larimar-smol-v3)
"""

import sys

from larimar import LarimarEditor
from larimar.serving.completion import chat_ids, complete

memory = LarimarEditor.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "larimar-smol-v3").create_memory()
memory.edit("The Eiffel Tower is located in the city of", "Rome", subject="Eiffel Tower")
for q in [
    "Where is the Eiffel Tower located?",
    "In which city is the Eiffel Tower?",
    "Tell me where the Eiffel Tower stands.",
]:
    z, _ = memory.read([q])
    [out] = complete(
        memory.model, [chat_ids(memory.model, [{"role": "user", "content": q}])], memory.model.decoder.chat_read(z), 12
    )
    print(q, "->", repr(out.text))
