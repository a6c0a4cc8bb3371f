"""edgeforge pipeline machinery: config, artifact cache, runner and CLI."""
