"""Explanation: a trained head looking at images again, above both learning and extraction.

`maps` turns tile attention into per-view maps and boxes, `overlays` draws them, and `explain`
re-tiles a bag at 75% overlap, encodes it with the run's encoder and runs the run's head.
"""
