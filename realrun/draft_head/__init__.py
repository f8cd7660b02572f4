"""Build (train) an EAGLE-3 draft head for a local target, offline, on a CPU, in a bounded time.

Pipeline (`build.build`; every stage resumable, artifacts written atomically under a work folder):

1. prompts   built from local sources only (`corpus`): Python standard-library docstrings and code
             (inspect), `pydoc_data` topics, HumanEval's "draft_head" problems (`realrun.prompts.
             HUMANEVAL_SPLITS`: the policies and the bench use other ranges), and templated instruction
             prompts of many kinds (explain, summarize, translate, list, rewrite, QA over a passage,
             extraction, math word problems, writing, reasoning ...); the user's own prompts first.
2. generate  the target's own greedy responses (batched `generate`, left padding, fp32): on-policy
             text whose next tokens are exactly what the head must predict at inference.
3. features  one teacher-forced pass of the target over every sequence (the generated ones and extra
             local text wrapped in the chat template) stores the fused input of the head (hidden
             states `aux_layer_ids`, float16) and the target's argmax at each position (the labels;
             in generated spans the exact fp32 greedy tokens). Epochs never rerun the target (`features`).
4. vocab     the reduced draft vocabulary: the most frequent labels plus the chat template's and
             the prompts' tokens (so chat labels are covered); `d2t`/`t2d` map it back (`vocab`).
5. train     EAGLE-3 training-time test (`ttt`, `train`): the head is unrolled on its own outputs for
             `ttt_steps` (default: the tree depth, 8). At unrolled step j, sequence index i feeds the
             head's own step-(j-1) output at i with token t[i+1+j] at position i+j, and predicts the
             target's argmax at i+1+j; its attention sees the step-0 keys at indices <= i (the committed
             prefix) plus the keys of steps 1..j at index i (its ancestors in a draft tree), exactly what
             `Eagle3Drafter` feeds at inference. Loss weights `TrainConfig.decay` ** j. Time-based
             cosine LR schedule.
6. save      the published EAGLE-3 layout (config.json + model.safetensors) via `save_head`, a JSON
             and CSV log of loss and top-1 agreement per unrolled step, and a PNG of the curves (`logs`).
"""

from realrun.draft_head.build import BuildConfig, build
from realrun.draft_head.corpus import user_prompt_items
from realrun.draft_head.train import TrainConfig

__all__ = ["BuildConfig", "TrainConfig", "build", "user_prompt_items"]
