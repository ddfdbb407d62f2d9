"""The distributed get-or-set cache."""
