"""Real-model layer: model loading, drafters, the tree speculative decoder, the `ltd` CLI."""
