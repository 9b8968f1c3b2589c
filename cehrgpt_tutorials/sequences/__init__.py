"""The patient sequences themselves: what their tokens are and how to change them without breaking them."""
