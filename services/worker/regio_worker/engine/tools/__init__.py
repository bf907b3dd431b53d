"""Tool calling on models that have no tool format of their own in our chat formats, one generic
convention every instruction-tuned model can follow (the Hermes/Qwen one):

- the system text gains a tools section (markup.py): one JSON line per function and the
  instruction to answer a call as `<tool_call>{"name": …, "arguments": {…}}</tool_call>`;
- a conversation's assistant calls are written back the same way, and `tool` results become
  user turns wrapped in `<tool_response name="…">…</tool_response>`, so every chat format (Gemma
  has only user and model roles) can carry them;
- a grammar (grammar.py) makes the calls valid: from the first answer token for
  tool_choice "required" or a named function, lazily from `<tool_call>` on for "auto";
- a streaming parser (parser.py) turns the answer text into TextDelta and ToolCallDelta events.
"""
