"""Structured width pruning (Minitron-style): MLP channels and whole KV groups removed by their
calibration activations, leaving an ordinary smaller dense model that every runtime loads; behind
`js.prune`, `jaxshare prune` and a plan's `prune:` step (methods/prune.py). The package is not
named `prune`: `jaxshare.prune` is the verb of `import jaxshare as js`, and a subpackage of that
name would shadow it once imported.

importance.py ranks channels and groups from the calibration grams Basis Sharing already collects
(under jit, in the layer scan); shrink.py slices the arrays and writes the smaller ModelConfig;
compensate.py refits the output projections on the kept channels (least squares on the grams);
prune.py puts them together and refuses what cannot be honoured; grams.py carries the grams of a
plan over to the pruned model.
"""
