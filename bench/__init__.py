"""Side-by-side benchmarks of frcnn_edu against torchvision's Faster R-CNN (issue 6).

Entry point: `python -m bench.run [--device cpu|cuda] [--quick] [--out bench/RESULTS.md]`
(`make bench`). See bench/README.md for what each section measures and how.
"""
