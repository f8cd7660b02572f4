"""`ltd bench`: decoding methods side by side on one machine, Spec-Bench protocol (docs/bench.md).

- `questions`: the questions (a file through `realrun.prompts.read_prompts`, or the built-in held-out set);
- `run`: the options (`BenchConfig`), the methods, the measured grid sweep, the greedy equality check and
  `run_bench`;
- `stats`: per-method summaries and paired ratios with a bootstrap interval;
- `report`: report.json's content, report.md and the plots.

Timing goes through `realrun.measure`, the toolkit's one harness; the headline rate is the end-to-end
rate (prefill included), with the decode rate beside it.
"""

from realrun.bench.questions import Question, as_questions, encode_questions, read_questions
from realrun.bench.run import (DRAFTER_METHODS, HEADLINE_RATE, METHODS, PEER_METHODS, SWEEP_QUESTIONS, SWEEP_TOKENS,
                               BenchConfig, check_equal, grid_from_file, parse_grid, parse_methods, run_bench,
                               static_method, sweep_grid)
from realrun.bench.stats import paired_ratio, summarize

__all__ = ["DRAFTER_METHODS", "HEADLINE_RATE", "METHODS", "PEER_METHODS", "SWEEP_QUESTIONS", "SWEEP_TOKENS",
           "BenchConfig", "Question", "as_questions", "check_equal", "encode_questions", "grid_from_file", "paired_ratio", "parse_grid",
           "parse_methods", "read_questions", "run_bench", "static_method", "summarize",
           "sweep_grid"]
