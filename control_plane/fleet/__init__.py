"""Fleet management: sites, their config revisions, their agents and tokens, what the agent
links report (`recorder`) and the health judged from it (`health_rules`, `health`).

Must not import FastAPI (routes call in) nor the hierarchy store.
"""
