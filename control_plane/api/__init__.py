"""The HTTP API: thin routes over the fleet and hierarchy services. Must not import `agent`."""
