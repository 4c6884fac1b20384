"""buildgraph: a declarative build graph with content-hashed actions and Bazel-like caching."""

__version__ = "0.1.0"
