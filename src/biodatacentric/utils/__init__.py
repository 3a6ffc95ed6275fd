"""Public utilities for method developers: :mod:`biodatacentric.utils.estimator_checks`."""
