"""Models written outside the package, run with `model=` like any built-in one."""
