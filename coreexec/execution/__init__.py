"""Running a plan: the coordinator loop, dispatchers and run entry points."""
