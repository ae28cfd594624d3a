"""pollama on a Ray cluster: Ray Serve replicas of models behind the server's own routes (app.py)."""
