"""Every span, attribute and event name the telemetry emits, in one place.

Standard names follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``, development status); what
only InferenceGuard knows lives under ``inferenceguard.*``. The values reported are InferenceGuard's own
(safety state ``z``, cumulative cost in budget units, the configured budget ``d`` and discount ``gamma``,
the fallback reason): there is deliberately no generic allow/deny verdict.
"""

from __future__ import annotations

# -- GenAI semantic conventions ---------------------------------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"  # opt-in content (JSON)
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"  # opt-in content (JSON)
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"  # opt-in content
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"  # opt-in content
ERROR_TYPE = "error.type"

OPERATION_CHAT = "chat"
OPERATION_INVOKE_AGENT = "invoke_agent"
OPERATION_EXECUTE_TOOL = "execute_tool"
PROVIDER_NAME = "inferenceguard"

# The evaluation event (conventions: "gen_ai.evaluation.result", parented to the evaluated operation span).
EVENT_EVALUATION_RESULT = "gen_ai.evaluation.result"
GEN_AI_EVALUATION_NAME = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_VALUE = "gen_ai.evaluation.score.value"
GEN_AI_EVALUATION_SCORE_LABEL = "gen_ai.evaluation.score.label"
GEN_AI_EVALUATION_EXPLANATION = "gen_ai.evaluation.explanation"
EVALUATION_NAME = "inferenceguard.safety_state"  # score value = final safety state z
# Labels (low cardinality): the answer is within the safety budget, or the search answered with the fallback.
LABEL_WITHIN_BUDGET = "within_budget"
LABEL_SAFETY_FALLBACK = "safety_fallback"

# Content capture switch (GenAI instrumentations' convention).
ENV_CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# -- span names -------------------------------------------------------------------------------------------
SPAN_CHAT = "chat {model}"  # the inference span, one per search (GenAI convention: "{operation} {model}")
SPAN_SEARCH = "inferenceguard.search"  # the search span when another instrumentation owns the model span
SPAN_BLOCK = "inferenceguard.block"  # one per search block, child of the inference/search span
SPAN_INVOKE_AGENT = "invoke_agent {name}"
SPAN_EXECUTE_TOOL = "execute_tool {name}"
INSTRUMENTATION_NAME = "ig_middleware.telemetry"
# names that switch this instrumentation off in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS
INSTRUMENTATION_ALIASES = frozenset({"ig_middleware", "ig-middleware", "inferenceguard", INSTRUMENTATION_NAME})
SPAN_DEMO = "inferenceguard.demo"  # root span of ig-guard demo (one guarded conversation)
PHOENIX_PROJECT = "openinference.project.name"  # resource attribute: the Phoenix project

# -- InferenceGuard attributes (inference span) -----------------------------------------------------------
IG_RUN_ID = "inferenceguard.run_id"
IG_METHOD = "inferenceguard.method"
IG_BACKEND = "inferenceguard.backend"  # where candidates are sampled: transformers | openai-completions
IG_SAFETY_MODE = "inferenceguard.safety_mode"
IG_BUDGET = "inferenceguard.budget"  # d
IG_GAMMA = "inferenceguard.gamma"
IG_BLOCK_SIZE = "inferenceguard.block_size"  # B
IG_NUM_CANDIDATES = "inferenceguard.num_candidates"  # N
IG_NUM_BEAMS = "inferenceguard.num_beams"  # K
IG_MAX_RETRIES = "inferenceguard.max_retries"  # M
IG_ENFORCE_BUDGET = "inferenceguard.enforce_budget"
IG_INITIAL_SAFETY_STATE = "inferenceguard.safety_state.initial"  # z0
IG_SAFETY_STATE = "inferenceguard.safety_state"  # final z (> 0: within budget)
IG_COST = "inferenceguard.cost"  # cumulative cost of the answer, budget units
IG_WITHIN_BUDGET = "inferenceguard.within_budget"  # final z > 0
IG_BLOCKS = "inferenceguard.blocks"
IG_CANDIDATES_SAMPLED = "inferenceguard.candidates_sampled"
IG_SAMPLED_TOKENS = "inferenceguard.sampled_tokens"
IG_RESAMPLES = "inferenceguard.resamples"
IG_JUDGE_CALLS = "inferenceguard.judge_calls"
IG_CRITIC_CALLS = "inferenceguard.critic_calls"
IG_CRITIC_USED = "inferenceguard.critic_used"
IG_FALLBACK_REASON = "inferenceguard.fallback_reason"  # only set on fallback
IG_FALLBACK_DETAIL = "inferenceguard.fallback_detail"
IG_SEARCH_SECONDS = "inferenceguard.seconds"
IG_TIMING_PREFILL = "inferenceguard.timings.prefill_s"
IG_TIMING_SAMPLING = "inferenceguard.timings.sampling_s"
IG_TIMING_JUDGE = "inferenceguard.timings.judge_s"
IG_TIMING_CRITIC = "inferenceguard.timings.critic_s"

# -- InferenceGuard attributes (block span) ---------------------------------------------------------------
IG_BLOCK_INDEX = "inferenceguard.block.index"
IG_BLOCK_ATTEMPTS = "inferenceguard.block.attempts"  # evaluations of this block (1 + resamples)
IG_BLOCK_RESAMPLES = "inferenceguard.block.resamples"
IG_BLOCK_CANDIDATES = "inferenceguard.block.candidates"  # of the last attempt
IG_BLOCK_SAFE_CANDIDATES = "inferenceguard.block.safe_candidates"  # of the last attempt (z > 0)
IG_BLOCK_MIN_SAFETY_STATE = "inferenceguard.block.safety_state.min"
IG_BLOCK_MAX_SAFETY_STATE = "inferenceguard.block.safety_state.max"
IG_BLOCK_MIN_COST = "inferenceguard.block.cost.min"
IG_BLOCK_MAX_COST = "inferenceguard.block.cost.max"
IG_BLOCK_JUDGE_CALLS = "inferenceguard.block.judge_calls"
IG_BLOCK_CRITIC_USED = "inferenceguard.block.critic_used"
IG_BLOCK_EVAL_SECONDS = "inferenceguard.block.evaluation_seconds"  # sum over attempts
IG_BLOCK_COMMITTED = "inferenceguard.block.committed"  # streaming: text of this block was yielded
IG_BLOCK_COMMITTED_SAFETY_STATE = "inferenceguard.block.committed_safety_state"
IG_BLOCK_TEXT = "inferenceguard.block.text"  # opt-in content: committed text so far

# -- events -----------------------------------------------------------------------------------------------
EVENT_BLOCK_EVALUATION = "inferenceguard.block.evaluation"  # on the block span, one per attempt
IG_ATTEMPT = "inferenceguard.attempt"
EVENT_RESAMPLE = "inferenceguard.resample"  # on the block span
IG_PENALISED_TOKENS = "inferenceguard.penalised_tokens"
EVENT_COMMIT = "inferenceguard.commit"  # on the block span (streaming)
EVENT_FALLBACK = "inferenceguard.fallback"  # on the inference span
EVENT_BUDGET_EXHAUSTED = "inferenceguard.budget_exhausted"  # on the inference span
EVENT_LANGCHAIN_PREFIX = "inferenceguard."  # custom events from the chat model / agent middleware
EVENT_MIDDLEWARE_PREFIX = "inferenceguard.middleware."
IG_EVENT_DATA = "inferenceguard.event.data"  # JSON of a custom event without a dedicated mapping

# -- LangChain handler attributes -------------------------------------------------------------------------
LC_RUN_ID = "langchain.run_id"
LC_RUN_TYPE = "langchain.run_type"  # chain | chat_model | llm | tool | retriever
LC_RUN_NAME = "langchain.run_name"
LC_TAGS = "langchain.tags"

# -- the guarded server (ig-guard serve): HTTP semantic conventions ------------------------------------------
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_PATH = "url.path"
IG_CLIENT_DISCONNECTED = "inferenceguard.client_disconnected"  # the search was cancelled by a disconnect
