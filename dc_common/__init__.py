"""What several of our packages need, in modules that import nothing of ours (so every arrow points down):

    signing.py   the bytes a signed request covers (dc_agent signs them, pool_api verifies them)
    fsutil.py    atomic, durable file writes with private modes (agent state, driver records)
    redact.py    what counts as a secret and how it is masked (logs, status, driver errors)

    dc_agent ──► provisioners ──► dc_common
       └──────────────────────────► dc_common ◄── pool_api
"""
