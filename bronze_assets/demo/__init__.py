"""Demo data: the generator of the inventory source and the embedded-source bootstrap."""
