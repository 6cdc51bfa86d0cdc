"""Memory strategies applied generically to any model through its declared layout."""
