from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..contract import ATTENTION_MASK, DOCUMENTS, INPUT_IDS, INSTRUCTION, QUERY, TOKEN_COUNT, TOKENIZER_FILE
from ..errors import RequestError
from ..pairs import PairEncoder
from ..profile import ModelProfile
from ..textproc import check_bytes, decode_option, decode_texts
from ._util import error_response, optional_input, version_dir


class TritonPythonModel:
    def initialize(self, args):
        folder = version_dir(args)
        self.encoder = PairEncoder(ModelProfile.load(folder), folder / TOKENIZER_FILE)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                raw_query = pb_utils.get_input_tensor_by_name(request, QUERY).as_numpy()
                raw_docs = pb_utils.get_input_tensor_by_name(request, DOCUMENTS).as_numpy()
                check_bytes(raw_query, self.encoder.profile, QUERY)
                check_bytes(raw_docs, self.encoder.profile, DOCUMENTS)
                query = decode_option(raw_query, QUERY)
                documents = decode_texts(raw_docs, DOCUMENTS)
                instruction = decode_option(optional_input(request, INSTRUCTION), INSTRUCTION)
                batch = self.encoder.encode(query, documents, instruction)
            except RequestError as exc:
                responses.append(error_response(exc))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(INPUT_IDS, batch.input_ids),
                        pb_utils.Tensor(ATTENTION_MASK, batch.attention_mask),
                        pb_utils.Tensor(TOKEN_COUNT, batch.token_count),
                    ]
                )
            )
        return responses
