"""How a dictionary is made: corpus → harvest → train → prune → label / evaluate; finding the
features that write a concept (discover, writers, curate, calibrate, steerability); and their
CLI (`python -m features ...`). This side may use `chat` (it runs the model); the runtime side
(`features/` itself: dictionary, formats, catalog, lexicon, ...) never imports it."""
