"""The scaling report: the benchmark suites' pytest-benchmark JSON -> ``docs/SCALING.md``.

Benchmark tooling, not part of nap_gpu (which never imports it). ``schema`` is the record each
benchmark writes into ``extra_info``; ``frames`` reads the JSON into pandas frames;
``sections`` select and compute each section's numbers; ``render`` lays out tables and fills
the page template ``page.md.j2``; ``plots`` draws the PNGs; ``targets`` is the dense-step
targets table; ``__main__`` is the command line (``python -m benchmarks.report``).
"""
