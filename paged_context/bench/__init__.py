"""`paged-context bench ...`: each benchmark computes a result dict, prints it beside the
anchor figures it reproduces (../shared/docs/ANCHORS.md), and writes JSON (and PNGs)
under `--out`."""
