"""Every request and response body the server speaks, in one module (as text-embeddings-inference keeps its wire
types apart from its handlers). A leaf: nothing here knows the engine, the models or BentoML.

The HTTP shapes follow vLLM's `/v1/rerank` (which Jina and Cohere clients also read), Cohere's, TEI's and vLLM's
`/score`; the pair shapes are the items of BentoML's batchable `/score_pairs` API.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _well_formed(text: str) -> str:
    """Lone surrogates (legal as JSON escapes like "\\ud800", not as Unicode text) become U+FFFD.

    Tokenizers refuse them and no response holding one can be encoded as UTF-8, so they must not get in.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)
    return text


# Every text a client sends: queries, documents, TEI texts, vLLM's text_1 / text_2.
Text = Annotated[str, AfterValidator(_well_formed)]


def _positive_or_model_limit(tokens: int) -> int:
    if tokens == 0:
        raise ValueError("must be -1 (the model's limit) or a positive number of tokens")
    return tokens


# A model name as a request gives it: an id, alias, store name or tag. Ids are at most 96 characters per part on the
# Hub; the cap keeps a hostile name from filling logs.
ModelName = Annotated[str, Field(max_length=256)]

# How small a positive cap may be depends on the model's template: its recipe refuses what leaves no room.
TruncatePromptTokens = Annotated[int, Field(ge=-1), AfterValidator(_positive_or_model_limit)]


class Body(BaseModel):
    """A request body: `null` for a field that has a default means the default, as if the field were absent.

    Clients send null for every argument their caller left unset (xinference-client's `return_documents`,
    `max_chunks_per_doc`); a typed field such as `return_documents: bool` would refuse it.
    """

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if not isinstance(data, dict) or None not in data.values():
            return data
        fields = cls.model_fields
        # A required field keeps its null, so that the refusal names it.
        return {k: v for k, v in data.items() if v is not None or (k in fields and fields[k].is_required())}


# --- BentoML's batchable API: one item per (query, document) pair --------------------------------------------------


Instruction = Annotated[
    Text | None,
    Field(
        description="LLM rerankers (Qwen3-Reranker, bge-reranker-v2-gemma): replaces the model's default instruction "
        "(its prompt). Ignored by cross-encoders, which have none.",
        max_length=4096,
    ),
]


class PairToScore(Body):
    """One (query, document) pair to score with one model: the item of BentoML's `/score_pairs` API."""

    # Optional as on the routes, where a request without one is scored by the default model.
    model: ModelName | None = Field(
        None, description="Model id or alias, e.g. BAAI/bge-reranker-base; the server's default model when absent."
    )
    query: Text
    document: Text
    max_length: int | None = Field(None, ge=1, description="Token cap for the pair, below the model's max_length.")
    truncation_side: Literal["right", "left"] = Field("right", description="Which end of the text truncation cuts.")
    max_document_tokens: int | None = Field(None, ge=1, description="Token cap for the document alone.")
    instruction: Instruction = None


class PairResult(BaseModel):
    """The score of one pair, or why it could not be scored (so one bad pair never fails its batch neighbours)."""

    score: float | None = Field(
        None,
        description="The relevance score: the model's (README, What a score means), or the calibrated probability.",
    )
    logit: float | None = Field(None, description="The model's raw output.")
    tokens: int = Field(0, description="Tokens the model saw for this pair, after truncation.")
    error: str | None = None
    model: str | None = Field(None, description="The model id that scored the pair (absent with an `error`).")


# --- POST /v1/rerank ------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


# --- Images: Jina's `{"text"?, "image"?}` objects and vLLM's `{"content": [parts]}` ---------------------------------

ImageRef = Annotated[
    str,
    Field(
        description="An image: a data URI (`data:image/png;base64,...`), bare base64 (Jina), or an http(s) URL when "
        "the server fetches URLs (RERANK_IMAGE_URLS)."
    ),
]


class TextDocument(Body):
    """A document or query as an object: Cohere v1's `{text}` (other fields ignored) or Jina m0's `{text?, image?}`
    (a multimodal reranker ranks the image, and the text beside it)."""

    model_config = ConfigDict(extra="ignore")

    text: Text | None = None
    image: ImageRef | None = None

    @model_validator(mode="after")
    def _text_or_image(self) -> TextDocument:
        if self.text is None and self.image is None:
            raise ValueError("an object needs `text` or `image`")
        return self


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ImageURL(BaseModel):
    url: ImageRef


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class MultiModal(BaseModel):
    """vLLM's `ScoreMultiModalParam`: content parts. As an item of a list it is one document (or query) made of its
    parts; as the whole of `documents` (or `text_1` / `text_2`) each part is one document, as vLLM reads it."""

    content: list[ContentPart] = Field(min_length=1)


# A query or document: a text, a `{text?, image?}` object, or content parts.
Item = Text | TextDocument | MultiModal


class RerankRequest(Body):
    """A rerank request as vLLM, Jina and Cohere (v1 and v2) clients send it; keys we do not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName | None = Field(None, description="Model id or alias; the server's default model when absent.")
    query: Item = Field(description="A text; for a multimodal reranker also `{text?, image?}` or `{content: [...]}`.")
    documents: list[Item] | MultiModal = Field(
        description="Texts, `{text}` objects (Cohere), `{text?, image?}` objects (Jina m0) or `{content: [parts]}` "
        "(vLLM) to rank against the query; vLLM's `{content: [parts]}` in place of the list is one document per part."
    )
    top_n: int | None = Field(None, ge=0, description="Return only the best n; absent, null or 0 returns all.")
    return_documents: bool = Field(True, description="Echo each document's text in the results.")
    truncate_prompt_tokens: TruncatePromptTokens | None = Field(
        None, description="vLLM: cap each (query, document) pair at this many tokens; -1 is the model's limit."
    )
    max_tokens_per_doc: int | None = Field(None, ge=1, description="Cohere v2: cap each document at this many tokens.")
    use_activation: bool = Field(
        True, description="vLLM: false returns the model's raw score (a logit, or ColBERT's MaxSim), uncalibrated."
    )
    max_chunks_per_doc: int | None = Field(
        None, ge=1, description="Split a long document into up to this many windows and keep the best window's score."
    )
    instruction: Instruction = None


class TEIRerankRequest(Body):
    """text-embeddings-inference's `/rerank` body (sent by LlamaIndex's and RAGFlow's TEI rerankers)."""

    model_config = ConfigDict(extra="ignore")

    query: Text
    texts: list[Text]
    raw_scores: bool = Field(False, description="Return the model's raw score (a logit), uncalibrated.")
    return_text: bool = False
    truncate: bool = Field(True, description="Cut long inputs to the model's limit; false rejects them with 413.")
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    model: ModelName | None = None
    instruction: Instruction = None


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class TEIError(BaseModel):
    """text-embeddings-inference's error body."""

    error: str
    error_type: str


# vLLM's `/score` names its two sides in one of four ways (its `ScoreRequest` is a union of them), tried in this order.
SCORE_SIDES = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))
ScoreSide = Item | list[Item]


class ScoreRequest(Body):
    """vLLM's `/score`: the first side against each item of the second (one-to-many), or pairwise when both are lists
    of the same length. The sides are `queries` + `documents`, `queries` + `items`, `data_1` + `data_2` or `text_1` +
    `text_2`, as vLLM names them."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName | None = None
    queries: ScoreSide | None = Field(None, description="The first side: a query, or a list of them.")
    documents: ScoreSide | None = Field(None, description="The second side: a document, or a list of them.")
    items: ScoreSide | None = Field(None, description="vLLM: the second side, beside `queries`.")
    data_1: ScoreSide | None = Field(None, description="vLLM: the first side, with `data_2`.")
    data_2: ScoreSide | None = None
    text_1: ScoreSide | None = Field(None, description="vLLM (older): the first side, with `text_2`.")
    text_2: ScoreSide | None = None
    truncate_prompt_tokens: TruncatePromptTokens | None = None
    use_activation: bool = True
    instruction: Instruction = None

    def sides(self) -> tuple[tuple[str, ScoreSide], tuple[str, ScoreSide]] | None:
        """The two sides with the names they were sent under; None when no pair of names is complete."""
        for first, second in SCORE_SIDES:
            one, two = getattr(self, first), getattr(self, second)
            if one is not None and two is not None:
                return (first, one), (second, two)
        return None


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"score-{uuid.uuid4().hex}")
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ScoreData]
    usage: Usage


class RerankDocument(BaseModel):
    """The document as it was sent: its text, Jina's `image`, or vLLM's content parts (`multi_modal`)."""

    text: str | None = None
    image: str | None = None
    multi_modal: list[dict[str, Any]] | dict[str, Any] | None = None


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    """vLLM's rerank answer; results are sorted by relevance_score, best first."""

    id: str = Field(default_factory=lambda: f"rerank-{uuid.uuid4().hex}")
    model: str
    usage: Usage
    results: list[RerankResult]


# --- Errors ---------------------------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """vLLM's (and OpenAI's) error body, with Jina's top-level `detail`: the Jina rerank clients of LlamaIndex,
    LangChain and Haystack raise `RuntimeError(body["detail"])` on a failed call."""

    error: ErrorInfo
    detail: str = Field(description="The same message as `error.message`, where Jina clients read it.")


def unix_time(seconds: float | None = None) -> int:
    return int(time.time() if seconds is None else seconds)
