"""Visual encoder adapters behind one feature contract (above `harmon/`, below `probe/`)."""
