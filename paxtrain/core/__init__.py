"""The module core: immutable PAX-style modules and the functions that change them."""
