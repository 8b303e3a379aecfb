from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..contract import (
    ATTENTION_MASK,
    DOCUMENT_INDEX,
    DOCUMENTS,
    INPUT_IDS,
    QUERY,
    TASK_RERANK,
    TOKEN_COUNT,
    TOKENIZER_FILE,
)
from ..errors import RequestError
from ..pairs import PairEncoder
from ..profile import ModelProfile
from ..textproc import check_bytes, decode_option, decode_texts, read_options
from ._util import Executing, error_response, input_arrays, tensor_names, version_dir


class TritonPythonModel:
    def initialize(self, args):
        self._executing = Executing(args)
        folder = version_dir(args)
        self.encoder = PairEncoder(ModelProfile.load(folder), folder / TOKENIZER_FILE)
        self.indexes = DOCUMENT_INDEX in tensor_names(args, "output")  # repositories before long_text chunk: no

    def execute(self, requests):
        with self._executing(len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        responses = []
        for request in requests:
            try:
                given = input_arrays(request)
                raw_query, raw_docs = given[QUERY], given[DOCUMENTS]
                check_bytes(raw_query, self.encoder.profile, QUERY)
                check_bytes(raw_docs, self.encoder.profile, DOCUMENTS)
                query = decode_option(raw_query, QUERY)
                documents = decode_texts(raw_docs, DOCUMENTS)
                batch = self.encoder.encode(query, documents, **read_options(given, TASK_RERANK))
            except RequestError as exc:
                responses.append(error_response(exc))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(INPUT_IDS, batch.input_ids),
                        pb_utils.Tensor(ATTENTION_MASK, batch.attention_mask),
                        pb_utils.Tensor(TOKEN_COUNT, batch.token_count),
                        *([pb_utils.Tensor(DOCUMENT_INDEX, batch.row_text)] if self.indexes else []),
                    ]
                )
            )
        return responses
