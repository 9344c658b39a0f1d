"""Finding the answer in a completion.

The answer is the content of the last *complete* ``<answer>…</answer>`` pair anywhere in the completion:
tags are case-sensitive, the content may span lines, and text after the closing tag is ignored.
A pair is an opening tag followed by the first closing tag after it; so in ``<answer>a<answer>b</answer>``
the pair is ``<answer>b</answer>`` and in ``<answer>1</answer></answer>`` it is ``<answer>1</answer>``.
Only ``str.rfind`` / ``str.find`` are used: linear time, no regular-expression backtracking.
"""

from __future__ import annotations

OPEN = "<answer>"
CLOSE = "</answer>"
# Python's str.strip() also strips Unicode spaces; the spec allows ASCII whitespace only.
ASCII_WS = " \t\n\r\x0b\x0c"


def extract_answer(completion: str) -> str | None:
    """Content of the last complete answer pair, or None when there is none."""
    if not isinstance(completion, str):
        return None
    last_close = completion.rfind(CLOSE)
    if last_close < 0:
        return None
    # The last opening tag that ends before the last closing tag starts.
    start = completion.rfind(OPEN, 0, last_close)
    if start < 0:
        return None
    content_start = start + len(OPEN)
    close = completion.find(CLOSE, content_start)
    return completion[content_start:close]


def strip_ascii_ws(text: str) -> str:
    """Strip ASCII whitespace only (never Unicode spaces)."""
    return text.strip(ASCII_WS)
