"""State shared by several replicas behind one IP (Redis), and what to do without it."""
