"""The daemon's rooms, one concept each; :class:`dc_agent.loop.Agent` only wires them.

    heartbeat.py   heartbeats at the server's interval, until exit (also while draining)
    dispatch.py    poll for pending contracts, lock them, start jobs
    lease.py       renew a held lock while its driver works; give it up when the server refuses or it expires
    job.py         one contract: adopt or provision in a worker thread, then hand the result to delivery
    delivery.py    the durable outbox: report results until the server acknowledges them
    reconcile.py   compare the driver's instances with the server's records; remove, pause, resume
    shutdown.py    signals, drain, forced stop
"""
