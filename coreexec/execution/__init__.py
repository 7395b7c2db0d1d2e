"""Running a plan: the coordinator loop, its slots, the dispatcher protocol and lanes."""
