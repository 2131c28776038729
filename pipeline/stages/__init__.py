"""The stages of the preprocessing graph, in the order the data flows: read, parse, window, split, tfxio, transform, shards, manifest."""
