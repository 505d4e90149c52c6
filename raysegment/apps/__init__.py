"""Applications built from the layers: `demo` (what `make demo` runs: train -> tune -> register ->
study -> serve on an embedded Ray), `engine_walkthrough` (the same story in one process, no Ray)
and `study` (the adaptation study behind `raysegment compare`)."""
