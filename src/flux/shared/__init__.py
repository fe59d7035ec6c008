"""What the nodes of a cluster share besides the event log, kept in JetStream key-value
buckets (`flux.cluster.Cluster.bucket`) instead of the data dir's files: the namespace
registry (`namespaces`), the runtime config (`runtime`) and the connector credentials
(`credentials`); the generic sources' store is `flux.connectors.sharedsources`. Each is a
drop-in for its embedded twin (the SQLite or JSON file of one node), chosen by the composition
root (`flux.server`) when the log is JetStream.

All of them follow one pattern (`flux.mirror.BucketMirror`): a change made through this node is
written to the bucket first and applied to the in-memory index once JetStream has accepted it;
a watcher applies every node's changes (this node's own come back as a harmless echo: each key
remembers the revision it shows, and an older or equal one is ignored). A lookup that misses
may first catch the watcher up to the bucket's last revision, so what another node has just
acknowledged is seen here at once (see docs/cluster.md, "What the nodes share").
"""
