"""Reference reranker scores, written from the public model cards only.

This is the independent side of the reranker tests: it shares no code with tembed (the prompt strings
are written out again here on purpose) and does what the Qwen3-Reranker and sentence-transformers
CrossEncoder model cards do, with transformers / sentence-transformers, on CPU in float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# From the Qwen3-Reranker model card ("Transformers Usage").
_SYSTEM = 'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
_PREFIX = "<|im_start|>system\n" + _SYSTEM + "<|im_end|>\n<|im_start|>user\n"
_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def _format_instruction(instruction: str | None, query: str, doc: str) -> str:
    if instruction is None:
        instruction = _DEFAULT_INSTRUCTION
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


def _qwen3_inputs(tokenizer, query: str, documents: list[str], instruction: str | None, max_length: int):
    prefix_tokens = tokenizer.encode(_PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(_SUFFIX, add_special_tokens=False)
    pairs = [_format_instruction(instruction, query, doc) for doc in documents]
    inputs = tokenizer(
        pairs,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    return tokenizer.pad(inputs, padding=True, return_tensors="pt")


def qwen3_reranker_scores(
    model_dir: Path | str, query: str, documents: list[str], instruction: str | None = None, max_length: int = 8192
) -> np.ndarray:
    """P("yes") of the causal Qwen3-Reranker, as in its model card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    inputs = _qwen3_inputs(tokenizer, query, documents, instruction, max_length)
    with torch.no_grad():
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        scores = batch_scores[:, 1].exp()
    return scores.numpy().astype(np.float32)


def qwen3_seq_cls_scores(
    model_dir: Path | str, query: str, documents: list[str], instruction: str | None = None, max_length: int = 8192
) -> np.ndarray:
    """sigmoid of the one logit of the converted Qwen3ForSequenceClassification reranker."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    if model.config.pad_token_id is None:  # it picks the last token that is not padding
        model.config.pad_token_id = tokenizer.pad_token_id
    inputs = _qwen3_inputs(tokenizer, query, documents, instruction, max_length)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert logits.shape == (len(documents), 1), logits.shape
    return torch.sigmoid(logits[:, 0]).numpy().astype(np.float32)


def cross_encoder_scores(model_dir: Path | str, query: str, documents: list[str]) -> np.ndarray:
    """sentence-transformers CrossEncoder.predict (its own activation: Sigmoid for one label)."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(model_dir), device="cpu")
    return np.asarray(model.predict([(query, d) for d in documents]), dtype=np.float32)
