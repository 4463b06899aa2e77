"""Multi-site installs: the replication heartbeat an active site writes and a standby reads.

An installation spans dc1 and dc2 (active) and dr (warm standby, fed by
asynchronous replication). Active nodes rewrite their own row of
``site_heartbeat`` every ``site.heartbeat_interval``; standby nodes read the
newest beat from their replica and export ``now - beat`` as the replication
lag. Because the beat travels the same way as the data, this measures the
lag end to end whatever the engine (Galera then an async replica, TiCDC),
assuming the nodes' clocks are NTP-synchronised (an offset between the
writer's and reader's clocks adds to the lag, or hides part of it).
"""
