"""Boot resources: simplestreams imports, winners per triple, published snapshots."""
