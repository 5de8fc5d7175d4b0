"""Fleet management: sites, their config revisions, and their agents.

Must not import FastAPI (routes call in) nor the hierarchy store.
"""
