"""Example jobs used by the README demo and the tests."""
