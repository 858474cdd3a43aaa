"""Prompt templates and tokenisation: what the model reads. One alpaca template or the tokenizer's
chat template for scoring, training and evaluation; records are tokenised once into compact
Encodings; one truncation rule for prompts and prompt + answer pairs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from al_datasets import conversation_turns, take
from al_utils import InputError, progress_bar

# ----------------------------------------------------------------------------------------------
# prompt template: one template for scoring, training and evaluation

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
RESPONSE_MARKER = "### Response:"  # ends every prompt; IFD's direct pass scores the answer after it
ANSWER_SEP = " "  # the answer follows "### Response:" after a single space and ends with EOS



def format_prompt(instruction: str, input: str = "") -> str:
    if input.strip():
        return PROMPT_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def user_turn(r: dict) -> dict:
    """--prompt_template chat: the user turn is the instruction, then the input after a blank line."""
    return {"role": "user", "content": r["instruction"] + ("\n\n" + r["input"] if has_input(r) else "")}


def chat_context(r: dict) -> list[dict]:
    """--prompt_template chat: the messages before the answer: the user turn, or a conversation's
    turns before its final assistant turn."""
    parsed = conversation_turns(r)
    if parsed is None:
        return [user_turn(r)]
    seq = parsed[1][:-1] if parsed[1][-1][0] == "assistant" else parsed[1]
    return [{"role": role, "content": text} for role, text in seq]


def has_input(r: dict) -> bool:
    """The record has an input (context) block: not empty, not only white space."""
    return bool(r["input"].strip())


def request_text(r: dict) -> str:
    """What the user asks, as text: the instruction (+ the input on the next line), or every user turn
    of a conversation, a blank line apart (self_ask's question)."""
    parsed = conversation_turns(r)
    if parsed is not None:
        return "\n\n".join(t for role, t in parsed[1] if role == "user")
    return r["instruction"] + ("\n" + r["input"] if has_input(r) else "")


def check_template(tokenizer, template: str, where: str) -> None:
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{where}: tokenizer: has no chat template (--prompt_template chat formats prompts with "
                         "the tokenizer's own; use --prompt_template alpaca)")


def batch_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids, special tokens added: through the Rust tokenizer itself where there is one
    and it is set to neither truncate nor pad (a tokenizer.json may ask for either; the transformers
    call turns that off per call, so those go through it). The call's per-text conversion was about
    a quarter of tokenising a pool (benchmarks/results/tokenise.md); the ids are the same."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if not texts:
        return []
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(texts, return_attention_mask=False).input_ids
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=True)]


def _chat_ids(tokenizer, conversations: list[list[dict]], generation_prompt: bool) -> list[list[int]]:
    return [list(x) for x in tokenizer.apply_chat_template(conversations, add_generation_prompt=generation_prompt,
                                                           tokenize=True)["input_ids"]]


def prompt_ids(tokenizer, records: Sequence[dict], template: str = "alpaca") -> list[list[int]]:
    """Each record's prompt ids: BOS + the alpaca prompt, or the tokenizer's chat template applied
    to the turns before the answer with the assistant's turn opened (add_generation_prompt)."""
    if not records:
        return []
    if template == "chat":
        return _chat_ids(tokenizer, [chat_context(r) for r in records], True)
    return batch_ids(tokenizer, [format_prompt(r["instruction"], r["input"]) for r in records])


def response_marker_ids(tokenizer, template: str = "alpaca") -> list[int]:
    """What IFD's direct pass puts before the answer: BOS + "### Response:" (Cherry_LLM), or with
    chat the first token and the assistant-turn header the template opens (found on ids: the
    generation prompt minus the prompt without it)."""
    if template == "chat":
        r = {"instruction": "x", "input": ""}
        with_gen = _chat_ids(tokenizer, [[user_turn(r)]], True)[0]
        without = _chat_ids(tokenizer, [[user_turn(r)]], False)[0]
        return with_gen[:1] + with_gen[len(without):]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + \
        tokenizer(RESPONSE_MARKER, add_special_tokens=False).input_ids


# ----------------------------------------------------------------------------------------------
# tokenisation


@dataclass(eq=False)
class Encoded:
    prompt: list[int]  # BOS + templated prompt
    # answer tokens + EOS (empty when the record has no answer), or, in a lazy pool whose answer is
    # not tokenised yet, the call that tokenises it: read through .answer
    answer_or_later: list[int] | Callable[[], list[int]]
    input_block: int = 0  # 1 when the prompt has the alpaca input block: rows alike share a prefix
    instruction_len: int = 0  # tokens of the instruction alone, BOS included (as the original counted)
    spans: tuple = ()  # (start, end) of earlier assistant turns inside the prompt: trained on too (multi-turn)

    @property
    def answer(self) -> list[int]:
        if callable(self.answer_or_later):
            self.answer_or_later = self.answer_or_later()
        return self.answer_or_later

    def __eq__(self, other: object) -> bool:  # the same tokens, whether the answer was read yet or not
        return isinstance(other, Encoded) and (self.prompt, self.answer, self.input_block, self.instruction_len,
                                               self.spans) == (other.prompt, other.answer, other.input_block,
                                                               other.instruction_len, other.spans)

    def prompt_loss(self) -> list[int] | None:
        """1 on the prompt tokens training learns (earlier assistant turns), else 0; None: none."""
        if not self.spans:
            return None
        mask = [0] * len(self.prompt)
        for a, b in self.spans:
            mask[a:b] = [1] * (b - a)
        return mask



def pad_id_of(tokenizer) -> int:
    """pad, else unk, else eos: padding is always masked, so any real id works (no vocab resize)."""
    for tid in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise InputError(f"{tokenizer.name_or_path}: tokenizer: has none of pad/unk/eos tokens")


ENCODE_CHUNK = 2_000  # records tokenised per call: bounds the transient Python lists, drives the progress bar


class Encodings(Mapping):
    """id -> Encoded for a whole pool, held in flat arrays: one int32 buffer of every record's
    prompt ids then answer ids, offsets and lengths per record. A Python list per record cost about
    54 KB of memory each (a million-record pool did not fit); this costs 4 bytes per token. Encoded
    objects are built on access; a later id replaces an earlier one (annotators' answers).

    A lazy pool tokenises prompts only unless asked for answers (ensure(answers=True): the labelled
    set, the held-out set, a strategy that reads answers): a simulated pool's answers are most of
    its text, and a prompt-only strategy never reads them (benchmarks/results/tokenise.md). An
    answer nobody ensured is tokenised when first read (Encoded.answer), one record at a time."""

    def __init__(self, source: tuple | None = None) -> None:
        self.source = source  # lazy: (tokenizer, id -> record, template, progress) encodes ids on demand
        self.rows: dict[Any, int] = {}
        self.buf = np.zeros(0, np.int32)
        self.start = np.zeros(1, np.int64)  # record r's ids are buf[start[r]:start[r + 1]]
        self.plen = np.zeros(0, np.int32)  # of which the first plen[r] are the prompt
        self.input_block = np.zeros(0, np.int8)
        self.ins_len = np.zeros(0, np.int32)
        self.spans: dict[int, tuple] = {}  # row -> Encoded.spans, for the (few) multi-turn records
        self.later = np.zeros(0, np.int8)  # 1: the record has an answer not tokenised yet (answer ids empty)
        self._pending: list = []  # appended chunks not yet joined into the arrays
        self._count = 0  # records appended (rows index them)

    def extend(self, ids: Sequence, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
               input_blocks: Sequence[int], ins_lens: Sequence[int], spans: Sequence[tuple] = (),
               later: Sequence[int] | None = None) -> None:
        """Append records; the arrays are joined once, on the next read (no copy per chunk)."""
        lens = np.array([len(p) + len(a) for p, a in zip(prompts, answers)], np.int64)
        # chain flattens in C: a generator over every token was a seventh of tokenising a pool
        self._pending.append((np.fromiter(chain.from_iterable(chain.from_iterable(zip(prompts, answers))), np.int32,
                                          int(lens.sum())), lens, np.array([len(p) for p in prompts], np.int32),
                              np.array(input_blocks, np.int8), np.array(ins_lens, np.int32),
                              np.zeros(len(lens), np.int8) if later is None else np.array(later, np.int8)))
        self.rows.update((i, self._count + k) for k, i in enumerate(ids))
        self.spans.update((self._count + k, sp) for k, sp in enumerate(spans) if sp)
        self._count += len(lens)

    def _join(self) -> None:
        if not self._pending:
            return
        bufs, lens, plens, tmpl, ins, later = zip(*self._pending)
        self.buf = np.concatenate([self.buf, *bufs])
        self.start = np.concatenate([self.start, self.start[-1] + np.cumsum(np.concatenate(lens))])
        self.plen = np.concatenate([self.plen, *plens])
        self.input_block = np.concatenate([self.input_block, *tmpl])
        self.ins_len = np.concatenate([self.ins_len, *ins])
        self.later = np.concatenate([self.later, *later])
        self._pending = []

    def update(self, other: Encodings) -> None:  # type: ignore[override]
        ids = list(other)
        es = [other[i] for i in ids]  # each built once
        self.extend(ids, [e.prompt for e in es], [e.answer for e in es], [e.input_block for e in es],
                    [e.instruction_len for e in es], [e.spans for e in es])

    def ensure(self, ids: Iterable, answers: bool = False) -> None:
        """Lazy encodings: tokenise (in chunks) the ids not encoded yet, with their answers or not. A
        round calls this with its candidates, so a pool scored a sample at a time is never encoded
        whole. A record encoded without its answer is encoded again whole (a new row)."""
        if self.source is None:
            return
        tokenizer, pool, template, progress = self.source
        self._join()
        missing = [i for i in dict.fromkeys(ids) if i not in self.rows or (answers and self.later[self.rows[i]])]
        self._encode(tokenizer, missing, lambda part: take(pool, part), template, progress, answers)

    def _encode(self, tokenizer, items: Sequence, records_of: Callable[[Sequence], Sequence[dict]], template: str,
                progress: bool, answers: bool = True) -> None:
        """Tokenise `items` ENCODE_CHUNK at a time: records, or ids whose records records_of takes."""
        chunks = range(0, len(items), ENCODE_CHUNK)
        for lo in progress_bar(chunks, desc="tokenising", unit="chunk", enabled=progress and len(chunks) >= 2):
            part, later = records_of(items[lo: lo + ENCODE_CHUNK]), None
            if not answers:  # the answers to tokenise later; the encoders see records without them
                later = [int(bool(r["output"])) for r in part]
                part = [{**r, "output": ""} for r in part]
            self.extend([r["id"] for r in part], *(_encode_chat if template == "chat" else _encode_alpaca)(
                tokenizer, part), later=later)

    def __getitem__(self, i: Any) -> Encoded:
        if i not in self.rows:  # lazy, and asked for one nobody ensured: encode it alone
            self.ensure([i])
        self._join()
        r = self.rows[i]
        a, b, p = int(self.start[r]), int(self.start[r + 1]), int(self.plen[r])
        answer = self._answer_later(i) if self.later[r] else self.buf[a + p: b].tolist()
        return Encoded(self.buf[a: a + p].tolist(), answer, int(self.input_block[r]), int(self.ins_len[r]),
                       self.spans.get(r, ()))

    def _answer_later(self, i: Any) -> Callable[[], list[int]]:
        def answer() -> list[int]:
            self.ensure([i], answers=True)
            return self[i].answer
        return answer

    def __iter__(self) -> Iterator:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def encode_records(tokenizer, records: Sequence[dict], template: str = "alpaca", progress: bool = False) -> Encodings:
    """Tokenise prompt and prompt+answer once per record, in chunks, into compact Encodings."""
    enc = Encodings()
    enc._encode(tokenizer, records, lambda part: part, template, progress)
    return enc


def lazy_encodings(tokenizer, pool: Mapping, template: str = "alpaca", progress: bool = False) -> Encodings:
    """Encodings of a pool that tokenise a record when a round first needs it (Encodings.ensure);
    iteration and len() cover what is encoded so far. Same ids as encode_records, chunking aside."""
    return Encodings((tokenizer, pool, template, progress))


def _instruction_lens(tokenizer, records: Sequence[dict]) -> list[int]:
    return [len(x) for x in batch_ids(tokenizer, [r["instruction"] for r in records])]


def _answers(records: Sequence[dict], p_ids: list, fulls: list, answer_of: Callable) -> list[list[int]]:
    """Each record's answer ids, from its prompt ids and the ids of prompt + answer (`fulls` holds
    those of the records with an answer, in order); no answer: empty."""
    full_of = dict(zip([i for i, r in enumerate(records) if r["output"]], fulls))
    return [answer_of(r, p_ids[i], full_of[i]) if i in full_of else [] for i, r in enumerate(records)]


def _encode_alpaca(tokenizer, records: Sequence[dict]) -> tuple[list, list, list, list]:
    """(prompt ids, answer ids, template kind, instruction length) per record. The answer's ids are
    the tail of the joint tokenisation, so prompt + answer is exactly what the tokenizer makes of
    the whole text."""
    prompts = [format_prompt(r["instruction"], r["input"]) for r in records]
    p_ids = batch_ids(tokenizer, prompts)
    texts = [p + ANSWER_SEP + r["output"] for p, r in zip(prompts, records) if r["output"]]
    fulls = batch_ids(tokenizer, texts)
    eos = [tokenizer.eos_token_id]  # looked up once: the tokenizer's attribute lookup is slow

    def answer_of(r: dict, p: list, full: list) -> list[int]:
        if full[: len(p)] == p:
            return full[len(p):] + eos
        # the boundary merged into one token: tokenise the answer on its own
        return tokenizer(ANSWER_SEP + r["output"], add_special_tokens=False).input_ids + eos

    return (p_ids, _answers(records, p_ids, fulls, answer_of), [int(has_input(r)) for r in records],
            _instruction_lens(tokenizer, records))


def _encode_chat(tokenizer, records: Sequence[dict]) -> tuple[list, list, list, list, list]:
    """--prompt_template chat: the prompt is the rendered turns before the answer with the assistant's
    turn opened; the answer is the rest of the rendered conversation with the answer (its text and
    the template's end-of-turn tokens); a multi-turn conversation's earlier assistant turns are
    spans of the prompt, cut the same way. Boundaries are found on token ids (each shorter rendering
    must begin the longer one), never by re-tokenising text pieces."""
    contexts = [chat_context(r) for r in records]
    p_ids = _chat_ids(tokenizer, contexts, True)
    convs = [c + [{"role": "assistant", "content": r["output"]}] for c, r in zip(contexts, records) if r["output"]]
    fulls = _chat_ids(tokenizer, convs, False) if convs else []

    def refuse(r: dict) -> InputError:
        return InputError(f"{tokenizer.name_or_path}: chat template: record {r['id']!r}: the conversation with its "
                          "answer does not begin with the prompt's tokens (the template renders earlier turns "
                          "differently once more follow); use --prompt_template alpaca or single-turn records")

    def answer_of(r: dict, p: list, full: list) -> list[int]:
        if full[: len(p)] != p:
            raise refuse(r)
        return full[len(p):]

    def spans_of(r: dict, context: list[dict], p: list) -> tuple:
        out = []
        for k, m in enumerate(context):
            if m["role"] != "assistant":
                continue
            opened = _chat_ids(tokenizer, [context[:k]], True)[0]  # ... up to this turn's header
            closed = _chat_ids(tokenizer, [context[: k + 1]], False)[0]  # ... through its end of turn
            if closed[: len(opened)] != opened or p[: len(closed)] != closed:
                raise refuse(r)
            out.append((len(opened), len(closed)))
        return tuple(out)

    spans = [spans_of(r, c, p) for r, c, p in zip(records, contexts, p_ids)]
    return (p_ids, _answers(records, p_ids, fulls, answer_of), [0] * len(records),
            _instruction_lens(tokenizer, records), spans)


def truncate_prompt(prompt: Sequence[int], max_len: int) -> list[int]:
    """The one prompt-truncation rule (scoring, generation, training, evaluation): keep BOS and the
    last max_len - 1 tokens, so the template's "### Response:" always survives."""
    if len(prompt) <= max_len:
        return list(prompt)
    return list(prompt[:1]) + list(prompt[len(prompt) - max_len + 1:])


def truncate_pair(prompt: list[int], answer: list[int], max_len: int) -> tuple[list[int], list[int], bool]:
    """Fit prompt + answer into max_len keeping answer tokens: the prompt is cut by truncate_prompt,
    down to half the context at most; the answer is cut at the end."""
    if len(prompt) + len(answer) <= max_len:
        return prompt, answer, False
    keep_p = min(len(prompt), max(max_len - len(answer), max_len // 2))
    return truncate_prompt(prompt, keep_p), answer[: max_len - keep_p], True
