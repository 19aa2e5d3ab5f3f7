"""tau2-bench evaluation of each trained model: the evaluator container's settings, tau2's
results format (read and checked), and the small tau2-format evaluator used where tau2
cannot be installed."""
