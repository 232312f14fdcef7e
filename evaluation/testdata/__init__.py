"""Data that needs no download, for the tests, the demo, the benchmarks and the embedded models: generated shapes
(:mod:`.shapes`) and scikit-learn's digits with a small CNN (:mod:`.digits`)."""
