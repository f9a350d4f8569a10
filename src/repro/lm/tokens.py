"""Turning dataset rows into (input_ids, labels) and padded batches.

Instruction rows are rendered with the model's own chat template and only the assistant's reply is
supervised (labels of the prompt are -100). Text rows are token-id blocks, every token supervised.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_supervised(self) -> int:
        # Position t predicts token t+1, so the first label never counts.
        return sum(1 for y in self.labels[1:] if y != IGNORE)


def encode_row(row: dict, tokenizer, max_length: int) -> Example | None:
    if "input_ids" in row:
        ids = list(row["input_ids"])[:max_length]
        return Example(ids, list(ids))
    messages = row["messages"]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    # BPE may merge across the prompt/answer boundary; supervise only after the common prefix.
    n_prompt = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        n_prompt += 1
    ids = full_ids[:max_length]
    labels = [IGNORE] * min(n_prompt, len(ids)) + ids[n_prompt:]
    example = Example(ids, labels)
    return example if example.n_supervised > 0 else None


def encode_rows(rows: list[dict], tokenizer, max_length: int, what: str = "dataset") -> list[Example]:
    out = [e for e in (encode_row(r, tokenizer, max_length) for r in rows) if e is not None]
    if not out:
        raise ValueError(
            f"{what}: no example keeps a supervised token within max_length={max_length}; raise max_length"
        )
    return out


def collate(examples: list[Example], pad_id: int, pad_to_multiple: int = 1):
    """Right-padded input_ids, attention_mask and labels tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    if pad_to_multiple > 1:
        width = -(-width // pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids, mask, labels
