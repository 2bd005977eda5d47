//! Runnable examples of es-core and es-redis; see `examples/` and the workspace README.
